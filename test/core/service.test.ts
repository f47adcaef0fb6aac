// WorkerService (worker/core/service.ts) driven on the fake VMM backend and the in-memory ports of
// fakes.ts: the lifecycle, host limits and TTL, fault injection. Failures and restarts: service-failures.test.ts.
import assert from "node:assert/strict";
import { test } from "node:test";
import { MIB } from "../../worker/core/spec.js";
import { rejectsWith } from "../helpers/errors.js";
import { specInput, until, utf8, World } from "./fakes.js";

// === lifecycle ===================================================================================
// A VM's life from create to delete, and the ways it ends on its own (the guest powers off, the VMM dies).

test("create → running → delete: what each port was asked, the view, events, and nothing left", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput({ allowedDomains: ["example.com"] }), {
    secrets: [{ name: "token", value: utf8("s3cret") }],
  });
  assert.match(id, /^vm-[0-9a-f]{16}$/);

  const vm = w.host.byId(id)!;
  assert.ok(vm, "a VMM was launched");
  assert.equal(vm.state, "running");
  const net = w.network.attached.get(id)!;
  assert.deepEqual(net.allowedDomains, ["example.com"]);
  assert.equal(vm.spec.vmDir, w.records.vmDir(id));
  assert.equal(vm.spec.consolePath, w.records.consolePath(id));
  assert.deepEqual(vm.spec.net, { tap: net.net.tap, mac: net.net.mac });
  assert.deepEqual(vm.spec.share, { tag: "secrets", hostDir: `/fake/secrets/${id}` });
  for (const part of ["console=ttyS0", "pcr.hostname=guest", `pcr.ip=${net.net.ip}/24`, "pcr.share=9p"]) {
    assert.ok(vm.spec.cmdline.split(" ").includes(part), `cmdline has ${part}: ${vm.spec.cmdline}`);
  }
  assert.ok(vm.spec.bootFds?.kernel && vm.spec.bootFds.initrd && vm.spec.bootFds.image, "boot files handed over as descriptors");
  assert.equal(w.store.open.size, 0, "the worker closed its boot files once the VMM had them");
  assert.equal(w.secrets.dirs.get(id)?.get("token"), "s3cret");

  const record = w.records.record(id)!;
  assert.equal(record.status, "running");
  assert.equal(record.backend, "fake");
  assert.equal(record.vmm?.pid, vm.pid);
  assert.equal(record.vmm?.startTime, vm.startTime);
  assert.deepEqual(record.secretNames, ["token"]);
  assert.ok(!w.records.saved.get(id)!.includes("s3cret"), "no secret value in the record");
  assert.ok(record.runningSinceMs, "running since is recorded");

  const view = await w.service.getVm(id);
  assert.equal(view.status, "running");
  assert.equal(view.backend, "fake");
  assert.equal(view.ip, net.net.ip);
  assert.equal(view.hostname, "guest");
  assert.equal(view.counters.blockReadBytes, 64n * 1024n, "getVm samples the VMM's counters: the guest read its root disk");
  assert.deepEqual(
    (await w.service.listVms()).map((entry) => entry.id),
    [id],
  );

  vm.addIo({ writeBytes: 4096n, writeOps: 1n });
  w.network.counterValues.set(id, { net: { rxBytes: 10n, txBytes: 20n, rxPackets: 1n, txPackets: 2n }, egressDrops: 3n });
  await w.service.sampleAllCounters();
  const [listed] = await w.service.listVms();
  assert.equal(listed!.counters.blockWriteBytes, 4096n);
  assert.equal(listed!.counters.netTxBytes, 20n);
  assert.equal(listed!.egressDrops, 3n);

  const console = await w.service.read(id, 0n, 4096);
  assert.match(Buffer.from(console.data).toString(), /fake-guest: ready/);

  await w.service.deleteVm(id);
  assert.deepEqual(
    vm.exit,
    { code: 0, signal: null, description: "exited with code 0 (guest powered off)" },
    "the guest powered off on the button",
  );
  assert.equal(vm.powerButtonPresses, 1);
  w.assertGone(id);
  assert.deepEqual(await w.service.listVms(), []);
  assert.deepEqual(await w.events(id), ["creating", "running", "stopping", "stopped"]);
  await rejectsWith(w.service.getVm(id), "NOT_FOUND", /not found/);
  await rejectsWith(w.service.deleteVm(id), "NOT_FOUND", /not found/);
});

