// WorkerService on the fake VMM backend when things go wrong: a create step failing (each port in
// turn), deletes and deadlines racing a create, and a worker restart over the same records and host.
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import pino from "pino";
import type { CallerInfo } from "../../worker/core/api.js";
import { failedPrecondition, WorkerError } from "../../worker/core/errors.js";
import type { VmRecord } from "../../worker/ports/index.js";
import { WorkerService } from "../../worker/core/service.js";
import type { VmNetwork } from "../../worker/ports/index.js";
import { createFileRecords } from "../../worker/state/vm-records.js";
import { createFakeBackend, FakeVmmHost } from "../../worker/vmm/fake/index.js";
import { specHash, validateSpec } from "../../worker/core/spec.js";
import { rejectsWith } from "../helpers/errors.js";
import { FakeNetwork, FakeSecrets, FakeStore, LIMITS, specInput, TIMEOUTS, until, utf8, World } from "./fakes.js";

// === rollback, deletes during a create, call deadlines ===========================================
// A create whose step fails is rolled back whole: the error names the step, and no record, network
// attachment, secret, VMM or open boot file is left, and the reservation is released.

interface Case {
  name: string;
  arrange(w: World): void;
  code: string;
  message: RegExp;
  /** The VM got as far as registered (events creating → failed). */
  registered: boolean;
  /** A VMM was started (and must be dead now). */
  launched: boolean;
  /** Events other than creating → failed. */
  events?: string[];
}

const CASES: Case[] = [
  {
    name: "store fetch",
    arrange: (w) => w.store.failures.failNext("ensurePaths"),
    code: "INTERNAL",
    message: /^fetch store paths: injected ensurePaths failure$/,
    registered: false,
    launched: false,
  },
  {
    name: "kernel check",
    arrange: (w) => w.store.failures.failNext("openBootFile", failedPrecondition("kernel is outside the closure")),
    code: "FAILED_PRECONDITION",
    message: /^check boot files: kernel is outside the closure$/,
    registered: false,
    launched: false,
  },
  {
    name: "initrd check (kernel already open)",
    arrange: (w) => w.store.failures.failNext("openBootFile", undefined, 1),
    code: "INTERNAL",
    message: /^check boot files: injected/,
    registered: false,
    launched: false,
  },
  {
    name: "vm directory",
    arrange: (w) => w.records.failures.failNext("createDir"),
    code: "INTERNAL",
    message: /^create vm directory: injected createDir failure$/,
    registered: false,
    launched: false,
  },
  {
    name: "first save",
    arrange: (w) => w.records.failures.failNext("save"),
    code: "INTERNAL",
    message: /^save state: injected save failure$/,
    registered: false,
    launched: false,
  },
  {
    name: "secrets",
    arrange: (w) => w.secrets.failures.failNext("write"),
    code: "INTERNAL",
    message: /^write secrets: injected write failure$/,
    registered: true,
    launched: false,
  },
  {
    name: "network",
    arrange: (w) => w.network.failures.failNext("attach", new WorkerError("RESOURCE_EXHAUSTED", "no free address")),
    code: "RESOURCE_EXHAUSTED",
    message: /^attach network: no free address$/,
    registered: true,
    launched: false,
  },
  {
    name: "vmm launch",
    arrange: (w) => w.backend.failNextLaunch(),
    code: "FAILED_PRECONDITION",
    message: /^start vmm: fake VMM refused to start$/,
    registered: true,
    launched: false,
  },
  {
    name: "save after launch",
    arrange: (w) => w.records.failures.failNext("save", undefined, 1),
    code: "INTERNAL",
    message: /^save state: injected save failure$/,
    registered: true,
    launched: true,
  },
  {
    name: "vmm exits during boot",
    arrange: (w) => w.backend.nextLaunch({ exitDuringBoot: { code: 1, message: "could not load kernel" } }),
    code: "FAILED_PRECONDITION",
    message: /^wait for vmm running: .*exited with code 1: could not load kernel$/,
    registered: true,
    launched: true,
  },
  {
    name: "boot timeout",
    arrange: (w) => w.backend.nextLaunch({ boot: "manual" }),
    code: "DEADLINE_EXCEEDED",
    message: /^wait for vmm running: .*within 30 ms$/,
    registered: true,
    launched: true,
  },
  {
    name: "save of running",
    arrange: (w) => w.records.failures.failNext("save", undefined, 2),
    code: "INTERNAL",
    message: /^save state: injected save failure$/,
    registered: true,
    launched: true,
    // A transition shows its status and emits its event before it saves; this save fails, and the rollback reports the end.
    events: ["creating", "running", "failed"],
  },
];

