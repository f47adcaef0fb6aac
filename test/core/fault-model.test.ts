// The one fault model (worker/core/fault-model.ts): every kind through the schema and the RPC codec
// unchanged, the schema's kinds in the wire's order, bad faults refused with every problem named,
// and the adapters' narrower types parts of the union.
import assert from "node:assert/strict";
import { test } from "node:test";
import { DISK_OPS, FAULT_KINDS, type FaultInput } from "../../worker/core/api.js";
import {
  describeFault,
  faultKindSchema,
  isInstant,
  validateFault,
  type DiskErrorRule,
  type NetFault,
  type NftFault,
  type TcFault,
} from "../../worker/core/fault-model.js";
import { DEFAULT_LIMITS } from "../../worker/rpc/limits.js";
import { FrameDecoder } from "../../worker/rpc/framing.js";
import { MessageBuilder, MessageReader } from "../../worker/rpc/wire.js";
import { readFault, writeFault } from "../../worker/rpc/worker-codec.js";
import { rejectsWith } from "../helpers/errors.js";

/** One valid fault of every kind, in FAULT_KINDS order. */
const FAULTS: FaultInput[] = [
  { kind: "partition", cidrs: ["198.18.0.10/32", "10.0.0.0/8"], durationMs: 1500 },
  { kind: "loss", percent: 33.25, durationMs: 0 },
  { kind: "delay", ms: 120, jitterMs: 7, durationMs: 9 },
  { kind: "bandwidth", kbitPerSecond: 5_000, durationMs: 0 },
  { kind: "pause", durationMs: 4000 },
  { kind: "resume", durationMs: 0 },
  { kind: "killVmm", durationMs: 0 },
  { kind: "powerOff", durationMs: 0 },
  { kind: "reboot", durationMs: 0 },
  { kind: "diskErrors", op: "write", errno: 28, afterOps: 2 ** 40, probabilityPercent: 12.5, durationMs: 0 },
  { kind: "cpuThrottle", percent: 25, durationMs: 60_000 },
  { kind: "killProcess", pid: 0, name: "sleep", signal: 15, durationMs: 0 },
  { kind: "freezeProcess", pid: 4242, name: "", durationMs: 3000 },
  { kind: "clockShift", deltaMs: -3_600_000, durationMs: 0 },
  { kind: "clockStrobe", deltaMs: 500, periodMs: 100, durationMs: 0 },
  { kind: "fillDisk", dir: "/mnt/data", durationMs: 0 },
];

/** The forms aimed at chosen peers (groups): a one-way partition, loss and delay towards some addresses. */
const PEER_FAULTS: FaultInput[] = [
  { kind: "partition", cidrs: ["10.213.0.5/32"], direction: "outbound", durationMs: 0 },
  { kind: "partition", cidrs: ["10.213.0.5/32", "10.213.0.6/32"], direction: "inbound", durationMs: 0 },
  { kind: "loss", percent: 20, cidrs: ["10.213.0.7/32"], durationMs: 0 },
  { kind: "delay", ms: 50, jitterMs: 0, cidrs: ["10.213.0.0/24"], durationMs: 0 },
];

function throughWire(fault: FaultInput): FaultInput {
  const b = new MessageBuilder();
  writeFault(b, b.root, fault);
  const segments = new FrameDecoder(DEFAULT_LIMITS).push(b.finish())[0]!;
  return readFault(new MessageReader(segments, DEFAULT_LIMITS).root());
}

test("every kind: the schema's members are FAULT_KINDS, in the wire's tag order", () => {
  assert.deepEqual(
    faultKindSchema.options.map((member) => member.shape.kind.value),
    [...FAULT_KINDS],
  );
  assert.deepEqual(
    FAULTS.map((fault) => fault.kind),
    [...FAULT_KINDS],
    "the examples cover every kind",
  );
  for (const op of DISK_OPS) validateFault({ kind: "diskErrors", op, errno: 5, afterOps: 0, probabilityPercent: 100 });
});

test("a valid fault round-trips: schema, JSON and the RPC codec all give it back unchanged", () => {
  for (const fault of [...FAULTS, ...PEER_FAULTS]) {
    assert.deepEqual(validateFault(fault), fault, `${fault.kind}: schema`);
    assert.deepEqual(validateFault(JSON.parse(JSON.stringify(fault)) as FaultInput), fault, `${fault.kind}: JSON`);
    assert.deepEqual(validateFault(throughWire(fault)), fault, `${fault.kind}: wire then schema`);
  }
  // Without a duration: absent stays absent through the schema.
  assert.deepEqual(validateFault({ kind: "pause" }), { kind: "pause" });
});