test("a paused VM is killed at once on delete; a guest that ignores the button is killed after the grace", async () => {
  const w = new World({ timeouts: { stopGraceMs: 20 } });
  const paused = await w.service.createVm(specInput(), {});
  await w.service.injectFault(paused, { kind: "pause" });
  await w.service.deleteVm(paused);
  assert.equal(w.host.byId(paused)!.powerButtonPresses, 0, "no power button for a paused guest");
  assert.equal(w.host.byId(paused)!.exit?.signal, "SIGKILL");
  w.assertGone(paused);

  w.backend.nextLaunch({ ignoresPowerButton: true });
  const deaf = await w.service.createVm(specInput(), {});
  await w.service.deleteVm(deaf);
  assert.equal(w.host.byId(deaf)!.powerButtonPresses, 1);
  assert.equal(w.host.byId(deaf)!.exit?.signal, "SIGKILL", "killed once the grace was over");
  w.assertGone(deaf);
});

test("the guest powers itself off: stopped, network and secrets released, record kept until delete", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), { secrets: [{ name: "a", value: utf8("1") }] });
  w.host.byId(id)!.powerOffGuest();
  await until(async () => (await w.service.getVm(id)).status === "stopped", "stopped");
  const view = await w.service.getVm(id);
  assert.equal(view.failure, "");
  assert.equal(view.uptimeMs, 0n);
  assert.equal(w.network.attached.has(id), false, "network released");
  assert.equal(w.secrets.dirs.has(id), false, "secrets wiped");
  assert.equal(w.records.record(id)?.status, "stopped", "the stopped status is saved");
  const events = (await w.service.events(0n, 100, 0)).events.filter((event) => event.vmId === id);
  assert.deepEqual(events.map((event) => [event.status, event.reason]).at(-1), ["stopped", "the guest powered off"]);
  await rejectsWith(w.service.injectFault(id, { kind: "pause" }), "FAILED_PRECONDITION", /is stopped/);

  await w.service.deleteVm(id);
  w.assertGone(id);
  assert.deepEqual(await w.events(id), ["creating", "running", "stopped"], "a delete of a stopped VM emits nothing more");
});

test("the VMM dies: failed, with the exit and the last console lines as the reason", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), { secrets: [{ name: "a", value: utf8("1") }] });
  const vm = w.host.byId(id)!;
  vm.print("Kernel panic - not syncing: oops\n");
  vm.crash({ signal: "SIGSEGV" });
  await until(async () => (await w.service.getVm(id)).status === "failed", "failed");
  const view = await w.service.getVm(id);
  assert.match(view.failure, /^killed by SIGSEGV; last console lines: .*Kernel panic - not syncing: oops$/);
  assert.equal(w.records.record(id)?.failure, view.failure, "the reason is saved");
  assert.equal(w.network.attached.has(id), false);
  assert.equal(w.secrets.dirs.has(id), false);
  const last = (await w.service.events(0n, 100, 0)).events.filter((event) => event.vmId === id).at(-1)!;
  assert.equal(last.status, "failed");
  assert.equal(last.reason, view.failure);

  const other = await w.service.createVm(specInput(), {});
  w.host.byId(other)!.crash({ code: 2, message: "qemu: could not open disk" });
  await until(async () => (await w.service.getVm(other)).status === "failed", "other failed");
  assert.match((await w.service.getVm(other)).failure, /^exited with code 2: qemu: could not open disk/);

  await w.service.stopAll();
  w.assertEmpty();
  assert.deepEqual(await w.service.listVms(), []);
});

