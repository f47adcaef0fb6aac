// A VM's transitions (worker/core/vm.ts): each checks the move, releases what the new status does not
// hold, shows and emits the new status together, and saves the record; a failed save is logged with
// the VM id and retried, never thrown; a release that fails stays held until the delete.
import assert from "node:assert/strict";
import { test } from "node:test";
import pino from "pino";
import { EventLog } from "../../worker/core/events.js";
import { FaultController } from "../../worker/core/faults.js";
import { SAVE_ATTEMPTS, ManagedVm, type VmContext } from "../../worker/core/vm.js";
import { rejectsWith } from "../helpers/errors.js";
import { capturingLogger, specInput, until, utf8, World } from "./fakes.js";

/** The log lines about one VM at one level (pino: 30 info, 40 warn, 50 error). */
function linesOf(lines: Record<string, unknown>[], vmId: string, level: number): string[] {
  return lines.filter((line) => line.vmId === vmId && line.level === level).map((line) => String(line.msg));
}

test("a VMM exit: the release comes first, then the status shows with its event, then the record is saved", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), { secrets: [{ name: "a", value: utf8("1") }] });
  await w.service.injectFault(id, { kind: "partition", cidrs: [] });
  const statusAtDetach: string[] = [];
  const detach = w.network.detach.bind(w.network);
  w.network.detach = async (vmId) => {
    statusAtDetach.push((await w.service.listVms()).find((vm) => vm.id === vmId)!.status);
    assert.equal(w.netFaults.active.size, 0, "the faults on the TAP went before the TAP");
    return detach(vmId);
  };
  w.host.byId(id)!.crash({ code: 1, message: "boom" });
  await until(() => w.records.record(id)?.status === "failed", "failed on disk");

  assert.deepEqual(statusAtDetach, ["running"], "released before the failed status showed");
  assert.equal(w.secrets.dirs.has(id), false);
  const view = await w.service.getVm(id);
  assert.equal(view.status, "failed");
  assert.deepEqual(await w.service.listFaults(id), []);
  const events = (await w.service.events(0n, 100, 0)).events.filter((event) => event.vmId === id);
  assert.deepEqual(
    events.map((event) => event.status),
    ["creating", "running", "failed"],
  );
  assert.equal(events.at(-1)!.reason, view.failure);
  assert.equal(w.records.record(id)?.failure, view.failure);
});

test("a move the lifecycle forbids throws FAILED_PRECONDITION and changes nothing", async () => {
  const w = new World();
  const events = new EventLog();
  const ctx: VmContext = {
    records: w.records,
    consoles: w.records,
    secrets: w.secrets,
    network: w.network,
    faults: new FaultController({}, pino({ level: "silent" }), () => {}),
    events,
    log: pino({ level: "silent" }),
    saveRetryMs: 1,
    expire: () => {},
  };
  const id = await w.service.createVm(specInput(), {});
  const record = w.records.record(id)!;
  const vm = ManagedVm.recovered({ ...record, status: "stopped" }, ctx);
  const saves = w.records.failures.count("save");
  await rejectsWith(vm.transition("running"), "FAILED_PRECONDITION", /cannot go from stopped to running/);
  assert.equal(vm.status, "stopped");
  assert.deepEqual((await events.since(0n, 10, 0)).events, []);
  assert.equal(w.records.failures.count("save"), saves, "nothing saved");
  assert.equal(w.network.attached.has(id), true, "nothing released");
});

test("a failed save is logged with the VM id and retried; the transition goes on", async () => {
  const { logger, lines } = capturingLogger();
  const w = new World({ logger });
  const id = await w.service.createVm(specInput(), {});
  w.records.failures.failNext("save");
  w.records.failures.failNext("save");
  await w.service.injectFault(id, { kind: "pause" });
  assert.equal(w.records.record(id)?.status, "paused", "saved at the third attempt");
  assert.deepEqual(linesOf(lines, id, 40), ["cannot save the vm record; retrying", "cannot save the vm record; retrying"]);
  assert.ok(linesOf(lines, id, 30).includes("vm record saved after a retry"));
  const retry = lines.find((line) => line.vmId === id && line.level === 40)!;
  assert.deepEqual([retry.status, retry.attempt, retry.err], ["paused", 1, "injected save failure"]);
});

test("a save that keeps failing is logged as an error, never thrown; the next change saves the record", async () => {
  const { logger, lines } = capturingLogger();
  const w = new World({ logger });
  const id = await w.service.createVm(specInput(), {});
  for (let attempt = 0; attempt < SAVE_ATTEMPTS; attempt++) w.records.failures.failNext("save");
  const pause = await w.service.injectFault(id, { kind: "pause" });
  assert.equal((await w.service.getVm(id)).status, "paused", "the VM is paused all the same");
  assert.equal(w.records.record(id)?.status, "running", "the disk still says running");
  assert.equal(linesOf(lines, id, 40).length, SAVE_ATTEMPTS - 1);
  assert.deepEqual(linesOf(lines, id, 50), ["cannot save the vm record; giving up until its next change"]);

  await w.service.clearFault(id, pause);
  assert.equal(w.records.record(id)?.status, "running");
  w.host.byId(id)!.crash();
  await until(() => w.records.record(id)?.status === "failed", "the next transition saved");
});

test("a release that fails is logged and stays held: the delete tries it again", async () => {
  const { logger, lines } = capturingLogger();
  const w = new World({ logger });
  const id = await w.service.createVm(specInput(), { secrets: [{ name: "a", value: utf8("1") }] });
  w.network.failures.failNext("detach");
  w.host.byId(id)!.powerOffGuest();
  await until(async () => (await w.service.getVm(id)).status === "stopped", "stopped");
  assert.equal(w.network.attached.has(id), true, "the detach failed");
  assert.equal(w.secrets.dirs.has(id), false, "the rest was released");
  const failed = lines.find((line) => line.vmId === id && line.msg === "release failed")!;
  assert.deepEqual([failed.level, failed.release], [50, "network"]);

  const detaches = w.network.failures.count("detach");
  await w.service.deleteVm(id);
  assert.equal(w.network.failures.count("detach"), detaches + 1, "tried again, once");
  assert.equal(w.secrets.failures.count("wipe"), 1, "what went is not released twice");
  w.assertGone(id);
});

test("a delete: the VMM stops while the VM releases; stopping shows once released, stopped once gone", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), {});
  const vm = w.host.byId(id)!;
  const seen: string[] = [];
  w.records.onSave = (record) => seen.push(`saved ${record.status} (VMM ${vm.exit ? "gone" : "up"})`);
  await w.service.deleteVm(id);
  assert.deepEqual(seen, ["saved stopping (VMM up)"], "the only save: stopping, before the guest is off");
  assert.deepEqual(await w.events(id), ["creating", "running", "stopping", "stopped"]);
  w.assertGone(id);
});
