// Warm pools under SIGKILL: the worker is killed at random points of claims and of the refills
// they start, restarted on the same state, and once its pool is full again every invariant holds:
// a claim either returned (its VM adopted, running) or left nothing; the pool holds exactly its
// VMs (each a VMM, a directory and a parked TAP); no lease, nft object or secret of a VM that
// is not there. (The unkilled paths: test/e2e/pools.test.ts and test/core/pools.test.ts.)
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { TEST_GUEST_SPEC } from "../helpers/repo.js";
import { destroyWorker, type WorkerProcess } from "../helpers/worker-process.js";
import { client, guestSpec, logTail, prng, report, restartWorker, SEED, skip, startChaosWorker } from "./harness.js";
import { checkInvariants } from "./invariants.js";

const ROUNDS = 8;
const HOT = 2;
const POOL = ["--pool", `${TEST_GUEST_SPEC}:${HOT}+disk`];

describe("worker SIGKILL around pool claims and refills", { skip }, () => {
  let worker: WorkerProcess;
  /** Waits for the pool to be full again and returns what is still wrong after that. */
  const settled = async () => checkInvariants(worker, { pooled: HOT }, 120_000);

  before(async () => {
    worker = await startChaosWorker(POOL);
  });
  after(async () => {
    if (worker) await destroyWorker(worker);
  });

  test(`SIGKILL at random offsets of ${ROUNDS} claims and their refills; after each restart every invariant holds (seed ${SEED})`, {
    timeout: 600_000,
  }, async () => {
    const random = prng(SEED);
    const started = Date.now();
    assert.deepEqual((await settled()).problems, [], `the pool never filled:\n${logTail(worker)}`);
    const probe = await client(worker);
    let t = Date.now();
    const probed = await probe.createVm(guestSpec({ hostname: "probe" }), { waitReadyMs: 60_000 });
    const claimMs = Date.now() - t;
    await probe.deleteVm(probed);
    probe.close();
    const figures = { kills: 0, returned: 0, undone: 0, finishedUnanswered: 0, adopted: 0, claimMs, settleMs: [] as number[] };

    for (let round = 0; round < ROUNDS; round++) {
      assert.deepEqual((await settled()).problems, [], `before round ${round}:\n${logTail(worker)}`);
      const c = await client(worker);
      // At most one VM is kept across kills (adoption is exercised; the host has 2 cores).
      for (const vm of (await c.listVms()).slice(1)) await c.deleteVm(vm.id);
      const keptBefore = (await c.listVms()).map((vm) => vm.id);
      // Even rounds inside the claim, odd ones in the refill it starts (a restore takes about 0.4 s).
      const offset = Math.floor(round % 2 === 0 ? random() * claimMs : claimMs + random() * 800);
      const options = random() < 0.5 ? { secrets: [{ name: "token", value: new TextEncoder().encode(`round-${round}`) }] } : {};
      let outcome: string | undefined;
      const call = c
        .createVm(guestSpec({ hostname: `pk-${round}`, ...(round % 2 ? { group: "pk" } : {}) }), { ...options, waitReadyMs: 60_000 })
        .then(
          (id) => (outcome = id),
          (err: Error) => (outcome = `error: ${err.message}`),
        );
      await new Promise((resolve) => setTimeout(resolve, offset));
      await worker.stop("SIGKILL");
      figures.kills++;
      await call;
      c.close();

      worker = await restartWorker(worker, POOL);
      t = Date.now();
      const { problems, snap } = await settled();
      figures.settleMs.push(Date.now() - t);
      assert.deepEqual(problems, [], `round ${round} (killed ${offset} ms into a claim, outcome ${outcome}):\n${logTail(worker)}`);
      const created = outcome && !outcome.startsWith("error") ? outcome : undefined;
      if (created) {
        figures.returned++;
        const vm = snap.vms.find((entry) => entry.id === created);
        assert.equal(vm?.status, "running", `VM ${created} whose create returned: ${vm?.status} ${vm?.failure}`);
        assert.equal(vm?.origin, "pool");
      } else {
        // Killed before its answer left: the claim was undone, or it had finished (its answer
        // lost with the worker), and then its VM is whole, as any other: running, from the pool.
        const added = snap.vms.filter((vm) => !keptBefore.includes(vm.id));
        assert.ok(added.length <= 1, `one claim, ${added.length} VMs`);
        for (const vm of added) {
          assert.equal(vm.status, "running", `VM ${vm.id} of an unanswered claim: ${vm.status} ${vm.failure}`);
          assert.equal(vm.origin, "pool");
          assert.equal(vm.hostname, `pk-${round}`);
        }
        if (added.length === 0) figures.undone++;
        else figures.finishedUnanswered++;
      }
      for (const id of keptBefore) {
        assert.equal(snap.vms.find((vm) => vm.id === id)?.status, "running", `kept VM ${id} adopted`);
        figures.adopted++;
      }
    }

    const c = await client(worker);
    for (const vm of await c.listVms()) await c.deleteVm(vm.id);
    c.close();
    const final = await settled();
    assert.deepEqual(final.problems, []);
    assert.equal(final.snap.vms.length, 0);
    report("pool-kills", {
      ...figures,
      settleMs: { max: Math.max(...figures.settleMs), mean: Math.round(figures.settleMs.reduce((a, b) => a + b, 0) / ROUNDS) },
      seed: SEED,
      wallMs: Date.now() - started,
    });
  });
});