test("bad input is refused before any port is touched", async () => {
  const w = new World();
  await rejectsWith(w.service.createVm(specInput({ cpu: 0 }), {}), "INVALID_ARGUMENT", /cpu 0 is out of range/);
  await rejectsWith(w.service.createVm(specInput({ allowedDomains: ["bad domain"] }), {}), "INVALID_ARGUMENT", /not a domain/);
  await rejectsWith(w.service.createVm(specInput(), { secrets: [{ name: "../x", value: utf8("1") }] }), "INVALID_ARGUMENT", /not allowed/);
  await rejectsWith(w.service.createVm(specInput(), { ttlSeconds: 3601 }), "INVALID_ARGUMENT", /above the maximum 3600/);
  const offline = new World({ network: false });
  await rejectsWith(
    offline.service.createVm(specInput({ allowedDomains: ["example.com"] }), {}),
    "INVALID_ARGUMENT",
    /networking is disabled/,
  );
  for (const world of [w, offline]) {
    assert.equal(world.store.failures.count("ensurePaths"), 0);
    assert.equal(world.backend.launches, 0);
  }
  // Without a network the VM still runs, with no address.
  const id = await offline.service.createVm(specInput(), {});
  assert.equal((await offline.service.getVm(id)).ip, "");
  assert.equal(offline.host.byId(id)!.spec.net, undefined);
});

test("groups: the member's group and hostname reach the network; one hostname per group, even for creates in flight", async () => {
  const w = new World();
  await rejectsWith(
    w.service.createVm(specInput({ group: "Bad Group" }), {}),
    "INVALID_ARGUMENT",
    /group "Bad Group" is not a host-name label/,
  );
  const [first, second] = await Promise.allSettled([
    w.service.createVm(specInput({ hostname: "db", group: "Cluster" }), {}),
    w.service.createVm(specInput({ hostname: "db", group: "cluster" }), {}),
  ]);
  assert.equal(first.status, "fulfilled");
  assert.equal(second.status, "rejected");
  const refused = (second as PromiseRejectedResult).reason as { code: string; message: string };
  assert.equal(refused.code, "ALREADY_EXISTS");
  assert.match(refused.message, /^group cluster already has a member named db/);
  const id = (first as PromiseFulfilledResult<string>).value;
  assert.deepEqual(w.network.attached.get(id)!.member, { group: "cluster", hostname: "db" });
  assert.equal((await w.service.getVm(id)).group, "cluster");
  assert.equal(w.backend.launches, 1, "the refused create touched no port");
  // Another group, or no group, may have a "db" too; after the delete the name is free again.
  await w.service.createVm(specInput({ hostname: "db", group: "other" }), {});
  await w.service.createVm(specInput({ hostname: "db" }), {});
  await w.service.deleteVm(id);
  await w.service.createVm(specInput({ hostname: "db", group: "cluster" }), {});
  await rejectsWith(new World({ network: false }).service.createVm(specInput({ group: "g" }), {}), "FAILED_PRECONDITION", /networking/);
});

test("a spec the backend cannot serve is refused before the first step, naming the backend and the capability", async () => {
  const w = new World({ backend: { capabilities: { dataDisk: false } } });
  await rejectsWith(
    w.service.createVm(specInput({ dataDiskBytes: 64n * 1024n * 1024n }), {}),
    "FAILED_PRECONDITION",
    /^dataDiskBytes: the fake backend cannot serve a data disk/,
  );
  assert.equal(w.store.failures.count("ensurePaths"), 0);
  assert.equal(w.backend.launches, 0);
  assert.equal(w.network.attached.size, 0);
  assert.equal(w.records.saved.size, 0);
  // Without a data disk the same backend serves the VM.
  await w.service.createVm(specInput(), {});
});

test("a store path missing locally is fetched, and only that one", async () => {
  const w = new World();
  const input = specInput();
  const kernelRoot = input.kernel.split("/").slice(0, 4).join("/");
  w.store.missing.add(kernelRoot);
  await w.service.createVm(input, {});
  assert.deepEqual(w.store.fetched, [kernelRoot]);
});

// === capacity and TTL ============================================================================
// Host limits (RESOURCE_EXHAUSTED, creates in flight count, reservations released) and TTL expiry.

