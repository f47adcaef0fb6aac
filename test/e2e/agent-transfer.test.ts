// The guest agent under load and across a worker restart, on QEMU: a 256 MiB file into the guest
// and back (equal sha256, the worker's memory bounded), 100 commands at once on one VM, and a
// worker SIGKILLed while a long exec runs and a long-running process works: the exec fails, the
// restarted worker re-attaches the channel, and the process is still there to read and wait on.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, open, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { connectWorker, type WorkerClient } from "../../worker/rpc/worker-client.js";
import { testGuest } from "../helpers/repo.js";
import { waitFor } from "../helpers/vm.js";
import { destroyWorker, startWorker, type WorkerProcess } from "../helpers/worker-process.js";

const guest = testGuest();
const skip = "skip" in guest ? guest.skip : false;
const MIB = 1024 * 1024;
const FILE_BYTES = 256 * MIB;

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Resident memory of a process, in bytes. */
async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) * 1024;
}

describe("the agent under load and across a worker restart (QEMU)", { skip, concurrency: false }, () => {
  let worker: WorkerProcess;
  let client: WorkerClient;
  let id: string;
  let scratch: string;

  before(async () => {
    if ("skip" in guest) return;
    scratch = await mkdtemp(join(tmpdir(), "pcr-agent-transfer-"));
    worker = await startWorker();
    client = await connectWorker(worker.socket);
    // The file lands in the guest's RAM (its root is the initramfs): room for it twice over.
    id = await client.createVm({ ...guest.input, memoryBytes: BigInt(768 * MIB) }, { waitReadyMs: 90_000 });
  });
  after(async () => {
    client?.close();
    if (worker) await destroyWorker(worker);
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  test("256 MiB into the guest and back: equal sha256, the worker's memory bounded", async () => {
    const local = join(scratch, "big.bin");
    const file = await open(local, "w");
    const hash = createHash("sha256");
    for (let at = 0; at < FILE_BYTES; at += 4 * MIB) {
      const chunk = randomBytes(4 * MIB);
      hash.update(chunk);
      await file.write(chunk);
    }
    await file.close();
    const sha = hash.digest("hex");

    const baseline = await rssOf(worker.pid);
    let peak = baseline;
    const sampler = setInterval(() => {
      rssOf(worker.pid).then(
        (rss) => (peak = Math.max(peak, rss)),
        () => undefined,
      );
    }, 50);
    try {
      const inStart = performance.now();
      const sent = await worker.cli(["cp", local, `${id}:/root/big.bin`]);
      const inSeconds = (performance.now() - inStart) / 1000;
      assert.equal(sent.exitCode, 0, sent.stderr);
      const inGuest = await client.exec(id, { argv: ["/bin/sha256sum", "/root/big.bin"], timeoutMs: 300_000 });
      assert.equal(Buffer.from(inGuest.stdout).toString().split(" ")[0], sha, "the guest holds the same bytes");

      const back = join(scratch, "back.bin");
      const outStart = performance.now();
      const fetched = await worker.cli(["cp", `${id}:/root/big.bin`, back]);
      const outSeconds = (performance.now() - outStart) / 1000;
      assert.equal(fetched.exitCode, 0, fetched.stderr);
      assert.equal(await sha256File(back), sha, "and gives them back");
      console.log(`# 256 MiB in ${inSeconds.toFixed(1)} s (${(256 / inSeconds).toFixed(1)} MiB/s), out ${outSeconds.toFixed(1)} s`);
    } finally {
      clearInterval(sampler);
    }
    const growth = peak - baseline;
    console.log(`# worker RSS ${(baseline / MIB).toFixed(0)} MiB before, peak ${(peak / MIB).toFixed(0)} MiB`);
    assert.ok(growth < 96 * MIB, `the worker grew by ${(growth / MIB).toFixed(0)} MiB moving 256 MiB`);
    await client.exec(id, { argv: ["/bin/rm", "/root/big.bin"] });
  });

  test("100 commands at once on one VM each get their own answer", async () => {
    const results = await Promise.all(
      Array.from({ length: 100 }, (_, i) => client.exec(id, { argv: ["/bin/sh", "-c", `echo ${i}; exit ${i % 7}`], timeoutMs: 120_000 })),
    );
    results.forEach((result, i) => {
      assert.equal(Buffer.from(result.stdout).toString(), `${i}\n`);
      assert.equal(result.exitCode, i % 7);
    });
  });

  test("a worker SIGKILLed during a long exec: the exec fails; after the restart the channel and the process are back", async () => {
    const pid = await client.startProcess(id, { argv: ["/bin/sh", "-c", "echo started; sleep 6; echo finished; exit 3"] });
    const long = client.exec(id, { argv: ["/bin/sleep", "30"], timeoutMs: 60_000 });
    const failed = long.then(
      () => "answered",
      (err: Error) => err.message,
    );
    await waitFor("the process to print", 30_000, async () => {
      const output = await client.readProcess(id, pid, "stdout", 0, 1024, 1000);
      return Buffer.from(output.data).toString() === "started\n" ? true : undefined;
    });
    await worker.stop("SIGKILL");
    assert.match(await failed, /closed|reset|UNAVAILABLE|ECONN/i, "the exec in flight fails with the worker");
    client.close();

    const { stateDir, runtimeDir, netns } = worker;
    worker = await startWorker({ reuse: { stateDir, runtimeDir, netns } });
    client = await connectWorker(worker.socket);
    assert.equal((await client.getVm(id)).status, "running", "the VM was adopted");
    await waitFor("the channel to be re-attached", 60_000, async () =>
      (await client.getVm(id)).agentState === "ready" ? true : undefined,
    );
    const status = await client.waitProcess(id, pid, 30_000);
    assert.deepEqual(status, { pid, running: false, exitCode: 3, signal: 0 }, "the process ran on in the guest");
    const output = await client.readProcess(id, pid, "stdout", 0, 1024, 0);
    assert.equal(Buffer.from(output.data).toString(), "started\nfinished\n");
    assert.equal(output.eof, true);
    const again = await client.exec(id, { argv: ["/bin/echo", "back"] });
    assert.equal(Buffer.from(again.stdout).toString(), "back\n");
  });
});
