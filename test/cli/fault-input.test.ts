// inject-fault flags -> FaultInput, and the usage errors for missing values.
import assert from "node:assert/strict";
import { test } from "node:test";
import { faultFromFlags, formatFaultTable } from "../../cli/fault-input.js";

test("flags become the fault the worker expects", () => {
  assert.deepEqual(faultFromFlags({ kind: "loss", percent: 30, durationMs: 5000 }), { kind: "loss", percent: 30, durationMs: 5000 });
  assert.deepEqual(faultFromFlags({ kind: "partition", cidrs: ["10.0.0.0/8"] }), {
    kind: "partition",
    cidrs: ["10.0.0.0/8"],
    durationMs: 0,
  });
  assert.deepEqual(faultFromFlags({ kind: "diskErrors", op: "write", afterOps: 3 }), {
    kind: "diskErrors",
    op: "write",
    errno: 5,
    afterOps: 3,
    probabilityPercent: 0,
    durationMs: 0,
  });
  assert.deepEqual(faultFromFlags({ kind: "reboot" }), { kind: "reboot", durationMs: 0 });
  // Aimed at chosen peers: a one-way partition, loss and delay towards some addresses.
  assert.deepEqual(faultFromFlags({ kind: "partition", cidrs: ["10.213.0.5/32"], direction: "inbound" }), {
    kind: "partition",
    cidrs: ["10.213.0.5/32"],
    direction: "inbound",
    durationMs: 0,
  });
  assert.deepEqual(faultFromFlags({ kind: "loss", percent: 5, cidrs: ["10.213.0.5/32"] }), {
    kind: "loss",
    percent: 5,
    cidrs: ["10.213.0.5/32"],
    durationMs: 0,
  });
  assert.deepEqual(faultFromFlags({ kind: "delay", ms: 40, cidrs: ["10.213.0.5/32"] }), {
    kind: "delay",
    ms: 40,
    jitterMs: 0,
    cidrs: ["10.213.0.5/32"],
    durationMs: 0,
  });
});

test("a missing value or an unknown kind is INVALID_ARGUMENT", () => {
  assert.throws(() => faultFromFlags({ kind: "delay" }), /--kind delay needs --ms/);
  assert.throws(() => faultFromFlags({ kind: "flood" }), /unknown fault kind/);
});

test("the table shows id, kind, expiry and description", () => {
  const table = formatFaultTable([{ id: "fault-1", kind: "loss", description: "loss 30% each way", injectedAtMs: 1n, expiresAtMs: 0n }]);
  assert.match(table, /^FAULT\s+KIND\s+EXPIRES IN\s+DESCRIPTION\nfault-1\s+loss\s+-\s+loss 30% each way$/);
});