test("VM count: the limit refuses the next create before any step; a delete makes room", async () => {
  const w = new World({ limits: { maxVms: 2 } });
  const first = await w.service.createVm(specInput(), {});
  await w.service.createVm(specInput(), {});
  const launches = w.backend.launches;
  await rejectsWith(w.service.createVm(specInput(), {}), "RESOURCE_EXHAUSTED", /^host limit of 2 VMs reached$/);
  assert.equal(w.backend.launches, launches);
  assert.equal(w.store.failures.count("ensurePaths"), 2, "refused before the first step");
  await w.service.deleteVm(first);
  await w.service.createVm(specInput(), {});
});

test("creates in flight hold their reservation; it is released when they end, failed or not", async () => {
  const w = new World({ limits: { maxVms: 2 } });
  w.backend.nextLaunch({ boot: "manual" }).nextLaunch({ boot: "manual" });
  const a = w.service.createVm(specInput(), {});
  const b = w.service.createVm(specInput(), {});
  const [vmA, vmB] = [await w.host.nextSpawn(), await w.host.nextSpawn()];
  await rejectsWith(w.service.createVm(specInput(), {}), "RESOURCE_EXHAUSTED", /host limit of 2 VMs/);
  vmA.boot();
  vmB.crash();
  await a;
  await rejectsWith(b, "FAILED_PRECONDITION", /wait for vmm running/);
  const c = await w.service.createVm(specInput(), {});
  await rejectsWith(w.service.createVm(specInput(), {}), "RESOURCE_EXHAUSTED", /host limit of 2 VMs/);
  assert.equal((await w.service.getVm(c)).status, "running");
});

test("a create in flight counts once against the limits, registered or not", async () => {
  const w = new World({ limits: { maxVms: 2, maxTotalCpu: 4 } });
  w.backend.nextLaunch({ boot: "manual" });
  const booting = w.service.createVm(specInput({ cpu: 2 }), {});
  const vm = await w.host.nextSpawn();
  assert.equal((await w.service.listVms())[0]?.status, "creating", "registered, and still reserved");
  const second = await w.service.createVm(specInput({ cpu: 2 }), {});
  await rejectsWith(w.service.createVm(specInput(), {}), "RESOURCE_EXHAUSTED", /host limit of 2 VMs reached/);
  vm.boot();
  await booting;
  await w.service.deleteVm(second);
  await rejectsWith(
    w.service.createVm(specInput({ cpu: 3 }), {}),
    "RESOURCE_EXHAUSTED",
    /^host vCPU limit 4 would be exceeded \(5 requested in all\)$/,
  );
});

test("vCPU and memory sums: live VMs count, stopped and failed ones do not", async () => {
  const w = new World({ limits: { maxTotalCpu: 4, maxTotalMemoryBytes: 1024 * MIB } });
  const big = await w.service.createVm(specInput({ cpu: 2 }), {});
  await rejectsWith(
    w.service.createVm(specInput({ cpu: 3 }), {}),
    "RESOURCE_EXHAUSTED",
    /^host vCPU limit 4 would be exceeded \(5 requested in all\)$/,
  );
  const mem = await w.service.createVm(specInput({ memoryBytes: BigInt(512 * MIB) }), {});
  await rejectsWith(
    w.service.createVm(specInput({ memoryBytes: BigInt(512 * MIB) }), {}),
    "RESOURCE_EXHAUSTED",
    /^host memory limit 1073741824 bytes would be exceeded \(1342177280 requested in all\)$/,
  );
  w.host.byId(big)!.crash();
  w.host.byId(mem)!.powerOffGuest();
  await until(async () => (await w.service.listVms()).every((vm) => vm.status !== "running"), "both ended");
  await w.service.createVm(specInput({ cpu: 2, memoryBytes: BigInt(512 * MIB) }), {});
});

