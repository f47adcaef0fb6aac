// Secrets end to end on QEMU: they reach exactly one guest at /run/secrets (9p, read-only) and
// leave no trace in argv, environments, state, logs, replies or errors; delete and a crashed
// worker leave nothing on disk.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { testGuest, type TestGuestSpec } from "../helpers/repo.js";
import { assertNothingLeft, createFromSpec, listJson, vmmPids, waitFor, waitForConsole, withCommand } from "../helpers/vm.js";
import { destroyWorker, startWorker, type WorkerProcess } from "../helpers/worker-process.js";

const guest = testGuest();
const skip = "skip" in guest ? guest.skip : false;

/** Prints each secret's SHA-256, the mount's options, and whether the guest can write there. */
const READ_SECRETS = [
  "cd /run/secrets",
  'for f in *; do echo "secret-sha $f $(sha256sum "$f" | cut -d" " -f1)"; done',
  'grep " /run/secrets " /proc/mounts | sed "s/^/secret-mount /"',
  "if touch /run/secrets/new 2>/dev/null; then echo secret-writable; else echo secret-readonly; fi",
].join("; ");

const sha256 = (value: Buffer) => createHash("sha256").update(value).digest("hex");

/** Every file under dir, recursively (regular files only). */
function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...filesUnder(path));
    else if (entry.isFile()) out.push(path);
  }
  return out;
}

/** Where each secret value was found: every process's argv and environment, and the given files and texts. */
function findLeaks(values: Buffer[], files: string[], texts: Record<string, string>): string[] {
  const leaks: string[] = [];
  const check = (where: string, content: Buffer) => {
    for (const value of values) if (content.includes(value)) leaks.push(where);
  };
  for (const pid of readdirSync("/proc").filter((name) => /^\d+$/.test(name))) {
    if (Number(pid) === process.pid) continue; // this test holds the values in memory, never in argv or env
    for (const what of ["cmdline", "environ"]) {
      try {
        check(`/proc/${pid}/${what}`, readFileSync(`/proc/${pid}/${what}`));
      } catch {
        // gone meanwhile
      }
    }
  }
  for (const file of files) check(file, readFileSync(file));
  for (const [where, text] of Object.entries(texts)) check(where, Buffer.from(text));
  return leaks;
}

