// The build-farm flow with the Nix installed here (no nixpkgs): a spec file built by Nix from the
// pure helpers, whose closure is the whole VM; signed and pushed to a file:// binary cache; pulled
// into an empty store the way the worker pulls (nix copy --from, trusted keys); then booted by a
// real worker through `pcr-worker-test create-vm --spec-file`. The guest is the bundled test
// guest (scripts/build-test-guest): the NixOS guest itself needs nixpkgs, absent offline.
import assert from "node:assert/strict";
import { execa } from "execa";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { parseVmSpecJson, validateSpec, MIB } from "../../worker/core/spec.js";
import { TEST_GUEST_SPEC, WORKER_BIN, testGuest } from "../helpers/repo.js";
import { destroyWorker, startWorker, type WorkerProcess } from "../helpers/worker-process.js";
import { FIXTURES, skipWithoutNix } from "./nix.js";

const guest = testGuest();
const skip = skipWithoutNix || ("skip" in guest ? guest.skip : false);
const NIX_ENV = { NIX_CONFIG: "experimental-features = nix-command", NIX_PATH: "" };

async function nix(command: string, args: string[]) {
  const result = await execa(command, args, { reject: false, env: NIX_ENV, timeout: 60_000 });
  return { exitCode: result.exitCode ?? -1, stdout: result.stdout.trim(), stderr: result.stderr };
}

describe("nix: build farm to worker", { skip }, () => {
  const scratch = mkdtempSync(join(tmpdir(), "pcr-nix-farm-"));
  const cache = join(scratch, "cache");
  const secretKey = join(scratch, "farm.sk");
  const publicKey = join(scratch, "farm.pk");
  let specPath = "";
  let closure: string[] = [];

  before(async () => {
    const built = await nix("nix-build", ["--no-out-link", join(FIXTURES, "test-guest-vm.nix"), "--arg", "guestSpec", TEST_GUEST_SPEC]);
    assert.equal(built.exitCode, 0, built.stderr);
    specPath = built.stdout.split("\n").at(-1)!;
    closure = (await nix("nix-store", ["-qR", specPath])).stdout.split("\n");
  });
  after(() => rmSync(scratch, { recursive: true, force: true }));

  it("builds a spec file the worker's validation accepts", () => {
    assert.match(specPath, /^\/nix\/store\/[0-9a-z]{32}-nix-built-vm-spec\.json$/);
    const input = parseVmSpecJson(readFileSync(specPath, "utf8"));
    const valid = validateSpec(input, { maxCpu: 8, minMemoryBytes: 64 * MIB, maxMemoryBytes: 4096 * MIB, maxAllowedDomains: 64 });
    assert.equal(valid.hostname, "nix-built");
  });

  it("has the whole VM as its closure: kernel, initrd, image and itself", () => {
    const spec = JSON.parse(readFileSync(specPath, "utf8")) as Record<string, string>;
    assert.deepEqual([...closure].sort(), [spec.kernel, spec.initrd, spec.image, specPath].sort());
  });

  it("signs and pushes the closure to a binary cache, and an empty store pulls it with the trusted key", async () => {
    const keys = await nix("nix-store", ["--generate-binary-cache-key", "pcr-farm-test-1", secretKey, publicKey]);
    assert.equal(keys.exitCode, 0, keys.stderr);
    const pushed = await nix("nix", ["copy", "--to", `file://${cache}?compression=zstd&secret-key=${secretKey}`, specPath]);
    assert.equal(pushed.exitCode, 0, pushed.stderr);
    const narinfos = readdirSync(cache).filter((name) => name.endsWith(".narinfo"));
    assert.equal(narinfos.length, closure.length);
    for (const name of narinfos) assert.match(readFileSync(join(cache, name), "utf8"), /^Sig: pcr-farm-test-1:/m);

    // What the worker runs (worker/store/nix.ts), into a chroot store standing for a fresh host.
    const workerStore = `local?root=${join(scratch, "worker-root")}`;
    const pull = (key: string) =>
      nix("nix", ["copy", "--from", `file://${cache}`, "--to", workerStore, "--option", "trusted-public-keys", key, specPath]);
    const untrusted = await pull("someone-else-1:cuY6Tn47a+vQUJTz8bOtRCHlu2kHV0ZVX3BfVfXUAYc=");
    assert.notEqual(untrusted.exitCode, 0, "paths signed by an unknown key must be refused");
    assert.match(untrusted.stderr, /signature/);
    const trusted = await pull(readFileSync(publicKey, "utf8").trim());
    assert.equal(trusted.exitCode, 0, trusted.stderr);
    const valid = await nix("nix-store", ["--store", workerStore, "--check-validity", "--print-invalid", ...closure]);
    assert.equal(valid.exitCode, 0, valid.stderr);
    assert.equal(valid.stdout, "", "every closure path is valid in the worker's store");
  });

  const noWorker = existsSync(WORKER_BIN) ? false : `${WORKER_BIN} missing: run npm run build`;
  it("boots through pcr-worker-test create-vm --spec-file", { skip: noWorker, timeout: 60_000 }, async () => {
    let worker: WorkerProcess | undefined;
    try {
      worker = await startWorker();
      const started = Date.now();
      const created = await worker.cli(["create-vm", "--spec-file", specPath]);
      assert.equal(created.exitCode, 0, `${created.stderr}\n${worker.logs().slice(-2000)}`);
      const id = created.stdout.trim();
      let consoleText = "";
      while (!consoleText.includes("pcr-guest: ready")) {
        assert.ok(Date.now() - started < 45_000, `no ready marker; console:\n${consoleText}`);
        await new Promise((resolve) => setTimeout(resolve, 200));
        consoleText = (await worker.cli(["logs", id])).stdout;
      }
      console.log(`# nix-built spec: create-vm to "pcr-guest: ready" in ${Date.now() - started} ms`);
      const vm = JSON.parse((await worker.cli(["get-vm", id])).stdout) as Record<string, unknown>;
      assert.equal(vm.hostname, "nix-built");
      assert.equal((await worker.cli(["delete-vm", id])).exitCode, 0);
    } finally {
      if (worker) await destroyWorker(worker);
    }
  });
});