test("data disks count until their VM is deleted, whatever its status", async () => {
  const w = new World({ limits: { maxTotalDiskBytes: 100 * MIB } });
  const disk = BigInt(64 * MIB);
  const first = await w.service.createVm(specInput({ dataDiskBytes: disk }), {});
  assert.deepEqual(w.host.byId(first)!.spec.dataDisk, { path: `${w.records.vmDir(first)}/data.img`, bytes: 64 * MIB });
  w.host.byId(first)!.crash();
  await until(async () => (await w.service.getVm(first)).status === "failed", "failed");
  const refused = w.service.createVm(specInput({ dataDiskBytes: disk }), {});
  await rejectsWith(refused, "RESOURCE_EXHAUSTED", /data-disk limit .* \(134217728 held or requested in all\)/);
  await w.service.createVm(specInput(), {}); // no disk: no disk limit
  await w.service.deleteVm(first);
  await w.service.createVm(specInput({ dataDiskBytes: disk }), {});
});

test("TTL: the VM is deleted when its time is up, not before (mock timers)", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
  const w = new World();
  const id = await w.service.createVm(specInput(), { ttlSeconds: 2 });
  const keep = await w.service.createVm(specInput(), {});
  assert.equal(w.records.record(id)?.expiresAtMs, 1_000_000 + 2000);
  t.mock.timers.tick(1999);
  for (let turn = 0; turn < 20; turn++) await new Promise((resolve) => setImmediate(resolve));
  assert.equal((await w.service.getVm(id)).status, "running", "still there a millisecond before");
  t.mock.timers.tick(1);
  await until(() => !w.records.saved.has(id), "expired VM deleted");
  w.assertGone(id);
  assert.deepEqual(await w.events(id), ["creating", "running", "stopping", "stopped"]);
  assert.equal((await w.service.getVm(keep)).status, "running", "a VM without TTL stays");
});

test("TTL: a VM deleted by its client first is no failure when the time comes", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
  const w = new World();
  const id = await w.service.createVm(specInput(), { ttlSeconds: 1 });
  await w.service.deleteVm(id);
  t.mock.timers.tick(5000);
  for (let turn = 0; turn < 20; turn++) await new Promise((resolve) => setImmediate(resolve));
  w.assertEmpty();
  assert.deepEqual(await w.events(id), ["creating", "running", "stopping", "stopped"]);
});

// === faults ======================================================================================
// Fault injection through the service: inject, list, clear, expiry, and what each fault does to
// the VM's lifecycle; capabilities the backend lacks are refused.

const DISK = BigInt(16 * MIB);
const READ_ERRORS = { kind: "diskErrors", op: "read", errno: 5, afterOps: 0, probabilityPercent: 100 } as const;

test("pause and resume: the VM moves through the lifecycle, the pause lists until cleared", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), {});
  const vm = w.host.byId(id)!;
  const pause = await w.service.injectFault(id, { kind: "pause" });
  assert.equal(vm.state, "paused");
  assert.equal((await w.service.getVm(id)).status, "paused");
  assert.equal(w.records.record(id)?.status, "paused", "saved");
  const [listed] = await w.service.listFaults(id);
  assert.deepEqual([listed?.id, listed?.kind, listed?.description, listed?.expiresAtMs], [pause, "pause", "pause", 0n]);
  assert.deepEqual(
    (await w.service.getVm(id)).faults?.map((fault) => fault.id),
    [pause],
    "the view lists it too",
  );
  await rejectsWith(w.service.injectFault(id, { kind: "pause" }), "FAILED_PRECONDITION", /already paused/);

  await w.service.clearFault(id, pause);
  assert.equal(vm.state, "running");
  assert.equal((await w.service.getVm(id)).status, "running");
  assert.deepEqual(await w.service.listFaults(id), []);
  await rejectsWith(w.service.clearFault(id, pause), "NOT_FOUND", /no active fault/);
  await rejectsWith(w.service.injectFault(id, { kind: "resume" }), "FAILED_PRECONDITION", /is not paused/);

  // A resume fault ends a pause fault too.
  await w.service.injectFault(id, { kind: "pause" });
  await w.service.injectFault(id, { kind: "resume" });
  assert.equal(vm.state, "running");
  assert.deepEqual(await w.service.listFaults(id), []);
  assert.deepEqual(await w.events(id), ["creating", "running", "paused", "running", "paused", "running"]);
});