describe("secrets at /run/secrets (QEMU, 9p)", { skip }, () => {
  let worker: WorkerProcess;
  let spec: TestGuestSpec;
  let scratch: string;
  const apiKey = Buffer.from(`sk-${randomBytes(24).toString("hex")}`);
  const token = Buffer.from(`tok-${randomBytes(24).toString("hex")}`);
  const fromDir = Buffer.from(`dir-${randomBytes(24).toString("hex")}`);
  const values = [apiKey, token, fromDir];

  before(async () => {
    if ("skip" in guest) return;
    spec = guest.spec;
    scratch = await mkdtemp(join(tmpdir(), "pcr-secrets-"));
    await writeFile(join(scratch, "api-key"), apiKey, { mode: 0o600 });
    await mkdir(join(scratch, "dir"));
    await writeFile(join(scratch, "dir", "deploy_key"), fromDir, { mode: 0o600 });
    worker = await startWorker();
  });

  after(async () => {
    if (worker) await destroyWorker(worker);
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  /** The worker's secrets directory for a VM, seen from inside the worker's mount namespace. */
  const secretsDir = (id: string) => join(`/proc/${worker.pid}/root`, worker.runtimeDir, "secrets", id);

  test("each secret reaches the guest read-only, byte for byte; nothing leaks; delete wipes them", async () => {
    const id = await createFromSpec(
      worker,
      withCommand(spec, READ_SECRETS),
      ["--secret", `API_KEY=@${join(scratch, "api-key")}`, "--secret", "TOKEN=env:PCR_TEST_TOKEN", "--secrets-dir", join(scratch, "dir")],
      { PCR_TEST_TOKEN: token.toString() },
    );
    const console = await waitForConsole(worker, id, /pcr-guest: cmd exit=\d+/);
    const seen = Object.fromEntries([...console.matchAll(/secret-sha (\S+) ([0-9a-f]{64})/g)].map((m) => [m[1], m[2]]));
    assert.deepEqual(seen, { API_KEY: sha256(apiKey), TOKEN: sha256(token), deploy_key: sha256(fromDir) });
    assert.match(console, /secret-mount secrets \/run\/secrets 9p ro/);
    assert.match(console, /secret-readonly/);

    // On the host: a 0700 directory of 0400 files on tmpfs, for this VM only.
    const dir = secretsDir(id);
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    assert.deepEqual(readdirSync(dir).sort(), ["API_KEY", "TOKEN", "deploy_key"]);
    for (const name of readdirSync(dir)) assert.equal(statSync(join(dir, name)).mode & 0o777, 0o400);

    const replies = {
      "list-vms": (await worker.cli(["list-vms", "--json"])).stdout,
      "get-vm": (await worker.cli(["get-vm", id])).stdout,
      logs: (await worker.cli(["logs", id])).stdout,
      events: (await worker.cli(["events"])).stdout,
    };
    const stateFiles = filesUnder(worker.stateDir);
    assert.ok(
      stateFiles.some((file) => file.endsWith("vm.json")),
      "the scan covers the VM record",
    );
    const leaks = findLeaks(values, stateFiles, { ...replies, "worker log": worker.logs() });
    assert.deepEqual(leaks, [], "secret values found");
    assert.ok((await vmmPids(id)).length > 0, "the scan ran while the VMM was up");

    assert.equal((await worker.cli(["delete-vm", id])).exitCode, 0);
    assert.equal(existsSync(dir), false, "the secrets directory is gone after delete");
    await assertNothingLeft(worker);
  });

  test("bad names, too many and too large are INVALID_ARGUMENT, echo no value, leave nothing", async () => {
    await writeFile(join(scratch, "big"), Buffer.alloc(2 * 1024 * 1024, 0x41));
    const cases: Array<{ name: string; args: string[] }> = [
      { name: "name with ..", args: ["--secret", `..=@${join(scratch, "api-key")}`] },
      { name: "name with a slash", args: ["--secret", `a/b=@${join(scratch, "api-key")}`] },
      { name: "name with a control character", args: ["--secret", `a\u0001b=@${join(scratch, "api-key")}`] },
      { name: "value too large", args: ["--secret", `BIG=@${join(scratch, "big")}`] },
      { name: "literal value", args: ["--secret", `API_KEY=${apiKey.toString()}`] },
    ];
    for (const { name, args } of cases) {
      const result = await worker.cli(["create-vm", "--spec-json", JSON.stringify(spec), ...args]);
      assert.notEqual(result.exitCode, 0, name);
      assert.match(result.stderr, /INVALID_ARGUMENT/, `${name}: ${result.stderr}`);
      assert.deepEqual(findLeaks(values, [], { stderr: result.stderr, stdout: result.stdout }), [], `${name}: value echoed`);
    }
    const many = await mkdtemp(join(scratch, "many-"));
    for (let i = 0; i < 65; i++) await writeFile(join(many, `S${i}`), "x");
    const tooMany = await worker.cli(["create-vm", "--spec-json", JSON.stringify(spec), "--secrets-dir", many]);
    assert.equal(tooMany.exitCode, 1);
    assert.match(tooMany.stderr, /INVALID_ARGUMENT: too many secrets/);
    assert.deepEqual(await listJson(worker), []);
    assert.deepEqual(readdirSync(join(`/proc/${worker.pid}/root`, worker.runtimeDir, "secrets")), []);
    await assertNothingLeft(worker);
  });

  test("a worker killed with SIGKILL, whose VM then dies, is restarted and leaves no secret anywhere", async () => {
    const id = await createFromSpec(worker, spec, ["--secret", `API_KEY=@${join(scratch, "api-key")}`]);
    await waitForConsole(worker, id, "pcr-guest: ready");
    const reuse = { stateDir: worker.stateDir, runtimeDir: worker.runtimeDir, netns: worker.netns };
    await worker.stop("SIGKILL");
    for (const pid of await vmmPids(id)) process.kill(pid, "SIGKILL");
    await waitFor("the VMM gone", 5_000, async () => ((await vmmPids(id)).length === 0 ? true : undefined));

    worker = await startWorker({ reuse });
    const vm = await waitFor("the VM marked failed", 10_000, async () =>
      (await listJson(worker)).find((entry) => entry.id === id && entry.status === "failed"),
    );
    assert.ok(vm);
    assert.equal(existsSync(secretsDir(id)), false, "no secrets directory for the dead VM");
    // The host's view of the runtime directory never held a value (the secrets live on tmpfs).
    const leaks = findLeaks(values, [...filesUnder(worker.stateDir), ...filesUnder(worker.runtimeDir)], { "worker log": worker.logs() });
    assert.deepEqual(leaks, []);
    assert.equal((await worker.cli(["delete-vm", id])).exitCode, 0);
    await assertNothingLeft(worker);
  });
});
