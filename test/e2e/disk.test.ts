// Data disks cannot fill the host: they are counted against --max-total-disk-bytes until their VM
// is deleted (whatever its status), and their blocks are reserved at create, so a host without
// room fails the create, not a running guest's write.
import assert from "node:assert/strict";
import { execa } from "execa";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import type { VmSpecInput } from "../../worker/core/api.js";
import { connectWorker } from "../../worker/rpc/worker-client.js";
import { testGuest } from "../helpers/repo.js";
import { createNetns } from "../helpers/netns.js";
import { assertNothingLeft, waitFor } from "../helpers/vm.js";
import { destroyWorker, startWorker, type WorkerProcess } from "../helpers/worker-process.js";
import { rejectsWith } from "../helpers/errors.js";

const guest = testGuest();
const skip = process.getuid?.() !== 0 ? "needs root" : "skip" in guest ? guest.skip : false;
const MIB = 1024n * 1024n;

describe("data disks and the host's disk", { skip }, () => {
  const workers: WorkerProcess[] = [];
  const mounts: string[] = [];
  after(async () => {
    for (const worker of workers) await worker.stop("SIGKILL").catch(() => undefined);
    for (const mount of mounts) await execa("umount", ["-l", mount], { reject: false });
    for (const worker of workers) await destroyWorker(worker);
  });
  const input = () => ({ ...(guest as { input: VmSpecInput }).input });

  test("the total of data disks is capped, a stopped VM's disk still counts, and delete frees it", async () => {
    const worker = await startWorker({ extraArgs: ["--max-total-disk-bytes", String(100n * MIB)] });
    workers.push(worker);
    const client = await connectWorker(worker.socket);
    try {
      const first = await client.createVm({ ...input(), dataDiskBytes: 64n * MIB });
      await rejectsWith(
        client.createVm({ ...input(), dataDiskBytes: 64n * MIB }),
        "RESOURCE_EXHAUSTED",
        /data-disk limit 104857600 bytes would be exceeded/,
      );
      await client.injectFault(first, { kind: "powerOff" });
      await waitFor("first vm stopped", 30_000, async () => ((await client.getVm(first)).status === "stopped" ? true : undefined));
      await rejectsWith(client.createVm({ ...input(), dataDiskBytes: 64n * MIB }), "RESOURCE_EXHAUSTED", /data-disk limit/);
      const small = await client.createVm({ ...input(), dataDiskBytes: 16n * MIB });
      await client.deleteVm(first);
      const second = await client.createVm({ ...input(), dataDiskBytes: 64n * MIB });
      await client.deleteVm(small);
      await client.deleteVm(second);
      await assertNothingLeft(worker);
    } finally {
      client.close();
    }
  });

  test("a data disk the host has no room for fails the create (RESOURCE_EXHAUSTED) and leaves nothing behind", async () => {
    const base = await mkdtemp(join(tmpdir(), "pcr-disk-"));
    const stateDir = join(base, "state");
    await mkdir(stateDir);
    // A 48 MiB filesystem for the state: a 64 MiB disk cannot be reserved there.
    await execa("mount", ["-t", "tmpfs", "-o", "size=48m", "pcr-test-state", stateDir]);
    mounts.push(stateDir);
    const worker = await startWorker({
      reuse: { stateDir, runtimeDir: join(base, "run"), netns: await createNetns() },
      extraArgs: ["--max-total-disk-bytes", String(1024n * MIB)],
    });
    workers.push(worker);
    const client = await connectWorker(worker.socket);
    try {
      await rejectsWith(
        client.createVm({ ...input(), dataDiskBytes: 64n * MIB }),
        "RESOURCE_EXHAUSTED",
        /no room on the host for a 67108864-byte data disk/,
      );
      assert.deepEqual(await client.listVms(), []);
      await assertNothingLeft(worker);
      const fits = await client.createVm({ ...input(), dataDiskBytes: 16n * MIB });
      await client.deleteVm(fits);
    } finally {
      client.close();
    }
    await rm(join(base, "run"), { recursive: true, force: true });
  });
});
