// Helpers for tests that drive a real worker through the CLI: create, wait for the console, list,
// and check that nothing per VM is left behind.
import assert from "node:assert/strict";
import { execa } from "execa";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import type { TestGuestSpec } from "./repo.js";
import type { WorkerProcess } from "./worker-process.js";

export async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** Pids of the VMM processes of one VM (their argv names the VM id). */
export async function vmmPids(vmId: string): Promise<number[]> {
  const result = await execa("pgrep", ["-f", `pcr-${vmId}`], { reject: false });
  return result.stdout.split("\n").filter(Boolean).map(Number);
}

export async function listJson(worker: WorkerProcess): Promise<Array<Record<string, unknown>>> {
  const result = await worker.cli(["list-vms", "--json"]);
  assert.equal(result.exitCode, 0, result.stderr);
  return JSON.parse(result.stdout) as Array<Record<string, unknown>>;
}

/** Nothing the worker makes per VM is left: no VM directory, no TAP, no nft chain, no VMM process. */
export async function assertNothingLeft(worker: WorkerProcess): Promise<void> {
  const vmDirs = existsSync(join(worker.stateDir, "vms")) ? readdirSync(join(worker.stateDir, "vms")) : [];
  assert.deepEqual(vmDirs, [], "VM directories left behind");
  const links = await execa("ip", ["-n", worker.netns, "-o", "link", "show"], { reject: false });
  assert.doesNotMatch(links.stdout, /pcr-vm|: pcr-[0-9a-f]/, "TAP devices left behind");
  const ruleset = await execa("ip", ["netns", "exec", worker.netns, "nft", "-j", "list", "ruleset"], { reject: false });
  assert.doesNotMatch(ruleset.stdout, /"vm-[0-9a-f]{16}/, "per-VM nft objects left behind");
  const qemus = await execa("pgrep", ["-f", `qemu-system.*${worker.stateDir}`], { reject: false });
  assert.equal(qemus.stdout.trim(), "", "VMM processes left behind");
}

export async function createFromSpec(
  worker: WorkerProcess,
  spec: TestGuestSpec | Record<string, unknown>,
  extraArgs: string[] = [],
  env?: Record<string, string>,
): Promise<string> {
  const created = await worker.cli(["create-vm", "--spec-json", JSON.stringify(spec), ...extraArgs], { env });
  assert.equal(created.exitCode, 0, `create-vm failed: ${created.stderr}\nworker logs:\n${worker.logs().slice(-3000)}`);
  const id = created.stdout.trim();
  assert.match(id, /^vm-[0-9a-f]{16}$/);
  return id;
}

export async function waitForConsole(worker: WorkerProcess, id: string, marker: string | RegExp, timeoutMs = 90_000): Promise<string> {
  return waitFor(`console ${String(marker)}`, timeoutMs, async () => {
    const logs = await worker.cli(["logs", id]);
    const found = typeof marker === "string" ? logs.stdout.includes(marker) : marker.test(logs.stdout);
    return found ? logs.stdout : undefined;
  });
}

/** The test guest's spec with a shell command for its init to run after boot. */
export function withCommand(spec: TestGuestSpec, script: string): TestGuestSpec {
  return { ...spec, cmdline: `${spec.cmdline} pcr.cmd=${Buffer.from(script).toString("base64")}` };
}
