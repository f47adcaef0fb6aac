// End to end through the CLI against a running worker: real QEMU, real Nix store, real sockets.
import assert from "node:assert/strict";
import { execa } from "execa";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, realpathSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { NIX_CACHE_URL, testGuest, type TestGuestSpec } from "../helpers/repo.js";
import { assertNothingLeft, createFromSpec, listJson, vmmPids, waitFor, waitForConsole, withCommand } from "../helpers/vm.js";
import { destroyWorker, startWorker, type WorkerProcess } from "../helpers/worker-process.js";

const guest = testGuest();
const skip = "skip" in guest ? guest.skip : false;

describe("worker end to end (real QEMU, real Nix store)", { skip }, () => {
  let worker: WorkerProcess;
  let spec: TestGuestSpec;
  let specText: string;

  before(async () => {
    if ("skip" in guest) return;
    spec = guest.spec;
    specText = guest.specText;
    worker = await startWorker();
  });

  after(async () => {
    if (worker) await destroyWorker(worker);
  });

  test("create from --spec-json as `nix eval --json` prints it, boot, list, read, delete, nothing left", async () => {
    const id = await createFromSpec(worker, JSON.parse(specText) as TestGuestSpec);
    const console = await waitForConsole(worker, id, "pcr-guest: ready");
    assert.match(console, /pcr-guest: ready/);
    const vms = await listJson(worker);
    const vm = vms.find((entry) => entry.id === id);
    assert.ok(vm, "created VM is listed");
    assert.equal(vm.status, "running");
    assert.equal(vm.hostname, spec.hostname);
    assert.match(String(vm.ip), /^\d+\.\d+\.\d+\.\d+$/);
    const table = await worker.cli(["list-vms"]);
    assert.match(table.stdout, new RegExp(`${id}\\s+${spec.hostname}\\s+running`));
    assert.ok((await vmmPids(id)).length > 0, "a VMM process runs for the VM");

    const deleted = await worker.cli(["delete-vm", id]);
    assert.equal(deleted.exitCode, 0, deleted.stderr);
    assert.deepEqual(await vmmPids(id), [], "VMM process gone after delete");
    assert.deepEqual(await listJson(worker), []);
    await assertNothingLeft(worker);
  });

  test("the guest runs a command from the kernel command line and its output comes back through read", async () => {
    const script = "cat /mnt/image/hello.txt; echo sum=$((6*7))";
    const id = await createFromSpec(worker, withCommand(spec, script));
    const console = await waitForConsole(worker, id, /pcr-guest: cmd exit=0/);
    assert.match(console, /sum=42/);
    assert.equal((await worker.cli(["delete-vm", id])).exitCode, 0);
    await assertNothingLeft(worker);
  });

  test("a store path deleted locally is pulled back from the file:// binary cache", async () => {
    // A root image of our own, under a name no other process can hold open (an open file is a GC
    // root, and nix-store --delete refuses live paths): added, pushed to the cache, deleted.
    const scratch = await mkdtemp(join(tmpdir(), "pcr-fetch-"));
    const copy = join(scratch, `pcr-fetch-${randomBytes(6).toString("hex")}.ext4`);
    await copyFile(spec.image, copy);
    const image = (await execa("nix-store", ["--add", copy])).stdout.trim();
    await rm(scratch, { recursive: true, force: true });
    await execa("nix", ["copy", "--to", NIX_CACHE_URL, image], { env: { NIX_CONFIG: "experimental-features = nix-command" } });
    const deleted = await execa("nix-store", ["--delete", image], { reject: false });
    assert.equal(deleted.exitCode, 0, `could not delete ${image}: ${deleted.stderr}`);
    assert.equal(existsSync(image), false);

    const id = await createFromSpec(worker, { ...spec, image });
    assert.ok(existsSync(image), "image is back in the store");
    await waitForConsole(worker, id, "pcr-guest: ready");
    const fetchedLine = worker
      .logs()
      .split("\n")
      .find((line) => line.includes('"msg":"fetched store paths"'));
    assert.ok(fetchedLine?.includes(image), `the worker logged the fetch of ${image}`);
    assert.equal((await worker.cli(["delete-vm", id])).exitCode, 0);
    await assertNothingLeft(worker);
    await execa("nix-store", ["--delete", image], { reject: false });
  });

  test("bad input gets INVALID_ARGUMENT or NOT_FOUND and leaves nothing behind", async () => {
    const cases: Array<{ name: string; args: string[]; code: string; exit: number }> = [
      {
        name: "path outside the store",
        args: ["--spec-json", JSON.stringify({ ...spec, kernel: "/etc/passwd" })],
        code: "INVALID_ARGUMENT",
        exit: 1,
      },
      {
        name: "store path in neither the store nor the cache",
        args: ["--spec-json", JSON.stringify({ ...spec, image: "/nix/store/00000000000000000000000000000000-missing.img" })],
        code: "NOT_FOUND",
        exit: 1,
      },
      { name: "cpu 0", args: ["--spec-json", JSON.stringify({ ...spec, cpu: 0 })], code: "INVALID_ARGUMENT", exit: 1 },
      {
        name: "cpu above the host's cores",
        args: ["--spec-json", JSON.stringify({ ...spec, cpu: 4096 })],
        code: "INVALID_ARGUMENT",
        exit: 1,
      },
      {
        name: "hostname not RFC 1123",
        args: ["--spec-json", JSON.stringify({ ...spec, hostname: "bad_host!" })],
        code: "INVALID_ARGUMENT",
        exit: 1,
      },
      {
        name: "memory too small",
        args: ["--spec-json", JSON.stringify({ ...spec, memoryBytes: 1024 })],
        code: "INVALID_ARGUMENT",
        exit: 1,
      },
      { name: "broken JSON", args: ["--spec-json", '{"hostname": "x", "kernel": '], code: "INVALID_ARGUMENT", exit: 2 },
      { name: "unknown key", args: ["--spec-json", JSON.stringify({ ...spec, kernal: "typo" })], code: "INVALID_ARGUMENT", exit: 2 },
      { name: "literal secret on argv", args: ["--spec-json", specText, "--secret", "TOKEN=hunter2"], code: "INVALID_ARGUMENT", exit: 2 },
    ];
    for (const { name, args, code, exit } of cases) {
      const result = await worker.cli(["create-vm", ...args]);
      assert.equal(result.exitCode, exit, `${name}: exit code (stderr: ${result.stderr})`);
      assert.match(result.stderr, new RegExp(code), `${name}: error code`);
      assert.doesNotMatch(result.stderr, /hunter2/, `${name}: a secret value is echoed`);
    }
    const unknownDelete = await worker.cli(["delete-vm", "vm-0000000000"]);
    assert.equal(unknownDelete.exitCode, 1);
    assert.match(unknownDelete.stderr, /^NOT_FOUND: /);
    const unknownLogs = await worker.cli(["logs", "vm-0000000000"]);
    assert.match(unknownLogs.stderr, /^NOT_FOUND: /);
    assert.deepEqual(await listJson(worker), []);
    await assertNothingLeft(worker);
  });

  test("a store path whose files link to a host file or a device is refused before anything is made", async () => {
    // The attack: a closure in the cache carries `disk -> /some/host/file`; the VMM runs as root.
    const scratch = await mkdtemp(join(tmpdir(), "pcr-links-"));
    const hostFile = join(scratch, "root-only.txt");
    await writeFile(hostFile, "host secret\n", { mode: 0o600 });
    const dir = join(scratch, "evil");
    await mkdir(dir);
    await symlink(hostFile, join(dir, "disk"));
    await symlink("/dev/null", join(dir, "initrd"));
    const evil = (await execa("nix-store", ["--add", dir])).stdout.trim();
    try {
      for (const [field, target] of [
        ["image", "disk"],
        ["initrd", "initrd"],
      ] as const) {
        const result = await worker.cli(["create-vm", "--spec-json", JSON.stringify({ ...spec, [field]: `${evil}/${target}` })]);
        assert.equal(result.exitCode, 1, result.stderr);
        assert.match(
          result.stderr,
          new RegExp(`^INVALID_ARGUMENT: check boot files: ${field} ${evil}/${target} resolves outside the Nix store`),
        );
        assert.doesNotMatch(result.stderr, new RegExp(scratch), "the host path is not echoed");
      }
      assert.deepEqual(await listJson(worker), []);
      await assertNothingLeft(worker);
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  });

  test("the VMM opens the boot files it was handed, not the paths", async () => {
    const id = await createFromSpec(worker, spec);
    const [pid] = await vmmPids(id);
    assert.ok(pid, "VMM pid");
    const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    assert.equal(argv[argv.indexOf("-kernel") + 1], "/proc/self/fd/3");
    assert.equal(realpathSync(`/proc/${pid}/fd/3`), spec.kernel);
    assert.equal(realpathSync(`/proc/${pid}/fd/4`), spec.initrd);
    assert.equal(realpathSync(`/proc/${pid}/fd/5`), spec.image);
    await waitForConsole(worker, id, "pcr-guest: ready");
    assert.equal((await worker.cli(["delete-vm", id])).exitCode, 0);
    await assertNothingLeft(worker);
  });

  test("a VMM killed with SIGKILL turns the VM failed with its reason within 1 s", async () => {
    const id = await createFromSpec(worker, spec);
    await waitForConsole(worker, id, "pcr-guest: ready");
    const [pid] = await vmmPids(id);
    assert.ok(pid, "VMM pid");
    const killedAt = Date.now();
    process.kill(pid, "SIGKILL");
    const failed = await waitFor("status failed", 5_000, async () => {
      const vm = (await listJson(worker)).find((entry) => entry.id === id);
      return vm?.status === "failed" ? vm : undefined;
    });
    assert.ok(Date.now() - killedAt < 1_500, `reported failed after ${Date.now() - killedAt} ms`);
    assert.match(String(failed.failure), /SIGKILL/);
    assert.match(String(failed.failure), /pcr-guest: ready|last console lines/);
    assert.equal((await worker.cli(["delete-vm", id])).exitCode, 0);
    await assertNothingLeft(worker);
  });
});
