// A VMM killed under the worker: the VM turns failed within 1 s (its own child, or one re-adopted
// after a worker restart), its network and secrets are released, and a VMM that died while the
// worker was down is reported failed by the next worker.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { VmEvent } from "../../worker/core/api.js";
import type { WorkerClient } from "../../worker/rpc/worker-client.js";
import { destroyWorker, type WorkerProcess } from "../helpers/worker-process.js";
import { client, guestSpec, logTail, readJson, report, restartWorker, skip, startChaosWorker } from "./harness.js";
import { checkInvariants } from "./invariants.js";

const CHILD_KILLS = 4;
const ADOPTED_KILLS = 2;

function vmmPid(worker: WorkerProcess, id: string): number {
  return readJson<{ vmm: { pid: number } }>(join(worker.stateDir, "vms", id, "vm.json")).vmm.pid;
}

async function eventsHead(c: WorkerClient): Promise<bigint> {
  let since = 0n;
  for (;;) {
    const { events, nextSeq } = await c.events(since, 1000, 0);
    if (events.length === 0) return nextSeq;
    since = nextSeq;
  }
}

/** SIGKILLs the VM's VMM and returns how long until the worker announced it failed. */
async function killAndTime(worker: WorkerProcess, c: WorkerClient, id: string): Promise<{ ms: number; event: VmEvent }> {
  const since = await eventsHead(c);
  const pid = vmmPid(worker, id);
  const killedAt = performance.now();
  process.kill(pid, "SIGKILL");
  let next = since;
  for (;;) {
    const { events, nextSeq } = await c.events(next, 100, 2000);
    next = nextSeq;
    const failed = events.find((event) => event.vmId === id && event.status === "failed");
    if (failed) return { ms: performance.now() - killedAt, event: failed };
    if (performance.now() - killedAt > 10_000) throw new Error(`no failed event for ${id} within 10 s:\n${logTail(worker)}`);
  }
}

describe("VMM killed under the worker", { skip }, () => {
  let worker: WorkerProcess;
  const latencies: { child: number[]; adopted: number[] } = { child: [], adopted: [] };

  before(async () => {
    worker = await startChaosWorker();
  });

  after(async () => {
    if (worker) await destroyWorker(worker);
    report("vmm-kill", {
      childKills: latencies.child.length,
      adoptedKills: latencies.adopted.length,
      childMs: latencies.child.map(Math.round),
      adoptedMs: latencies.adopted.map(Math.round),
      maxMs: Math.round(Math.max(...latencies.child, ...latencies.adopted)),
    });
  });

  test(`${CHILD_KILLS} VMMs started by this worker, SIGKILLed: each reported failed within 1 s, resources released`, {
    timeout: 120_000,
  }, async () => {
    const c = await client(worker);
    for (let i = 0; i < CHILD_KILLS; i++) {
      const id = await c.createVm(guestSpec(), { secrets: [{ name: "k", value: new Uint8Array([1]) }] });
      const { ms, event } = await killAndTime(worker, c, id);
      latencies.child.push(ms);
      assert.ok(ms < 1000, `VM ${id} reported failed after ${Math.round(ms)} ms`);
      assert.match(event.reason, /SIGKILL/);
      const vm = await c.getVm(id);
      assert.equal(vm.status, "failed");
      const { problems } = await checkInvariants(worker);
      assert.deepEqual(problems, []);
      await c.deleteVm(id);
    }
    c.close();
  });

  test(`${ADOPTED_KILLS} VMMs re-adopted after a worker restart, SIGKILLed: each reported failed within 1 s`, {
    timeout: 120_000,
  }, async () => {
    let c = await client(worker);
    const ids: string[] = [];
    for (let i = 0; i < ADOPTED_KILLS; i++) ids.push(await c.createVm(guestSpec()));
    c.close();
    await worker.stop("SIGTERM"); // the default: VMs keep running
    worker = await restartWorker(worker);
    c = await client(worker);
    for (const id of ids) {
      assert.equal((await c.getVm(id)).status, "running", `VM ${id} not re-adopted:\n${logTail(worker)}`);
      const { ms } = await killAndTime(worker, c, id);
      latencies.adopted.push(ms);
      assert.ok(ms < 1000, `adopted VM ${id} reported failed after ${Math.round(ms)} ms`);
      const { problems } = await checkInvariants(worker);
      assert.deepEqual(problems, []);
      await c.deleteVm(id);
    }
    c.close();
  });

  test("a VMM that dies while the worker is down is reported failed by the next worker", { timeout: 120_000 }, async () => {
    let c = await client(worker);
    const id = await c.createVm(guestSpec());
    c.close();
    const pid = vmmPid(worker, id);
    await worker.stop("SIGKILL");
    process.kill(pid, "SIGKILL");
    worker = await restartWorker(worker);
    c = await client(worker);
    const vm = await c.getVm(id);
    assert.equal(vm.status, "failed");
    assert.match(vm.failure, /while the worker was down/);
    const { problems } = await checkInvariants(worker);
    assert.deepEqual(problems, []);
    await c.deleteVm(id);
    assert.deepEqual(await c.listVms(), []);
    c.close();
  });
});
