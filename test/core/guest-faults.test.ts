// In-guest faults through the core (worker/core/faults.ts) on the fake backend and FakeAgents: what
// the agent is asked on inject, on clear, on expiry and after a worker restart, what is refused
// before anything reaches the guest, and the codec's round trip of the new union members.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { FaultInput } from "../../worker/core/api.js";
import { faultFromFlags } from "../../cli/fault-input.js";
import { WorkerError } from "../../worker/core/errors.js";
import type { GuestFault, GuestFaultResult } from "../../worker/ports/index.js";
import { DEFAULT_LIMITS } from "../../worker/rpc/limits.js";
import { FrameDecoder } from "../../worker/rpc/framing.js";
import { MessageBuilder, MessageReader } from "../../worker/rpc/wire.js";
import { readFault, writeFault } from "../../worker/rpc/worker-codec.js";
import { rejectsWith } from "../helpers/errors.js";
import { type FakeAgentConnection, specInput, until, World } from "./fakes.js";

async function worldWithVm(): Promise<{ w: World; id: string; agent: FakeAgentConnection }> {
  const w = new World({ agents: true, timeouts: { stopGraceMs: 20 } });
  const id = await w.service.createVm(specInput(), {});
  return { w, id, agent: w.agents.connections.get(id)! };
}

const answering =
  (result: Partial<GuestFaultResult>) =>
  async (_fault: GuestFault): Promise<GuestFaultResult> => ({ pids: [], bytes: 0, ...result });

test("freezeProcess: the agent freezes by name; clearing thaws exactly the pids it reached", async () => {
  const { w, id, agent } = await worldWithVm();
  agent.faultAnswer = answering({ pids: [41, 42] });
  const fault = await w.service.injectFault(id, { kind: "freezeProcess", pid: 0, name: "sleep" });
  assert.deepEqual(agent.faults, [{ kind: "freeze", name: "sleep" }]);
  const [listed] = await w.service.listFaults(id);
  assert.deepEqual(
    [listed?.id, listed?.kind, listed?.description],
    [fault, "freezeProcess", 'frozen: processes named "sleep" (pids 41, 42)'],
  );
  assert.deepEqual(
    (await w.service.getVm(id)).faults?.map((f) => f.id),
    [fault],
  );

  await w.service.clearFault(id, fault);
  assert.deepEqual(agent.faults.at(-1), { kind: "thaw", pids: [41, 42] });
  assert.deepEqual(await w.service.listFaults(id), []);
  await rejectsWith(w.service.clearFault(id, fault), "NOT_FOUND", /no active fault/);
});

test("killProcess is instant: the signal goes by pid, an id comes back, nothing is listed or undone", async () => {
  const { w, id, agent } = await worldWithVm();
  agent.faultAnswer = answering({ pids: [77] });
  const fault = await w.service.injectFault(id, { kind: "killProcess", pid: 77, name: "", signal: 15 });
  assert.match(fault, /^fault-[0-9a-f]{8}$/);
  assert.deepEqual(agent.faults, [{ kind: "kill", pid: 77, signal: 15 }]);
  assert.deepEqual(await w.service.listFaults(id), []);
  await rejectsWith(w.service.clearFault(id, fault), "NOT_FOUND", /no active fault/);
  assert.equal(agent.faults.length, 1);
});

test("clockShift steps back on clear; clockStrobe is named by its fault id, stopped on clear, one at a time", async () => {
  const { w, id, agent } = await worldWithVm();
  const shift = await w.service.injectFault(id, { kind: "clockShift", deltaMs: -3_600_000 });
  assert.deepEqual(agent.faults, [{ kind: "clockShift", deltaMs: -3_600_000 }]);
  assert.equal((await w.service.listFaults(id))[0]?.description, "guest clock -3600000 ms");

  const strobe = await w.service.injectFault(id, { kind: "clockStrobe", deltaMs: 5000, periodMs: 200 });
  assert.deepEqual(agent.faults.at(-1), { kind: "clockStrobe", id: strobe, deltaMs: 5000, periodMs: 200 });
  await rejectsWith(
    w.service.injectFault(id, { kind: "clockStrobe", deltaMs: 1, periodMs: 50 }),
    "FAILED_PRECONDITION",
    new RegExp(`clockStrobe fault \\(${strobe}\\) is already active`),
  );
  assert.equal(agent.faults.length, 2, "the refused strobe never reached the guest");

  await w.service.clearFault(id, strobe);
  assert.deepEqual(agent.faults.at(-1), { kind: "clockStrobeStop", id: strobe });
  await w.service.clearFault(id, shift);
  assert.deepEqual(agent.faults.at(-1), { kind: "clockShift", deltaMs: 3_600_000 });
  assert.deepEqual(await w.service.listFaults(id), []);
});