test("instant faults: killVmm fails the VM, powerOff stops it, reboot resets the guest; none lists", async () => {
  const w = new World();
  const killed = await w.service.createVm(specInput(), {});
  await w.service.injectFault(killed, { kind: "killVmm" });
  await until(async () => (await w.service.getVm(killed)).status === "failed", "failed");
  assert.match((await w.service.getVm(killed)).failure, /^killed by SIGKILL/);

  const off = await w.service.createVm(specInput(), {});
  await w.service.injectFault(off, { kind: "powerOff" });
  await until(async () => (await w.service.getVm(off)).status === "stopped", "stopped");
  assert.equal(w.host.byId(off)!.powerButtonPresses, 0, "the plug is pulled, no ACPI");

  const rebooted = await w.service.createVm(specInput(), {});
  const vm = w.host.byId(rebooted)!;
  await w.service.injectFault(rebooted, { kind: "reboot" });
  assert.equal(vm.resets, 1);
  await until(() => vm.state === "running", "guest up again");
  assert.equal((await w.service.getVm(rebooted)).status, "running", "a reset is no end");
  for (const id of [killed, off, rebooted]) assert.deepEqual(await w.service.listFaults(id), []);
});

test("disk errors: handed to the VMM, one at a time, cleared exactly; refused without a data disk", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput({ dataDiskBytes: DISK }), {});
  const vm = w.host.byId(id)!;
  const fault = await w.service.injectFault(id, { kind: "diskErrors", op: "write", errno: 0, afterOps: 10, probabilityPercent: 100 });
  assert.deepEqual(vm.diskErrors.get(fault), { op: "write", errno: 5, afterOps: 10, probabilityPercent: 100 }, "errno 0 means EIO");
  assert.equal((await w.service.listFaults(id))[0]?.description, "disk errors (errno 5) on writes after 10 more ops");
  await rejectsWith(w.service.injectFault(id, READ_ERRORS), "FAILED_PRECONDITION", /already active/);
  await w.service.clearFault(id, fault);
  assert.equal(vm.diskErrors.size, 0);

  const diskless = await w.service.createVm(specInput(), {});
  await rejectsWith(w.service.injectFault(diskless, READ_ERRORS), "FAILED_PRECONDITION", /no data disk/);
  assert.deepEqual(await w.service.listFaults(diskless), []);
});

test("network faults go to the TAP; without netem a delay is held by the VMM instead", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), {});
  const tap = w.network.attached.get(id)!.net.tap;
  const partition = await w.service.injectFault(id, { kind: "partition", cidrs: ["1.1.1.1/32"] });
  assert.deepEqual(w.netFaults.active.get(partition), { tap, fault: { kind: "partition", cidrs: ["1.1.1.1/32"] } });
  await w.service.clearFault(id, partition);
  assert.equal(w.netFaults.active.size, 0);

  w.netFaults.noNetem = true;
  await rejectsWith(w.service.injectFault(id, { kind: "loss", percent: 10 }), "FAILED_PRECONDITION", /sch_netem/);
  const delay = await w.service.injectFault(id, { kind: "delay", ms: 100, jitterMs: 5 });
  assert.deepEqual(w.host.byId(id)!.netDelays.get(delay), { ms: 100, jitterMs: 5 });
  await w.service.clearFault(id, delay);
  assert.equal(w.host.byId(id)!.netDelays.size, 0);

  const offline = new World({ network: false });
  const lonely = await offline.service.createVm(specInput(), {});
  await rejectsWith(offline.service.injectFault(lonely, { kind: "partition", cidrs: [] }), "FAILED_PRECONDITION", /has none/);
});