test("a bad fault is INVALID_ARGUMENT naming every problem, and unknown keys are dropped", async () => {
  const invalid = (fault: unknown) => Promise.resolve().then(() => validateFault(fault as FaultInput));
  await rejectsWith(invalid({ kind: "loss", percent: 0 }), "INVALID_ARGUMENT", /^bad loss: percent: must be above 0$/);
  await rejectsWith(invalid({ kind: "delay", ms: 0, jitterMs: -1 }), "INVALID_ARGUMENT", /^bad delay: ms: .*; jitterMs: /);
  await rejectsWith(
    invalid({ kind: "partition", cidrs: ["example.com"] }),
    "INVALID_ARGUMENT",
    /cidrs\.0: must be an IPv4 address or CIDR/,
  );
  const erase = { kind: "diskErrors", op: "erase", errno: 5, afterOps: 0, probabilityPercent: 100 };
  await rejectsWith(invalid(erase), "INVALID_ARGUMENT", /^bad diskErrors: op: /);
  await rejectsWith(invalid({ kind: "pause", durationMs: 25 * 3600 * 1000 }), "INVALID_ARGUMENT", /durationMs/);
  await rejectsWith(invalid({ kind: "meltdown" }), "INVALID_ARGUMENT", /^bad meltdown: /);
  assert.deepEqual(validateFault({ kind: "reboot", extra: 1 } as unknown as FaultInput), { kind: "reboot" });
  await rejectsWith(invalid({ kind: "partition", cidrs: [], direction: "sideways" }), "INVALID_ARGUMENT", /direction/);
  await rejectsWith(invalid({ kind: "loss", percent: 5, cidrs: ["peer-1"] }), "INVALID_ARGUMENT", /cidrs\.0/);
});

test("peer-aimed faults say whom they are aimed at", () => {
  assert.deepEqual(PEER_FAULTS.map(describeFault), [
    "partition: drops what it sends to 10.213.0.5/32",
    "partition: drops what it receives from 10.213.0.5/32, 10.213.0.6/32",
    "loss 20% each way, to and from 10.213.0.7/32",
    "delay 50 ms towards the guest, from 10.213.0.0/24",
  ]);
});

test("instant faults are the ones with nothing to undo; every kind has a description", () => {
  assert.deepEqual(FAULT_KINDS.filter(isInstant), ["resume", "killVmm", "powerOff", "reboot", "killProcess"]);
  assert.deepEqual(
    FAULTS.map((fault) => describeFault(fault)),
    [
      "partition from 198.18.0.10/32, 10.0.0.0/8",
      "loss 33.25% each way",
      "delay 120 ms ± 7 ms towards the guest",
      "bandwidth 5000 kbit/s towards the guest",
      "pause",
      "resume",
      "killVmm",
      "powerOff",
      "reboot",
      "disk errors (errno 28) on writes after 1099511627776 more ops on 12.5% of 4 KiB blocks",
      "cpu throttled to 25% of one CPU",
      'signal 15 to processes named "sleep"',
      "frozen: pid 4242",
      "guest clock -3600000 ms",
      "guest clock strobed +500 ms and back every 100 ms",
      "guest filesystem of /mnt/data filled",
    ],
  );
});

test("the adapters' fault types are parts of the one union (checked by the compiler)", () => {
  const net: NetFault[] = [
    { kind: "partition", cidrs: [] },
    { kind: "loss", percent: 1 },
    { kind: "delay", ms: 1, jitterMs: 0 },
    { kind: "bandwidth", kbitPerSecond: 8 },
  ];
  const nft: NftFault[] = [net[0] as NftFault, { kind: "loss", percent: 1 }];
  const tc: TcFault[] = [
    { kind: "delay", ms: 1, jitterMs: 0 },
    { kind: "bandwidth", kbitPerSecond: 8 },
  ];
  const disk: DiskErrorRule = { op: "read", errno: 5, afterOps: 0, probabilityPercent: 100 };
  // @ts-expect-error a pause is no network fault
  const notNet: NetFault = { kind: "pause" };
  // @ts-expect-error loss is nft's, not tc's
  const notTc: TcFault = { kind: "loss", percent: 1 };
  assert.equal(net.length + nft.length + tc.length, 8);
  assert.ok(disk && notNet && notTc);
});