test("fillDisk names its file by the fault id, shows the bytes written, and frees it on clear", async () => {
  const { w, id, agent } = await worldWithVm();
  agent.faultAnswer = answering({ bytes: 8 * 1024 * 1024 });
  const fault = await w.service.injectFault(id, { kind: "fillDisk", dir: "/mnt/data" });
  assert.deepEqual(agent.faults, [{ kind: "fillDisk", id: fault, dir: "/mnt/data" }]);
  assert.equal((await w.service.listFaults(id))[0]?.description, "guest filesystem of /mnt/data filled (8388608 bytes written)");
  await w.service.clearFault(id, fault);
  assert.deepEqual(agent.faults.at(-1), { kind: "unfillDisk", id: fault, dir: "/mnt/data" });
});

test("an in-guest fault with a duration is undone when it expires (mock timers)", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 7_000_000 });
  const { w, id, agent } = await worldWithVm();
  await w.service.injectFault(id, { kind: "clockShift", deltaMs: 1000, durationMs: 300 });
  assert.equal((await w.service.listFaults(id))[0]?.expiresAtMs, 7_000_300n);
  t.mock.timers.tick(299);
  assert.equal(agent.faults.length, 1);
  t.mock.timers.tick(1);
  await until(async () => (await w.service.listFaults(id)).length === 0, "expired fault cleared");
  assert.deepEqual(agent.faults.at(-1), { kind: "clockShift", deltaMs: -1000 });
});