test("cpu throttle goes to the VMM's pid; a delete clears every fault the VM has", async () => {
  const w = new World({ cage: false });
  const id = await w.service.createVm(specInput({ dataDiskBytes: DISK }), {});
  const vm = w.host.byId(id)!;
  const cpu = await w.service.injectFault(id, { kind: "cpuThrottle", percent: 20 });
  assert.deepEqual(w.cpu.active.get(cpu), { pid: vm.pid, percent: 20 });
  await w.service.injectFault(id, { kind: "partition", cidrs: [] });
  await w.service.injectFault(id, { kind: "diskErrors", op: "readWrite", errno: 28, afterOps: 0, probabilityPercent: 50 });
  assert.equal((await w.service.listFaults(id)).length, 3);
  await w.service.deleteVm(id);
  assert.equal(w.cpu.active.size, 0);
  assert.equal(w.netFaults.active.size, 0);
  assert.equal(vm.diskErrors.size, 0);
  w.assertGone(id);
});

test("caged, cpu throttle limits the VM's own cgroup; clearing lifts it; the delete releases the cage once the VMM is gone", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), {});
  const uid = w.cage.caged.get(id)!.uid;
  assert.ok(uid >= 40000);
  const fault = await w.service.injectFault(id, { kind: "cpuThrottle", percent: 20 });
  assert.equal(w.cage.cpu.get(id), 20);
  assert.equal(w.cpu.active.size, 0, "no process moved: the cage's cgroup is the VMM's already");
  await w.service.clearFault(id, fault);
  assert.equal(w.cage.cpu.has(id), false);
  await w.service.injectFault(id, { kind: "cpuThrottle", percent: 30 });
  const vmm = w.host.byId(id)!;
  await w.service.deleteVm(id);
  assert.equal(vmm.state, "exited");
  assert.deepEqual(w.cage.released, [id]);
  assert.equal(w.cage.caged.size, 0);
  w.assertGone(id);
});

test("a fault with a duration clears itself (mock timers)", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 5_000_000 });
  const w = new World();
  const id = await w.service.createVm(specInput(), {});
  const fault = await w.service.injectFault(id, { kind: "pause", durationMs: 500 });
  assert.equal((await w.service.listFaults(id))[0]?.expiresAtMs, 5_000_500n);
  t.mock.timers.tick(499);
  for (let turn = 0; turn < 20; turn++) await new Promise((resolve) => setImmediate(resolve));
  assert.equal((await w.service.getVm(id)).status, "paused");
  t.mock.timers.tick(1);
  await until(async () => (await w.service.getVm(id)).status === "running", "resumed on expiry");
  assert.deepEqual(await w.service.listFaults(id), []);
  await rejectsWith(w.service.clearFault(id, fault), "NOT_FOUND", /no active fault/);
});

test("faults the backend does not offer, bad faults and faults on a VM that is not running are refused", async () => {
  const w = new World({ backend: { faults: { powerOff: false, reset: false, diskErrors: false } }, faultPorts: false, cage: false });
  const id = await w.service.createVm(specInput({ dataDiskBytes: DISK }), {});
  await rejectsWith(
    w.service.injectFault(id, { kind: "powerOff" }),
    "FAILED_PRECONDITION",
    /^powerOff is not supported on fake: no hard power off$/,
  );
  await rejectsWith(w.service.injectFault(id, { kind: "reboot" }), "FAILED_PRECONDITION", /^reboot is not supported on fake/);
  await rejectsWith(w.service.injectFault(id, READ_ERRORS), "FAILED_PRECONDITION", /diskErrors is not supported on fake/);
  await rejectsWith(w.service.injectFault(id, { kind: "cpuThrottle", percent: 20 }), "FAILED_PRECONDITION", /not available on this worker/);
  await rejectsWith(w.service.injectFault(id, { kind: "loss", percent: 0 }), "INVALID_ARGUMENT", /must be above 0/);
  await rejectsWith(w.service.injectFault("vm-nope", { kind: "pause" }), "NOT_FOUND", /not found/);
  assert.equal((await w.service.getVm(id)).status, "running");
  assert.deepEqual(await w.service.listFaults(id), []);

  w.host.byId(id)!.powerOffGuest();
  await until(async () => (await w.service.getVm(id)).status === "stopped", "stopped");
  await rejectsWith(
    w.service.injectFault(id, { kind: "killVmm" }),
    "FAILED_PRECONDITION",
    /is stopped; faults need a running or paused VM/,
  );
});
