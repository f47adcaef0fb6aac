// Warm pools (worker/core/pools.ts, claim.ts) on the fake backend: filling, claims, refills, the
// host's limits, snapshots on disk and their breakage, failed claims and restarts. The real thing
// (QEMU, nft, the agent in a guest): test/e2e/pools.test.ts.
import assert from "node:assert/strict";
import { existsSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import type { PoolConfig } from "../../worker/core/pools.js";
import { machineKey } from "../../worker/core/pools.js";
import { validateSpec } from "../../worker/core/spec.js";
import { WorkerError } from "../../worker/core/errors.js";
import { rejectsWith } from "../helpers/errors.js";
import { LIMITS, specInput, until, utf8, World } from "./fakes.js";

const machine = validateSpec(specInput({ hostname: "pooled" }), LIMITS);

function pool(hot: number, disk = false): PoolConfig {
  return { name: "guest", spec: machine, hot, disk };
}

async function ready(w: World, count: number): Promise<void> {
  await until(() => (w.service.poolStats()[0]?.ready ?? 0) === count, `${count} pooled VMs ready`);
}

test("a pool fills with paused VMs that nobody sees, parked off the bridge, counted against the host", async () => {
  const w = new World({ pools: [pool(2)], limits: { maxVms: 3, maxTotalCpu: 6 }, poolRetryMs: 10 });
  await w.service.startPools();
  await ready(w, 2);
  const pooled = w.host.live();
  assert.equal(pooled.length, 2);
  for (const vm of pooled) {
    assert.equal(vm.state, "paused", "a pooled VM waits paused");
    assert.ok(w.network.parked.has(vm.spec.id), "its TAP is parked");
    assert.ok(!vm.spec.cmdline.includes("pcr.ip") && !vm.spec.cmdline.includes("pcr.hostname"), vm.spec.cmdline);
    assert.equal(vm.spec.share, undefined, "no secrets share: secrets come through the agent at the claim");
    assert.equal(w.records.record(vm.spec.id)?.status, "creating", "a restart removes what is still pooled");
  }
  assert.deepEqual(await w.service.listVms(), []);
  assert.deepEqual((await w.service.events(0n, 100, 0)).events, [], "no events for pooled VMs");
  // 2 pooled + 1 create fill maxVms 3; a second create makes room by evicting one.
  await w.service.createVm(specInput({ hostname: "other", cpu: 2 }), {});
  const stats = w.service.poolStats()[0]!;
  assert.equal(stats.ready, 2);
  assert.equal(stats.memoryBytes, 2 * machine.memoryBytes);
  const other2 = await w.service.createVm(specInput({ hostname: "other2", cpu: 2 }), {});
  assert.equal(w.service.poolStats()[0]!.ready, 1, "the pool gave way to the create");
  // A create that would not fit even with the pools empty ends no pooled VM.
  // (2 + 2 + 3 vCPUs is over 6 even with the pool empty.)
  await rejectsWith(w.service.createVm(specInput({ hostname: "big", cpu: 3 }), {}), "RESOURCE_EXHAUSTED", /VMs/);
  assert.equal(w.service.poolStats()[0]!.ready, 1, "nothing evicted in vain");
  // Room again: the pool refills (at its next retry).
  await w.service.deleteVm(other2);
  await ready(w, 2);
  await w.service.closePools();
});

test("a claim: the pooled VM becomes the create's, personalised through its agent, and the pool refills", async () => {
  const w = new World({ pools: [pool(1)] });
  await w.service.startPools();
  await ready(w, 1);
  const [pooled] = w.host.live();
  const id = await w.service.createVm(specInput({ allowedDomains: ["example.com"], group: "g1" }), {
    secrets: [{ name: "token", value: utf8("s3cret") }],
  });
  assert.equal(id, pooled!.spec.id, "the pooled VM is the one handed out");
  assert.equal(pooled!.state, "running", "resumed");
  const view = await w.service.getVm(id);
  assert.equal(view.origin, "pool");
  assert.equal(view.hostname, "guest");
  assert.equal(view.group, "g1");
  assert.equal(view.status, "running");
  const attached = w.network.attached.get(id)!;
  assert.deepEqual(attached.allowedDomains, ["example.com"]);
  assert.deepEqual(attached.member, { group: "g1", hostname: "guest" });
  assert.equal(w.network.parked.has(id), false);
  const agent = w.agents.connections.get(id)!;
  // The pool warmed it first with a throwaway identity; the claim's is the last.
  assert.equal(agent.personalized[0]?.linkUp, true);
  const personal = agent.personalized.at(-1);
  assert.equal(personal?.hostname, "guest");
  assert.equal(personal?.address, `${attached.net.ip}/24`);
  assert.equal(personal?.mac, attached.net.mac);
  assert.equal(personal?.seed.length, 64);
  assert.match(personal?.machineId ?? "", /^[0-9a-f]{32}$/);
  assert.deepEqual(agent.files.get("/run/secrets/token"), { data: Buffer.from("s3cret"), mode: 0o400 });
  assert.equal(w.secrets.dirs.has(id), false, "no host-side copy of the secrets");
  assert.deepEqual(await w.events(id), ["creating", "running"]);
  const record = w.records.record(id)!;
  assert.equal(record.spec.hostname, "guest");
  assert.equal(record.origin, "pool");
  await ready(w, 1);
  assert.deepEqual(w.service.poolStats()[0]!.claims, { pool: 1, snapshot: 0, boot: 0 });
  await w.service.deleteVm(id);
  w.assertGone(id);
  await w.service.closePools();
  w.assertEmpty();
});

test("two clones get their own seed and machine id; a spec that differs boots", async () => {
  const w = new World({ pools: [pool(2)] });
  await w.service.startPools();
  await ready(w, 2);
  const a = await w.service.createVm(specInput({ hostname: "a" }), {});
  const b = await w.service.createVm(specInput({ hostname: "b" }), {});
  const [pa, pb] = [a, b].map((id) => w.agents.connections.get(id)!.personalized.at(-1)!);
  assert.notDeepEqual(Buffer.from(pa!.seed), Buffer.from(pb!.seed));
  assert.notEqual(pa!.machineId, pb!.machineId);
  const cold = await w.service.createVm(specInput({ hostname: "c", memoryBytes: 512n * 1024n * 1024n }), {});
  assert.equal((await w.service.getVm(cold)).origin, "boot");
  await w.service.closePools();
});

test("20 claims in a row from a pool of 2: every create succeeds, from the pool or by a boot", async () => {
  const w = new World({ pools: [pool(2)] });
  await w.service.startPools();
  await ready(w, 2);
  const origins: string[] = [];
  for (let i = 0; i < 20; i++) {
    const id = await w.service.createVm(specInput({ hostname: `n${i}` }), {});
    origins.push((await w.service.getVm(id)).origin!);
    await w.service.deleteVm(id);
  }
  const claims = w.service.poolStats()[0]!.claims;
  assert.equal(claims.pool + claims.boot, 20, JSON.stringify(claims));
  assert.ok(claims.pool >= 2, `the pool served some: ${origins.join(" ")}`);
  await w.service.closePools();
  w.assertEmpty();
});

for (const code of ["FAILED_PRECONDITION", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"] as const) {
  test(`a claim the guest's agent refuses (${code}) is undone, and the create boots instead`, async () => {
    const w = new World({ pools: [pool(1)] });
    await w.service.startPools();
    await ready(w, 1);
    const [pooled] = w.host.live();
    const agent = w.agents.connections.get(pooled!.spec.id)!;
    agent.personalize = async () => {
      throw new WorkerError(code, "agent: eth0: cannot set its MAC");
    };
    const id = await w.service.createVm(specInput({ hostname: "web-1.example" }), {});
    assert.equal((await w.service.getVm(id)).origin, "boot");
    assert.notEqual(pooled!.exit, undefined, "the refused pooled VM was ended");
    await w.service.deleteVm(id);
    await w.service.closePools();
    w.assertEmpty();
  });
}

test("a claim refused for the request's own reason (a taken group hostname) is not retried by a boot", async () => {
  const w = new World({ pools: [pool(2)] });
  await w.service.startPools();
  await ready(w, 2);
  await w.service.createVm(specInput({ hostname: "n1", group: "g" }), {});
  const launches = w.backend.launches;
  await rejectsWith(w.service.createVm(specInput({ hostname: "n1", group: "g" }), {}), "ALREADY_EXISTS", /n1/);
  assert.equal(w.backend.launches, launches, "no boot tried");
  await w.service.closePools();
});

test("a disk pool saves the machine once; hot VMs and claims past them restore it", async () => {
  const w = new World({ pools: [pool(1, true)] });
  await w.service.startPools();
  await until(() => w.service.poolStats()[0]!.snapshot === "ready" && w.service.poolStats()[0]!.ready === 1, "snapshot and hot VM");
  const files = readdirSync(w.snapshotsDir);
  assert.equal(files.length, 2, files.join(" "));
  assert.ok(
    files.some((file) => file.startsWith(`${machineKey(machine)}-fake-`) && file.endsWith(".state")),
    files.join(" "),
  );
  assert.equal(w.backend.restores, 1, "the hot VM was restored from the snapshot");
  const first = await w.service.createVm(specInput({ hostname: "one" }), {});
  const second = await w.service.createVm(specInput({ hostname: "two" }), {});
  assert.equal((await w.service.getVm(first)).origin, "pool");
  // The refill may have won the race for the second create; otherwise it restored at its claim.
  assert.ok(["pool", "snapshot"].includes((await w.service.getVm(second)).origin!));
  await w.service.closePools();
});

for (const [breakage, reason] of [
  ["rewritten since it was saved", /^restoring it failed: .*changed since it was saved/],
  ["the same size and mtime, but not loadable", /^restoring it failed: .*cannot load the snapshot/],
] as const) {
  test(`a snapshot ${breakage} is dropped and saved again; the claim boots meanwhile`, async () => {
    const w = new World({ pools: [pool(0, true)] });
    await w.service.startPools();
    await until(() => w.service.poolStats()[0]!.snapshot === "ready", "snapshot saved");
    const path = join(w.snapshotsDir, readdirSync(w.snapshotsDir).find((file) => file.endsWith(".state"))!);
    const { size, atime, mtimeMs } = statSync(path);
    writeFileSync(path, "X".repeat(size + (breakage.startsWith("rewritten") ? 1 : 0)), { flag: "r+" });
    if (!breakage.startsWith("rewritten")) utimesSync(path, atime, mtimeMs / 1000);
    const id = await w.service.createVm(specInput(), {});
    assert.equal((await w.service.getVm(id)).origin, "boot");
    await until(() => w.service.poolStats()[0]!.snapshot === "ready", "snapshot saved again");
    const stats = w.service.poolStats()[0]!;
    assert.equal(stats.rebuilds, 1);
    assert.match(stats.lastRebuild, reason);
    const restored = await w.service.createVm(specInput({ hostname: "again" }), {});
    assert.equal((await w.service.getVm(restored)).origin, "snapshot");
    await w.service.closePools();
  });
}

test("at start, a snapshot changed or deleted since it was saved is rebuilt, and strays are removed", async () => {
  const w = new World({ pools: [pool(0, true)] });
  await w.service.startPools();
  await until(() => w.service.poolStats()[0]!.snapshot === "ready", "snapshot saved");
  const state = readdirSync(w.snapshotsDir).find((file) => file.endsWith(".state"))!;
  writeFileSync(join(w.snapshotsDir, "stray.state.draft"), "half-written by a killed worker");
  rmSync(join(w.snapshotsDir, state));
  w.crashWorker();
  await w.startWorker();
  const removed = await w.service.startPools();
  assert.ok(removed.includes("snapshot:stray.state.draft"), removed.join(" "));
  await until(() => w.service.poolStats()[0]!.snapshot === "ready", "snapshot saved again");
  assert.equal(w.service.poolStats()[0]!.rebuilds, 1);
  assert.ok(existsSync(join(w.snapshotsDir, state)));
  await w.service.closePools();
});

test("a worker killed with VMs pooled and a claim half-done: the restart removes them all, then refills", async () => {
  const w = new World({ pools: [pool(2)] });
  await w.service.startPools();
  await ready(w, 2);
  const [first] = w.host.live();
  // The claim stops at its personalisation, as if the worker died there.
  w.agents.connections.get(first!.spec.id)!.personalize = () => new Promise(() => undefined);
  void w.service.createVm(specInput(), {}).catch(() => undefined);
  await until(() => w.network.attached.has(first!.spec.id), "the claim attached the network");
  w.crashWorker();
  const result = await w.startWorker();
  // Both pooled VMs, and the refill the claim had started.
  assert.ok(result.removed.includes(first!.spec.id) && result.removed.length >= 2, JSON.stringify(result));
  w.assertEmpty();
  await w.service.startPools();
  await ready(w, 2);
  await w.service.closePools();
  w.assertEmpty();
});