/** A caller whose call deadline is the controller's abort. */
function caller(controller: AbortController): CallerInfo {
  return { connection: "test", requestId: "r1", signal: controller.signal };
}

for (const c of CASES) {
  test(`rollback when ${c.name} fails`, async () => {
    // One VM at most: the create after the failure proves the reservation was released.
    const w = new World({ limits: { maxVms: 1 }, timeouts: { bootMs: 30 } });
    c.arrange(w);
    const secrets = [{ name: "token", value: utf8("x") }];
    await rejectsWith(w.service.createVm(specInput({ allowedDomains: ["example.com"] }), { secrets }), c.code, c.message);
    w.assertEmpty();
    assert.deepEqual(await w.service.listVms(), []);
    assert.equal(w.host.all().length, c.launched ? 1 : 0, c.launched ? "the VMM was started" : "no VMM was started");
    if (c.launched) assert.ok(w.host.all()[0]!.exit, "and is dead");
    const events = (await w.service.events(0n, 100, 0)).events;
    assert.deepEqual(
      events.map((event) => event.status),
      c.events ?? (c.registered ? ["creating", "failed"] : []),
    );
    if (c.registered) assert.equal(events.at(-1)!.reason, "create rolled back");

    const id = await w.service.createVm(specInput(), {});
    assert.equal((await w.service.getVm(id)).status, "running", "the next create runs: the reservation was released");
  });
}

test("an undo that fails is logged and the rest of the rollback still runs", async () => {
  const w = new World();
  w.backend.failNextLaunch();
  w.network.failures.failNext("detach");
  await rejectsWith(
    w.service.createVm(specInput(), { secrets: [{ name: "token", value: utf8("x") }] }),
    "FAILED_PRECONDITION",
    /^start vmm:/,
  );
  assert.equal(w.network.attached.size, 1, "the attachment whose detach failed is what is left");
  assert.equal(w.secrets.dirs.size, 0, "earlier undos still ran");
  assert.equal(w.records.dirs.size, 0);
});

test("delete during create: waits for the create, then deletes the running VM", async () => {
  const w = new World();
  w.backend.nextLaunch({ boot: "manual" });
  const creating = w.service.createVm(specInput(), {});
  const vm = await w.host.nextSpawn();
  const [listed] = await w.service.listVms();
  assert.equal(listed?.status, "creating");
  const id = listed!.id;
  let deleted = false;
  const deleting = w.service.deleteVm(id).then(() => (deleted = true));
  for (let turn = 0; turn < 20; turn++) await new Promise((resolve) => setImmediate(resolve));
  assert.equal(deleted, false, "the delete waits for the create");
  assert.equal(vm.exit, undefined);

  vm.boot();
  assert.equal(await creating, id, "the create still succeeds");
  await deleting;
  w.assertEmpty();
  assert.deepEqual(await w.events(id), ["creating", "running", "stopping", "stopped"]);
});

test("delete during a create that then fails: NOT_FOUND, nothing left", async () => {
  const w = new World();
  w.backend.nextLaunch({ boot: "manual" });
  const creating = w.service.createVm(specInput(), {});
  const vm = await w.host.nextSpawn();
  const id = (await w.service.listVms())[0]!.id;
  const deleting = w.service.deleteVm(id);
  vm.crash({ code: 1, message: "boom" });
  await rejectsWith(creating, "FAILED_PRECONDITION", /^wait for vmm running: .*boom/);
  await rejectsWith(deleting, "NOT_FOUND", /not found/);
  w.assertEmpty();
});

test("call deadline: passed before the create starts, nothing is done", async () => {
  const w = new World();
  const controller = new AbortController();
  controller.abort();
  await rejectsWith(
    w.service.createVm(specInput(), {}, caller(controller)),
    "DEADLINE_EXCEEDED",
    /^fetch store paths: the call's deadline passed$/,
  );
  assert.equal(w.store.failures.count("ensurePaths"), 0);
  w.assertEmpty();
});

