// Every Fault union member through our builder and reader: tags, groups and Float64 fields survive.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { FaultInput } from "../../worker/core/api.js";
import { DEFAULT_LIMITS } from "../../worker/rpc/limits.js";
import { FrameDecoder } from "../../worker/rpc/framing.js";
import { MessageBuilder, MessageReader } from "../../worker/rpc/wire.js";
import { readFault, writeFault } from "../../worker/rpc/worker-codec.js";

const FAULTS: FaultInput[] = [
  { kind: "partition", cidrs: ["198.18.0.10/32", "10.0.0.0/8"], durationMs: 1500 },
  { kind: "partition", cidrs: [], durationMs: 0 },
  { kind: "loss", percent: 33.25, durationMs: 0 },
  { kind: "delay", ms: 120, jitterMs: 7, durationMs: 9 },
  { kind: "bandwidth", kbitPerSecond: 5_000_000_000, durationMs: 0 },
  { kind: "pause", durationMs: 4000 },
  { kind: "resume", durationMs: 0 },
  { kind: "killVmm", durationMs: 0 },
  { kind: "powerOff", durationMs: 0 },
  { kind: "reboot", durationMs: 0 },
  { kind: "diskErrors", op: "write", errno: 28, afterOps: 2 ** 40, probabilityPercent: 12.5, durationMs: 0 },
  { kind: "cpuThrottle", percent: 25, durationMs: 60_000 },
];

test("every fault kind round-trips through the wire codec", () => {
  for (const fault of FAULTS) {
    const b = new MessageBuilder();
    writeFault(b, b.root, fault);
    const segments = new FrameDecoder(DEFAULT_LIMITS).push(b.finish())[0]!;
    const root = new MessageReader(segments, DEFAULT_LIMITS).root();
    assert.deepEqual(readFault(root), fault, fault.kind); // the root pointer is the Fault itself
  }
});

test("an unknown union tag is INVALID_ARGUMENT, not a crash", () => {
  const b = new MessageBuilder();
  writeFault(b, b.root, { kind: "pause" });
  const bytes = b.finish();
  const segments = new FrameDecoder(DEFAULT_LIMITS).push(bytes)[0]!;
  const root = new MessageReader(segments, DEFAULT_LIMITS).root();
  root.seg.writeUInt16LE(99, root.data + 4);
  assert.throws(() => readFault(root), /unknown fault kind/);
});
