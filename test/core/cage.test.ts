// The core's use of the cage port (FakeCage): every VMM launched with a cage of its own, the cage
// given back only once the VMM is gone, nothing left when a create fails, uids kept across a restart.
import assert from "node:assert/strict";
import { test } from "node:test";
import { failedPrecondition } from "../../worker/core/errors.js";
import type { PoolConfig } from "../../worker/core/pools.js";
import { validateSpec } from "../../worker/core/spec.js";
import { rejectsWith } from "../helpers/errors.js";
import { capturingLogger, LIMITS, specInput, until, World } from "./fakes.js";

test("each VMM is launched in its own cage: a uid of its own, its directory and secrets handed over, its store paths", async () => {
  const w = new World();
  const a = await w.service.createVm(specInput({ hostname: "a" }), { secrets: [{ name: "token", value: new TextEncoder().encode("s") }] });
  const b = await w.service.createVm(specInput({ hostname: "b" }), {});
  const [cageA, cageB] = [w.cage.caged.get(a)!, w.cage.caged.get(b)!];
  assert.notEqual(cageA.uid, cageB.uid);
  assert.equal(w.host.byId(a)!.spec.cage?.uid, cageA.uid, "the backend got the cage");
  assert.equal(cageA.request.vmDir, w.records.vmDir(a));
  assert.ok(cageA.request.shared, "the secrets share is handed to the VMM's uid");
  assert.equal(cageB.request.shared, undefined);
  assert.ok(
    cageA.request.storePaths.every((path) => /^\/nix\/store\/[^/]+$/.test(path)),
    cageA.request.storePaths.join(),
  );
  assert.equal(JSON.parse(w.records.saved.get(a)!).cage.uid, cageA.uid, "the record keeps the uid, for a restart");
  assert.ok(w.cage.sealed.has(a) && w.cage.sealed.has(b), "each VM's directory sealed once its VMM started");
});

test("a create that fails after its cage was made gives the cage back; a cage that cannot be made fails the create cleanly", async () => {
  const w = new World();
  w.backend.failNextLaunch(failedPrecondition("fake VMM refused to start"));
  await rejectsWith(w.service.createVm(specInput(), {}), "FAILED_PRECONDITION", /refused to start/);
  assert.equal(w.cage.caged.size, 0);
  assert.equal(w.cage.released.length, 1);
  w.cage.failNext = failedPrecondition("the cage helper is missing");
  await rejectsWith(w.service.createVm(specInput(), {}), "FAILED_PRECONDITION", /cage helper is missing/);
  w.assertEmpty();
  assert.equal(w.host.live().length, 0, "no VMM started without its cage");
});

test("a VMM that ends by itself gives its cage back; a restart keeps the uids of live VMs and removes the rest", async () => {
  const w = new World();
  const live = await w.service.createVm(specInput({ hostname: "live" }), {});
  const dies = await w.service.createVm(specInput({ hostname: "dies" }), {});
  const liveUid = w.cage.caged.get(live)!.uid;
  w.host.byId(dies)!.crash(); // the guest's VMM dies while the worker runs
  await until(() => !w.cage.caged.has(dies), "the dead VMM's cage released");
  const dead = await w.service.createVm(specInput({ hostname: "dead" }), {});
  w.crashWorker();
  w.host.byId(dead)!.crash(); // dies while no worker watches
  await w.startWorker();
  assert.deepEqual([...w.cage.caged.keys()], [live]);
  assert.equal(w.cage.caged.get(live)!.uid, liveUid);
  const next = await w.service.createVm(specInput({ hostname: "next" }), {});
  assert.notEqual(w.cage.caged.get(next)!.uid, liveUid, "a live VM's uid is not handed out again");
});

test("--no-cage: VMMs start uncaged, and every create says so in the log", async () => {
  const { logger, lines } = capturingLogger();
  const w = new World({ cage: false, logger });
  const id = await w.service.createVm(specInput(), {});
  await w.service.createVm(specInput({ hostname: "two" }), {});
  assert.equal(w.host.byId(id)!.spec.cage, undefined);
  assert.equal(JSON.parse(w.records.saved.get(id)!).cage, undefined);
  assert.equal(lines.filter((line) => /vmm runs uncaged/.test(String(line.msg))).length, 2);
});

test("pooled VMs are caged too; one discarded gives its cage back", async () => {
  const machine = validateSpec(specInput({ hostname: "pooled" }), LIMITS);
  const pool: PoolConfig = { name: "p", spec: machine, hot: 1, disk: false };
  const w = new World({ pools: [pool] });
  await w.service.startPools();
  await until(() => w.service.poolStats()[0]!.ready === 1, "the pool filled");
  const pooled = w.host.live()[0]!;
  assert.ok(pooled.spec.cage, "caged while pooled");
  const id = await w.service.createVm(specInput({ hostname: "claimed" }), {});
  assert.equal(w.host.byId(id), pooled, "claimed");
  assert.ok(w.cage.caged.has(id));
  await w.service.closePools();
  await w.service.deleteVm(id);
  await until(() => w.cage.caged.size === 0, "every cage released");
});