test("call deadline: passes while the guest boots, the next step does not start and all is undone", async () => {
  const w = new World();
  w.backend.nextLaunch({ boot: "manual" });
  const controller = new AbortController();
  const creating = w.service.createVm(specInput(), {}, caller(controller));
  const vm = await w.host.nextSpawn();
  controller.abort();
  vm.boot();
  await rejectsWith(creating, "DEADLINE_EXCEEDED", /^seal vm directory: the call's deadline passed$/);
  assert.equal(vm.exit?.signal, "SIGKILL");
  w.assertEmpty();
});

test("call deadline: passes as the create finishes, the VM is deleted since the caller never learns its id", async () => {
  const w = new World();
  const controller = new AbortController();
  w.records.onSave = (record) => {
    if (record.status === "running") controller.abort();
  };
  await rejectsWith(w.service.createVm(specInput(), {}, caller(controller)), "DEADLINE_EXCEEDED", /deadline passed/);
  w.records.onSave = undefined;
  w.assertEmpty();
  assert.deepEqual(await w.service.listVms(), []);
  const id = w.host.all()[0]!.spec.id;
  assert.deepEqual(await w.events(id), ["creating", "running", "stopping", "stopped"]);
});

test("concurrent creates: each its own VM, ids unique, all running", async () => {
  const w = new World();
  const ids = await Promise.all(Array.from({ length: 8 }, () => w.service.createVm(specInput(), {})));
  assert.equal(new Set(ids).size, 8);
  await until(async () => (await w.service.listVms()).every((vm) => vm.status === "running"), "all running");
  await Promise.all(ids.map((id) => w.service.deleteVm(id)));
  w.assertEmpty();
});

// === recovery after a worker restart =============================================================
// A worker restart: a new WorkerService over the same records and the same (fake) host adopts the
// VMMs that live, marks dead ones failed, finishes interrupted creates and deletes, and removes
// what no record accounts for.

/** A record as a worker that died mid-operation left it, with a live VMM of its own. */
async function leftBehind(w: World, id: string, status: VmRecord["status"]): Promise<number> {
  const spec = validateSpec(specInput(), LIMITS);
  const vmDir = await w.records.createDir(id);
  const handle = await launchBare(w, id, vmDir);
  await handle.waitRunning(1000);
  const record: VmRecord = {
    id,
    spec,
    specHash: specHash(spec),
    backend: w.backend.name,
    status,
    failure: "",
    createdAtMs: Date.now(),
    secretNames: [],
    vmm: handle.record,
  };
  await w.records.save(record);
  w.secrets.dirs.set(id, new Map());
  w.network.attached.set(id, { net: fakeNet(`pcr-${id}`, "10.99.1.1"), allowedDomains: [] });
  return handle.record.pid;
}

/** A VMM started straight through the backend, as a worker does before it records anything. */
function launchBare(w: World, id: string, vmDir: string) {
  return w.backend.launch({
    id,
    vmDir,
    kernel: "/k",
    cmdline: "",
    cpu: 1,
    memoryBytes: 256 * 1024 * 1024,
    consolePath: `${vmDir}/console.log`,
  });
}

function fakeNet(tap: string, ip: string): VmNetwork {
  return { tap, mac: "52:54:00:00:01:01", ip, prefixLength: 24, gateway: "10.99.0.1", dns: "10.99.0.1" };
}

test("restart: live VMMs adopted, dead ones failed, interrupted operations finished, orphans removed", async () => {
  const w = new World();
  const alive = await w.service.createVm(specInput({ hostname: "alive" }), { secrets: [{ name: "a", value: utf8("1") }] });
  const dies = await w.service.createVm(specInput({ hostname: "dies" }), { secrets: [{ name: "b", value: utf8("2") }] });
  const paused = await w.service.createVm(specInput({ hostname: "paused" }), {});
  const reused = await w.service.createVm(specInput({ hostname: "reused" }), {});
  await w.service.injectFault(paused, { kind: "pause" });
  const stopped = await w.service.createVm(specInput({ hostname: "stopped" }), {});
  w.host.byId(stopped)!.powerOffGuest();
  await until(async () => (await w.service.getVm(stopped)).status === "stopped", "stopped");

  // Left by a worker killed at the wrong moment.
  const creatingPid = await leftBehind(w, "vm-creating", "creating");
  const stoppingPid = await leftBehind(w, "vm-stopping", "stopping");
  const stray = await launchBare(w, "vm-stray", "/fake/vms/vm-stray");
  const outsider = await launchBare(w, "vm-outsider", "/elsewhere/vm-outsider");
  w.records.dirs.add("vm-junk"); // a directory without a readable record
  w.network.attached.set("vm-orphan", { net: fakeNet("pcr-orphan", "10.99.2.2"), allowedDomains: [] });
  w.secrets.dirs.set("vm-orphan", new Map());

  w.crashWorker();
  w.host.byId(dies)!.crash({ signal: "SIGKILL" }); // while no worker watches
  // A pid reused by another process: the start time no longer matches.
  const saved = w.records.record(reused)!;
  w.records.saved.set(reused, JSON.stringify({ ...saved, vmm: { ...saved.vmm!, startTime: "1" } }));

  const result = await w.startWorker();
  assert.deepEqual(result.adopted.sort(), [alive, paused].sort());
  assert.deepEqual(result.failed.sort(), [dies, reused].sort());
  assert.deepEqual(result.removed.sort(), ["vm-creating", "vm-junk", "vm-stopping"]);
  for (const orphan of [`vmm:${stray.record.pid}`, "tap:vm-orphan", "secrets:vm-orphan"]) {
    assert.ok(result.orphans.includes(orphan), `${orphan} in ${result.orphans}`);
  }

  // Adopted VMs run on, with their network and secrets.
  const views = new Map((await w.service.listVms()).map((view) => [view.id, view]));
  assert.equal(views.get(alive)?.status, "running");
  assert.equal(views.get(paused)?.status, "paused");
  assert.equal(views.get(stopped)?.status, "stopped", "a stopped VM stays listed until deleted");
  assert.ok(w.network.attached.has(alive) && w.network.attached.has(paused));
  assert.equal(w.secrets.dirs.get(alive)?.get("a"), "1");
  assert.equal(w.network.inits, 1);
  assert.equal(w.host.byId(alive)!.exit, undefined);

  // Dead ones failed, and released.
  for (const id of [dies, reused]) {
    assert.equal(views.get(id)?.status, "failed");
    assert.equal(views.get(id)?.failure, "the VMM exited while the worker was down");
    assert.equal(w.records.record(id)?.status, "failed");
    assert.equal(w.network.attached.has(id), false);
  }
  assert.equal(w.secrets.dirs.has(dies), false);

  // Interrupted creates and deletes are finished: their VMMs dead, everything of theirs gone.
  for (const [id, pid] of [
    ["vm-creating", creatingPid],
    ["vm-stopping", stoppingPid],
  ] as const) {
    assert.equal(w.host.process(pid)!.exit?.signal, "SIGKILL");
    w.assertGone(id);
  }
  assert.equal(w.records.dirs.has("vm-junk"), false);
  assert.equal(w.host.process(stray.record.pid)!.exit?.signal, "SIGKILL", "the unrecorded VMM in our directories is killed");
  assert.equal(w.host.process(outsider.record.pid)!.exit, undefined, "a VMM outside our directories is left alone");
  assert.equal(w.network.attached.has("vm-orphan"), false);
  assert.equal(w.secrets.dirs.has("vm-orphan"), false);

  // The new worker watches the adopted VMMs and can stop them.
  w.host.byId(paused)!.crash({ code: 3, message: "gone" });
  await until(async () => (await w.service.getVm(paused)).status === "failed", "adopted VMM's exit seen");
  assert.match((await w.service.getVm(paused)).failure, /^exited with code 3: gone/);
  await w.service.deleteVm(alive);
  assert.equal(w.host.byId(alive)!.exit?.code, 0, "the adopted guest powered off on the button");
  w.assertGone(alive);
  await w.service.stopAll();
  assert.deepEqual(
    w.host.live().map((vm) => vm.spec.id),
    ["vm-outsider"],
  );
  await outsider.kill();
  w.assertEmpty();
});

test("restart: recovery replays the VMs' own transitions, with their events and saves", async () => {
  const w = new World();
  const alive = await w.service.createVm(specInput(), {});
  const dies = await w.service.createVm(specInput(), { secrets: [{ name: "a", value: utf8("1") }] });
  await leftBehind(w, "vm-creating", "creating");
  await leftBehind(w, "vm-stopping", "stopping");
  w.crashWorker();
  w.host.byId(dies)!.crash({ signal: "SIGKILL" });
  await w.startWorker();

  const events = (await w.service.events(0n, 100, 0)).events.map((event) => [event.vmId, event.status, event.reason]);
  assert.deepEqual(
    events.sort(),
    [
      [dies, "failed", "the VMM exited while the worker was down"],
      ["vm-creating", "failed", "create interrupted by a worker restart"],
      ["vm-stopping", "stopped", "deleted"],
    ].sort(),
    "the new worker's events: no event for the adopted VM, one per finished transition",
  );
  assert.equal(w.records.record(dies)?.status, "failed", "saved as any transition is");
  assert.equal(w.secrets.dirs.has(dies), false, "and released as any transition does");
  assert.equal((await w.service.getVm(alive)).status, "running");
});

test("restart: a TTL that ran out while the worker was down deletes the VM once adopted", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), { ttlSeconds: 3600 });
  const record = w.records.record(id)!;
  w.crashWorker();
  w.records.saved.set(id, JSON.stringify({ ...record, expiresAtMs: Date.now() - 1 }));
  const result = await w.startWorker();
  assert.deepEqual(result.adopted, [id]);
  await until(() => !w.records.saved.has(id), "expired VM deleted");
  w.assertGone(id);
});

