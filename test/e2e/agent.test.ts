// exec end to end on QEMU: the worker attaches each VM's agent channel, getVm shows it ready,
// pcr-worker-test exec runs a command in the guest with the command's exit code, the audit log
// names the command and its exit (never its environment or input), and a delete closes it all.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { testGuest } from "../helpers/repo.js";
import { assertNothingLeft, createFromSpec, waitFor } from "../helpers/vm.js";
import { destroyWorker, startWorker, type WorkerProcess } from "../helpers/worker-process.js";

const guest = testGuest();
const skip = "skip" in guest ? guest.skip : false;

describe("exec through the worker (QEMU, virtio-serial)", { skip }, () => {
  let worker: WorkerProcess;
  let id: string;

  before(async () => {
    if ("skip" in guest) return;
    worker = await startWorker();
    id = await createFromSpec(worker, guest.spec, []);
    await waitFor("the agent to be ready", 90_000, async () => {
      const vm = JSON.parse((await worker.cli(["get-vm", id])).stdout) as { agentState: string; agentReadyMs: number };
      return vm.agentState === "ready" ? vm : undefined;
    });
  });
  after(async () => {
    if (worker) await destroyWorker(worker);
  });

  test("getVm: the agent is ready, and how long after the create it said hello", async () => {
    const vm = JSON.parse((await worker.cli(["get-vm", id])).stdout) as { agentState: string; agentReadyMs: number };
    assert.equal(vm.agentState, "ready");
    assert.ok(vm.agentReadyMs > 0 && vm.agentReadyMs < 90_000, `ready after ${vm.agentReadyMs} ms`);
  });

  test("exec prints the command's output and exits with its code", async () => {
    const ok = await worker.cli([
      "exec",
      id,
      "--env",
      "WHO=guest",
      "--cwd",
      "/tmp",
      "--",
      "/bin/sh",
      "-c",
      'echo "hi $WHO from $(pwd)"; exit 3',
    ]);
    assert.equal(ok.stdout.trim(), "hi guest from /tmp");
    assert.equal(ok.exitCode, 3);
    const killed = await worker.cli(["exec", id, "--", "/bin/sh", "-c", "kill -KILL $$"]);
    assert.equal(killed.exitCode, 128 + 9);
    const slow = await worker.cli(["exec", id, "--timeout-ms", "300", "--", "/bin/sleep", "30"]);
    assert.equal(slow.exitCode, 128 + 9);
    assert.match(slow.stderr, /killed after --timeout-ms/);
  });

  test("bad input is INVALID_ARGUMENT; an unknown VM is NOT_FOUND", async () => {
    const relative = await worker.cli(["exec", id, "--cwd", "tmp", "--", "true"]);
    assert.equal(relative.exitCode, 1);
    assert.match(relative.stderr, /INVALID_ARGUMENT: cwd "tmp" is not an absolute path/);
    const unknown = await worker.cli(["exec", "vm-0000000000", "--", "true"]);
    assert.match(unknown.stderr, /NOT_FOUND/);
    const usage = await worker.cli(["exec", id]);
    assert.equal(usage.exitCode, 2);
  });

  test("the audit log names the command and its exit, never its environment", async () => {
    await worker.cli(["exec", id, "--env", "TOKEN=audit-secret-value", "--", "/bin/true"]);
    const audit = readFileSync(join(worker.stateDir, "audit.log"), "utf8");
    const entries = audit
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((entry) => entry.method === "exec");
    assert.ok(entries.some((entry) => entry.command === "/bin/true" && entry.exitCode === 0 && entry.vmId === id));
    assert.ok(!audit.includes("audit-secret-value"));
  });

  test("delete: the channel closes with the VM; nothing is left", async () => {
    assert.equal((await worker.cli(["delete-vm", id])).exitCode, 0);
    assert.match((await worker.cli(["exec", id, "--", "true"])).stderr, /NOT_FOUND/);
    await assertNothingLeft(worker);
  });
});
