// Create/delete cycles against a real worker: every create spawns QEMU (and its TAP, nft objects,
// lease, VM directory, half of them a secrets directory); the delete must take all of it back.
// Creates return once QEMU reports the guest running; the guest's own boot is not waited for.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { destroyWorker, type WorkerProcess } from "../helpers/worker-process.js";
import { client, guestSpec, logTail, prng, report, SEED, settledFds, skip, startChaosWorker } from "./harness.js";
import { checkInvariants, fdCount, vmmProcesses } from "./invariants.js";

const CYCLES = 200;
/** Two lanes of create/delete at once: the host's 2 cores allow 2 VMs at a time. */
const LANES = 2;
const CHECK_EVERY = 25;
const RACES = 20;

/**
 * Lets one lane hold the others still between two calls: `close()` resolves once every other lane
 * is parked (or has finished), `open()` lets them go on.
 */
class Gate {
  private held: Promise<void> | undefined;
  private release = () => {};
  private parked = 0;
  private wake = () => {};

  constructor(private others: number) {}

  async park(): Promise<void> {
    if (!this.held) return;
    this.parked++;
    this.wake();
    await this.held;
    this.parked--;
  }

  leave(): void {
    this.others--;
    this.wake();
  }

  async close(): Promise<void> {
    this.held = new Promise((resolve) => (this.release = resolve));
    while (this.parked < this.others) await new Promise<void>((resolve) => (this.wake = resolve));
  }

  open(): void {
    this.held = undefined;
    this.release();
  }
}

describe("create/delete cycles", { skip }, () => {
  let worker: WorkerProcess;

  before(async () => {
    worker = await startChaosWorker();
  });

  after(async () => {
    if (worker) await destroyWorker(worker);
  });

  test(`${CYCLES} create/delete cycles (QEMU spawned, ${LANES} at a time) ` +
    "leave zero leaked processes, TAPs, nft objects, fds and directories", {
    timeout: 600_000,
  }, async () => {
    const started = Date.now();
    const clients = await Promise.all(Array.from({ length: LANES }, () => client(worker)));
    // Warm up (lazy listeners, the network's first attach), then take the fd baseline.
    const warm = await clients[0]!.createVm(guestSpec());
    await clients[0]!.deleteVm(warm);
    const baselineFds = await settledFds(worker);
    const createMs: number[] = [];
    const deleteMs: number[] = [];
    let maxFds = baselineFds;
    let done = 0;
    let leaks = 0;
    const seenPids = new Set<number>();

    const gate = new Gate(LANES - 1);
    const lane = async (index: number) => {
      const c = clients[index]!;
      for (let i = index; i < CYCLES; i += LANES) {
        const withSecret = i % 2 === 0;
        let t = performance.now();
        const id = await c.createVm(guestSpec({ hostname: `cycle-${i}`, ...(i % 2 ? { group: "cycles" } : {}) }), {
          secrets: withSecret ? [{ name: "token", value: new TextEncoder().encode(`secret-${i}`) }] : [],
        });
        createMs.push(performance.now() - t);
        for (const pid of vmmProcesses(worker).live.keys()) seenPids.add(pid);
        maxFds = Math.max(maxFds, fdCount(worker.pid) ?? 0);
        if (index !== 0) await gate.park(); // holding its VM: the check sees a live one
        t = performance.now();
        await c.deleteVm(id);
        deleteMs.push(performance.now() - t);
        done++;
        if (index !== 0) await gate.park();
        if (done % CHECK_EVERY === 0 && index === 0) {
          // Mid-run, with the other lanes held between two calls (one of them maybe holding a
          // VM): a snapshot taken while a create or delete runs would see it half done.
          await gate.close();
          try {
            const { problems } = await checkInvariants(worker);
            leaks += problems.length;
            assert.deepEqual(problems, [], `after ${done} cycles:\n${logTail(worker)}`);
          } finally {
            gate.open();
          }
        }
      }
      if (index !== 0) gate.leave();
    };
    await Promise.all(Array.from({ length: LANES }, (_, index) => lane(index)));
    for (const c of clients) c.close();

    const { problems, snap } = await checkInvariants(worker, { baselineFds, fdSlack: 2 });
    leaks += problems.length;
    assert.deepEqual(problems, [], logTail(worker));
    assert.equal(snap.vms.length, 0);
    assert.equal(snap.taps.length, 0);
    assert.equal(snap.nft.perVm.size, 0);
    assert.deepEqual(snap.vmDirs, []);
    assert.deepEqual(snap.secretsDirs, []);
    assert.equal(snap.vmmProcesses.size, 0);
    assert.ok(seenPids.size >= CYCLES * 0.9, `QEMU was seen for only ${seenPids.size} of ${CYCLES} creates`);
    const stats = (values: number[]) => {
      const sorted = [...values].sort((a, b) => a - b);
      return { p50: Math.round(sorted[Math.floor(sorted.length / 2)]!), max: Math.round(sorted[sorted.length - 1]!) };
    };
    report("cycles", {
      cycles: done,
      lanes: LANES,
      qemuProcessesSeen: seenPids.size,
      leaks,
      fds: { baseline: baselineFds, peak: maxFds, end: snap.fds },
      createMs: stats(createMs),
      deleteMs: stats(deleteMs),
      wallMs: Date.now() - started,
    });
  });

  test(`${RACES} deletes racing their creates (delete sent while the create runs): no leak, no stuck VM (seed ${SEED})`, {
    timeout: 300_000,
  }, async () => {
    const random = prng(SEED);
    const creator = await client(worker);
    const deleter = await client(worker);
    const outcomes: Record<string, number> = {};
    for (let round = 0; round < RACES; round++) {
      const creating = creator.createVm(guestSpec(), { secrets: [{ name: "token", value: new Uint8Array([round]) }] }).then(
        () => "created",
        (err: { code?: string }) => `create ${err.code}`,
      );
      await new Promise((resolve) => setTimeout(resolve, Math.floor(random() * 150)));
      const [vm] = await deleter.listVms();
      const deleted = vm
        ? await deleter.deleteVm(vm.id).then(
            () => "deleted",
            (err: { code?: string }) => `delete ${err.code}`,
          )
        : "not seen";
      const created = await creating;
      for (const left of await deleter.listVms()) await deleter.deleteVm(left.id);
      const key = `${created}/${deleted}`;
      outcomes[key] = (outcomes[key] ?? 0) + 1;
      const { problems } = await checkInvariants(worker);
      assert.deepEqual(problems, [], `round ${round} (${key}):\n${logTail(worker)}`);
    }
    creator.close();
    deleter.close();
    report("delete-racing-create", { races: RACES, outcomes, leaks: 0, seed: SEED });
  });
});