test("restart: faults a previous worker left are removed and not listed", async () => {
  const w = new World({ cage: false });
  const id = await w.service.createVm(specInput({ dataDiskBytes: BigInt(16 * 1024 * 1024) }), {});
  await w.service.injectFault(id, { kind: "diskErrors", op: "write", errno: 5, afterOps: 0, probabilityPercent: 100 });
  await w.service.injectFault(id, { kind: "partition", cidrs: [] });
  await w.service.injectFault(id, { kind: "cpuThrottle", percent: 50 });
  const result = await w.restart();
  for (const prefix of ["disk-errors:", "net-fault:", "cpu:"]) {
    assert.ok(
      result.orphans.some((orphan) => orphan.startsWith(prefix)),
      `${prefix} in ${result.orphans}`,
    );
  }
  assert.equal(w.host.byId(id)!.diskErrors.size, 0);
  assert.equal(w.netFaults.active.size, 0);
  assert.equal(w.cpu.active.size, 0);
  assert.deepEqual(await w.service.listFaults(id), []);
  assert.equal((await w.service.getVm(id)).status, "running");
});

test("restart: a record of another backend is not adopted: failed, its VMM killed as a stray", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), {});
  const record = w.records.record(id)!;
  w.crashWorker();
  w.records.saved.set(id, JSON.stringify({ ...record, backend: "qemu" }));
  const result = await w.startWorker();
  assert.deepEqual(result.failed, [id]);
  // Its VMM, though alive, belongs to no record this backend can adopt: a stray in our directories.
  assert.ok(result.orphans.includes(`vmm:${record.vmm!.pid}`));
  assert.ok(w.host.byId(id)!.exit);
  await rejectsWith(w.service.injectFault(id, { kind: "pause" }), "FAILED_PRECONDITION", /is failed/);
});

