// The worker is SIGKILLed at random points of creates (and of a few deletes), restarted on the
// same state, and every invariant must hold: VMMs that still run are re-adopted, interrupted
// creates are undone, and nothing (process, TAP, nft object, lease, directory) is left behind.
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { after, before, describe, test } from "node:test";
import { isLive } from "../../worker/core/lifecycle.js";
import { destroyWorker, type WorkerProcess } from "../helpers/worker-process.js";
import { client, guestSpec, logTail, prng, report, restartWorker, SEED, skip, startChaosWorker, waitFor } from "./harness.js";
import { checkInvariants, vmmProcesses } from "./invariants.js";

const CREATES = 30;
const DELETES = 6;
/** At most this many VMs stay alive between rounds (the host shares 2 cores). */
const KEEP = 2;

describe("worker SIGKILL at random points", { skip }, () => {
  let worker: WorkerProcess;

  before(async () => {
    worker = await startChaosWorker();
  });

  after(async () => {
    if (worker) await destroyWorker(worker);
  });

  test(`SIGKILL at random offsets during ${CREATES} creates and ${DELETES} deletes, restart, every invariant holds (seed ${SEED})`, {
    timeout: 600_000,
  }, async () => {
    const random = prng(SEED);
    const started = Date.now();
    // How long a create takes here, to spread the kill points over all of its steps.
    const probe = await client(worker);
    let t = Date.now();
    const warm = await probe.createVm(guestSpec());
    const createMs = Date.now() - t;
    await probe.deleteVm(warm);
    probe.close();

    const figures = {
      kills: 0,
      createsKilled: CREATES,
      deletesKilled: DELETES,
      completedBeforeKill: 0,
      rolledBack: 0,
      adopted: 0,
      leaks: 0,
      createMs,
      restartMs: [] as number[],
    };
    const killedPids = new Set<number>();
    // nft transaction files of a worker killed mid-apply: the next worker removes them.
    const staleFiles = () => readdirSync(tmpdir()).filter((name) => killedPids.has(Number(/^pcr-nft-(\d+)-/.exec(name)?.[1])));
    const plan = [...Array(CREATES).fill("create"), ...Array(DELETES).fill("delete")] as ("create" | "delete")[];
    for (let i = plan.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [plan[i], plan[j]] = [plan[j]!, plan[i]!];
    }

    for (const [round, kind] of plan.entries()) {
      const c = await client(worker);
      let before = await c.listVms();
      // Keep a VM or two running across kills so adoption is exercised, but never more than KEEP.
      const live = () => before.filter((vm) => isLive(vm.status)).length;
      while ((kind === "create" && live() >= KEEP) || before.length > KEEP) {
        await c.deleteVm(before[0]!.id);
        before = await c.listVms();
      }
      if (kind === "delete" && before.length === 0) {
        await c.createVm(guestSpec());
        before = await c.listVms();
      }
      const runningBefore = before.filter((vm) => vm.status === "running").map((vm) => vm.id);
      const victim = kind === "delete" ? before[before.length - 1]!.id : undefined;
      const offset = Math.floor(random() * createMs * 1.5);
      let outcome: string | undefined;
      const options = random() < 0.5 ? { secrets: [{ name: "token", value: new TextEncoder().encode(`round-${round}`) }] } : {};
      // Half the creates join a group, so its objects are made and removed under the kills too.
      const spec = guestSpec({ hostname: `kr-${round}`, ...(round % 2 ? { group: "kr" } : {}) });
      const call = (victim ? c.deleteVm(victim).then(() => victim) : c.createVm(spec, options)).then(
        (id) => (outcome = id),
        (err: Error) => (outcome = `error: ${err.message}`),
      );
      await new Promise((resolve) => setTimeout(resolve, offset));
      killedPids.add(worker.pid);
      await worker.stop("SIGKILL");
      figures.kills++;
      await call;
      c.close();
      if (kind === "create" && outcome && !outcome.startsWith("error")) figures.completedBeforeKill++;

      t = Date.now();
      worker = await restartWorker(worker);
      figures.restartMs.push(Date.now() - t);
      const { problems, snap } = await checkInvariants(worker);
      problems.push(...staleFiles().map((name) => `leaked nft transaction file ${name}`));
      figures.leaks += problems.length;
      assert.deepEqual(problems, [], `round ${round} (${kind} killed after ${offset} ms, outcome ${outcome}):\n${logTail(worker)}`);

      // VMs running before the kill whose VMM survived are running again, adopted.
      for (const id of runningBefore) {
        if (id === victim) continue;
        const vm = snap.vms.find((entry) => entry.id === id);
        assert.ok(vm, `running VM ${id} lost by the restart`);
        assert.equal(vm.status, "running", `VM ${id} after restart: ${vm.failure}`);
        figures.adopted++;
      }
      const created = kind === "create" && outcome && !outcome.startsWith("error") ? outcome : undefined;
      if (created)
        assert.ok(
          snap.vms.some((vm) => vm.id === created),
          `VM ${created} whose create returned was lost`,
        );
      if (kind === "create" && !created) {
        const added = snap.vms.filter((vm) => !before.some((entry) => entry.id === vm.id));
        if (added.length === 0) figures.rolledBack++;
      }
    }

    // The adopted VMMs can still be stopped by the restarted worker; then nothing at all is left.
    const c = await client(worker);
    for (const vm of await c.listVms()) await c.deleteVm(vm.id);
    c.close();
    await waitFor("no VMM processes", 5000, () => (vmmProcesses(worker).live.size === 0 ? true : undefined));
    const final = await checkInvariants(worker);
    figures.leaks += final.problems.length;
    assert.deepEqual(final.problems, []);
    assert.equal(final.snap.vms.length, 0);
    report("kill-restart", {
      ...figures,
      restartMs: {
        max: Math.max(...figures.restartMs),
        mean: Math.round(figures.restartMs.reduce((a, b) => a + b, 0) / figures.restartMs.length),
      },
      seed: SEED,
      wallMs: Date.now() - started,
    });
  });
});
