// What a member publishes besides its HostInfo (pcr_vms values, PCR_EVENTS messages) is read by
// gateways as hostile bytes: junk, oversized or out-of-range entries are INVALID_ARGUMENT.
import assert from "node:assert/strict";
import { test } from "node:test";
import { encodeFleetEvent, encodeVmLocation, parseFleetEvent, parseVmLocation, vmLocationOf } from "../../worker/fleet/records.js";
import { throwsWith } from "../helpers/errors.js";
import { sampleVm } from "../rpc/fake-worker.js";

const bytes = (value: unknown) => new TextEncoder().encode(typeof value === "string" ? value : JSON.stringify(value));

test("a VM's location and an event round-trip", () => {
  const location = vmLocationOf("h1", sampleVm(1));
  assert.deepEqual(parseVmLocation(encodeVmLocation(location)), location);
  assert.equal(location.view.idempotencyKey, "key 1 ~!", "its key kept, for a lost VM's view");
  assert.equal("idempotencyKey" in vmLocationOf("h1", sampleVm(2)).view, false, "none: absent, as older workers write it");
  const event = { hostId: "h1", vmId: "vm-0123456789abcdef", status: "running" as const, atMs: 1, reason: "", hostSeq: 3 };
  assert.deepEqual(parseFleetEvent(encodeFleetEvent(event)), event);
});

test("hostile locations are INVALID_ARGUMENT", () => {
  const good = vmLocationOf("h1", sampleVm(1));
  const bad: unknown[] = [
    "",
    "not json",
    "null",
    "[]",
    { ...good, hostId: "a.b" }, // a dot would be a NATS subject separator
    { ...good, hostId: "x".repeat(65) },
    { ...good, view: { ...good.view, id: "../../etc" } },
    { ...good, view: { ...good.view, memoryBytes: "-1" } },
    { ...good, view: { ...good.view, memoryBytes: 12 } },
    { ...good, view: { ...good.view, cpu: -1 } },
    { ...good, view: { ...good.view, hostname: "h".repeat(300) } },
    { ...good, view: { ...good.view, backend: "QEMU; rm -rf" } },
    { ...good, view: undefined },
    // The idempotency key a gateway shows for a lost VM: as a worker takes one, or refused.
    { ...good, view: { ...good.view, idempotencyKey: "k".repeat(129) } },
    { ...good, view: { ...good.view, idempotencyKey: "esc\u001b[2J" } },
    { ...good, view: { ...good.view, idempotencyKey: "ü" } },
    { ...good, view: { ...good.view, idempotencyKey: 7 } },
  ];
  for (const value of bad) throwsWith(() => parseVmLocation(bytes(value)), "INVALID_ARGUMENT", /vm location/);
  throwsWith(() => parseVmLocation(new Uint8Array(64 * 1024).fill(0x20)), "INVALID_ARGUMENT", /exceeds|bytes/);
});

test("hostile events are INVALID_ARGUMENT", () => {
  const good = { hostId: "h1", vmId: "vm-0123456789abcdef", status: "running", atMs: 1, reason: "", hostSeq: 3 };
  const bad: unknown[] = [
    "{",
    { ...good, status: "exploded" },
    { ...good, atMs: -5 },
    { ...good, atMs: 2 ** 60 },
    { ...good, hostSeq: 0 },
    { ...good, reason: "r".repeat(5000) },
    { ...good, vmId: "vm-1 2" },
    { ...good, hostId: "" },
  ];
  for (const value of bad) throwsWith(() => parseFleetEvent(bytes(value)), "INVALID_ARGUMENT", /fleet event/);
});