test("restart over real records on disk (createFileRecords): the same adoption, and the directory ends empty", async (t) => {
  const stateDir = await mkdtemp(join(tmpdir(), "pcr-core-records-"));
  t.after(() => rm(stateDir, { recursive: true, force: true }));
  const host = new FakeVmmHost();
  const network = new FakeNetwork();
  const secrets = new FakeSecrets();
  const start = async () => {
    const records = await createFileRecords({ stateDir });
    const backend = createFakeBackend({ host });
    const service = new WorkerService({
      backend,
      network,
      store: new FakeStore(),
      secrets,
      records,
      consoles: records,
      logger: pino({ level: "silent" }),
      limits: LIMITS,
      timeouts: TIMEOUTS,
      strayRoots: [records.vmsDir],
    });
    return { backend, service, records };
  };

  const first = await start();
  const alive = await first.service.createVm(specInput(), {});
  const dies = await first.service.createVm(specInput(), {});
  first.service.detachAll();
  first.backend.disconnect();
  host.byId(dies)!.crash();

  const second = await start();
  const result = await second.service.recover();
  assert.deepEqual(result.adopted, [alive]);
  assert.deepEqual(result.failed, [dies]);
  assert.equal((await second.service.getVm(alive)).status, "running");
  assert.equal((await second.records.loadAll()).records.find((record) => record.id === dies)?.status, "failed", "the failure is on disk");
  await second.service.stopAll();
  assert.deepEqual(await readdir(second.records.vmsDir), []);
  assert.deepEqual(host.live(), []);
  assert.equal(network.attached.size, 0);
});