test("bad faults are INVALID_ARGUMENT and never reach the guest", async () => {
  const { w, id, agent } = await worldWithVm();
  const cases: [FaultInput, RegExp][] = [
    [{ kind: "killProcess", pid: 5, name: "sleep", signal: 9 }, /exactly one of pid and name/],
    [{ kind: "freezeProcess", pid: 0, name: "" }, /exactly one of pid and name/],
    [{ kind: "killProcess", pid: 1, name: "", signal: 9 }, /pid 1 \(the guest's init\) is never signalled/],
    [{ kind: "killProcess", pid: 2 ** 22 + 1, name: "", signal: 9 }, /pid/],
    [{ kind: "killProcess", pid: -3, name: "", signal: 9 }, /pid/],
    [{ kind: "freezeProcess", pid: 0, name: "bin/sleep" }, /base name/],
    [{ kind: "killProcess", pid: 0, name: "sleep", signal: 0 }, /signal/],
    [{ kind: "killProcess", pid: 0, name: "sleep", signal: 65 }, /signal/],
    [{ kind: "clockShift", deltaMs: 0 }, /must not be 0/],
    [{ kind: "clockShift", deltaMs: 1.5 }, /deltaMs/],
    [{ kind: "clockShift", deltaMs: 400 * 24 * 3600_000 * 10 }, /deltaMs/],
    [{ kind: "clockStrobe", deltaMs: 1000, periodMs: 10 }, /periodMs/],
    [{ kind: "fillDisk", dir: "tmp" }, /absolute path/],
    [{ kind: "fillDisk", dir: "/tmp\0x" }, /absolute path/],
  ];
  for (const [fault, message] of cases) await rejectsWith(w.service.injectFault(id, fault), "INVALID_ARGUMENT", message);
  assert.deepEqual(agent.faults, []);
  assert.deepEqual(await w.service.listFaults(id), []);
});

test("unknown VM: NOT_FOUND; no agent channel: FAILED_PRECONDITION; agent not ready or VM paused: UNAVAILABLE", async () => {
  const { w, id, agent } = await worldWithVm();
  const freeze: FaultInput = { kind: "freezeProcess", pid: 0, name: "sleep" };
  await rejectsWith(w.service.injectFault("vm-0000000000", freeze), "NOT_FOUND", /vm-0000000000/);

  agent.state = "connecting";
  await rejectsWith(w.service.injectFault(id, freeze), "UNAVAILABLE", /agent is connecting/);
  agent.state = "ready";
  const pause = await w.service.injectFault(id, { kind: "pause" });
  await rejectsWith(w.service.injectFault(id, freeze), "UNAVAILABLE", /is paused/);
  await w.service.clearFault(id, pause);
  assert.deepEqual(agent.faults, []);
  assert.equal((await w.service.listFaults(id)).length, 0);

  const noAgents = new World({ agents: false });
  const bare = await noAgents.service.createVm(specInput(), {});
  await rejectsWith(noAgents.service.injectFault(bare, freeze), "FAILED_PRECONDITION", /has no guest agent channel/);
});

test("the agent's error is the caller's, and nothing is listed; a failed undo keeps the fault for a retry", async () => {
  const { w, id, agent } = await worldWithVm();
  agent.faultAnswer = async () => {
    throw new WorkerError("NOT_FOUND", 'agent: no process named "nope" in the guest');
  };
  await rejectsWith(w.service.injectFault(id, { kind: "killProcess", pid: 0, name: "nope", signal: 9 }), "NOT_FOUND", /no process named/);
  assert.deepEqual(await w.service.listFaults(id), []);

  agent.faultAnswer = answering({});
  const fault = await w.service.injectFault(id, { kind: "clockShift", deltaMs: 60_000 });
  agent.state = "connecting"; // the agent restarts just then
  await rejectsWith(w.service.clearFault(id, fault), "UNAVAILABLE", /agent is connecting/);
  assert.deepEqual(
    (await w.service.listFaults(id)).map((f) => f.id),
    [fault],
    "still listed",
  );
  agent.state = "ready";
  await w.service.clearFault(id, fault);
  assert.deepEqual(agent.faults.at(-1), { kind: "clockShift", deltaMs: -60_000 });
});

test("a VM going away undoes nothing in its guest (the guest goes with it); a reboot ends freezes and clock faults", async () => {
  const { w, id, agent } = await worldWithVm();
  agent.faultAnswer = answering({ pids: [9] });
  await w.service.injectFault(id, { kind: "freezeProcess", pid: 9, name: "" });
  const fill = await w.service.injectFault(id, { kind: "fillDisk", dir: "/data" });
  await w.service.injectFault(id, { kind: "clockStrobe", deltaMs: 10, periodMs: 100 });
  await w.service.injectFault(id, { kind: "reboot" });
  assert.deepEqual(
    (await w.service.listFaults(id)).map((f) => f.id),
    [fill],
    "the fill file may be on a disk: it stays until cleared",
  );
  const sent = agent.faults.length;
  await w.service.deleteVm(id);
  assert.equal(agent.faults.length, sent, "no undo was sent to a guest that is going away");
  w.assertGone(id);
});

test("after a worker restart the agent is told to reset, in the background; guest faults injected meanwhile wait for it", async () => {
  const { w, id, agent } = await worldWithVm();
  agent.faultAnswer = answering({ pids: [9] });
  await w.service.injectFault(id, { kind: "freezeProcess", pid: 9, name: "" });

  // The new worker's channel: its reset hangs until released.
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const connect = w.agents.connect.bind(w.agents);
  w.agents.connect = (vmId, socketPath, transport) => {
    const connection = connect(vmId, socketPath, transport) as FakeAgentConnection;
    connection.faultAnswer = async (fault) => {
      if (fault.kind === "reset") await released;
      return { pids: [], bytes: 0 };
    };
    return connection;
  };
  const result = await w.restart(); // does not wait for the guest
  assert.deepEqual(result.adopted, [id]);
  const fresh = w.agents.connections.get(id)!;
  assert.notEqual(fresh, agent);
  await until(() => fresh.faults.length === 1, "reset sent");
  assert.deepEqual(fresh.faults, [{ kind: "reset" }]);
  assert.deepEqual(await w.service.listFaults(id), [], "the new worker knows no faults of the old one");

  const injected = w.service.injectFault(id, { kind: "clockShift", deltaMs: 5 });
  for (let turn = 0; turn < 50; turn++) await new Promise((resolve) => setImmediate(resolve));
  assert.equal(fresh.faults.length, 1, "the shift waits for the reset");
  release();
  await injected;
  assert.deepEqual(fresh.faults, [{ kind: "reset" }, { kind: "clockShift", deltaMs: 5 }]);
});

test("the wire codec round-trips every in-guest fault (tags 11-15, Int64 deltas)", () => {
  const faults: FaultInput[] = [
    { kind: "killProcess", pid: 0, name: "sleep", signal: 15, durationMs: 0 },
    { kind: "killProcess", pid: 4242, name: "", signal: 9, durationMs: 0 },
    { kind: "freezeProcess", pid: 0, name: "pg_ctl", durationMs: 2500 },
    { kind: "clockShift", deltaMs: -3_600_000, durationMs: 0 },
    { kind: "clockShift", deltaMs: 2 ** 40, durationMs: 0 },
    { kind: "clockStrobe", deltaMs: -750, periodMs: 200, durationMs: 10_000 },
    { kind: "fillDisk", dir: "/var/lib/données", durationMs: 0 },
  ];
  for (const fault of faults) {
    const b = new MessageBuilder();
    writeFault(b, b.root, fault);
    const segments = new FrameDecoder(DEFAULT_LIMITS).push(b.finish())[0]!;
    const root = new MessageReader(segments, DEFAULT_LIMITS).root();
    assert.deepEqual(readFault(root), fault, fault.kind);
  }
});

test("inject-fault flags: the CLI's in-guest kinds, signals by number or name, and what each needs", () => {
  assert.deepEqual(faultFromFlags({ kind: "killProcess", name: "sleep" }), {
    kind: "killProcess",
    pid: 0,
    name: "sleep",
    signal: 9,
    durationMs: 0,
  });
  assert.equal((faultFromFlags({ kind: "killProcess", pid: 7, signal: "SIGTERM" }) as { signal: number }).signal, 15);
  assert.equal((faultFromFlags({ kind: "killProcess", pid: 7, signal: "usr1" }) as { signal: number }).signal, 10);
  assert.equal((faultFromFlags({ kind: "killProcess", pid: 7, signal: "3" }) as { signal: number }).signal, 3);
  assert.deepEqual(faultFromFlags({ kind: "freezeProcess", pid: 7, durationMs: 100 }), {
    kind: "freezeProcess",
    pid: 7,
    name: "",
    durationMs: 100,
  });
  assert.deepEqual(faultFromFlags({ kind: "clockStrobe", deltaMs: -5, periodMs: 60 }), {
    kind: "clockStrobe",
    deltaMs: -5,
    periodMs: 60,
    durationMs: 0,
  });
  assert.deepEqual(faultFromFlags({ kind: "fillDisk", dir: "/data" }), { kind: "fillDisk", dir: "/data", durationMs: 0 });
  assert.throws(() => faultFromFlags({ kind: "killProcess" }), /needs --pid or --name/);
  assert.throws(() => faultFromFlags({ kind: "freezeProcess", pid: 3, name: "x" }), /needs --pid or --name/);
  assert.throws(() => faultFromFlags({ kind: "killProcess", pid: 3, signal: "BOGUS" }), /unknown signal "BOGUS"/);
  assert.throws(() => faultFromFlags({ kind: "clockShift" }), /needs --delta-ms/);
  assert.throws(() => faultFromFlags({ kind: "clockStrobe", deltaMs: 5 }), /needs --period-ms/);
  assert.throws(() => faultFromFlags({ kind: "fillDisk" }), /needs --dir/);
});
