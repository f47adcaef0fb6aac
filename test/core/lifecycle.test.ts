import assert from "node:assert/strict";
import { test } from "node:test";
import { VM_STATUSES } from "../../worker/core/api.js";
import {
  acceptsFaults,
  assertTransition,
  canTransition,
  exitEndsVm,
  hasCounters,
  hearsPowerButton,
  HOLDINGS,
  holds,
  isLive,
  isWorkerStatus,
  TRANSITIONS,
  WORKER_STATUSES,
} from "../../worker/core/lifecycle.js";

test("the happy path and failure are allowed", () => {
  for (const [from, to] of [
    ["creating", "running"],
    ["running", "stopping"],
    ["stopping", "stopped"],
    ["creating", "failed"],
    ["running", "failed"],
    ["running", "paused"],
    ["paused", "running"],
  ] as const) {
    assert.ok(canTransition(from, to), `${from} -> ${to}`);
  }
});

test("final states stay final and nothing goes back to creating", () => {
  assert.deepEqual(TRANSITIONS.stopped, []);
  assert.deepEqual(TRANSITIONS.failed, []);
  for (const from of VM_STATUSES) assert.ok(!canTransition(from, "creating"));
  assert.throws(() => assertTransition("vm-x", "stopped", "running"), /FAILED_PRECONDITION|cannot go from stopped to running/);
});

test("live states are the ones with a VMM", () => {
  assert.deepEqual(VM_STATUSES.filter(isLive), ["creating", "running", "paused", "stopping"]);
});

test("what each status allows and holds, one answer per question", () => {
  assert.deepEqual(VM_STATUSES.filter(acceptsFaults), ["running", "paused"]);
  assert.deepEqual(VM_STATUSES.filter(hasCounters), ["running", "paused"]);
  assert.deepEqual(VM_STATUSES.filter(hearsPowerButton), ["running"]);
  assert.deepEqual(VM_STATUSES.filter(exitEndsVm), ["creating", "running", "paused"]);
  const held = Object.fromEntries(VM_STATUSES.map((status) => [status, HOLDINGS.filter((what) => holds(status, what))]));
  assert.deepEqual(held, {
    creating: ["secrets", "network", "cage"],
    running: ["ttl", "agent", "faults", "secrets", "network", "cage"],
    paused: ["ttl", "agent", "faults", "secrets", "network", "cage"],
    stopping: ["cage"],
    stopped: [],
    failed: [],
    lost: [],
  });
  // Nothing comes from nowhere but a create.
  assert.ok(canTransition(undefined, "creating"));
  assert.ok(!canTransition(undefined, "running"));
});

test("`lost` is a fleet gateway's status: a worker's VM never goes to or from it", () => {
  for (const from of VM_STATUSES) assert.ok(!canTransition(from, "lost"), `${from} -> lost`);
  assert.deepEqual(TRANSITIONS.lost, []);
  assert.ok(!canTransition(undefined, "lost"));
  assert.throws(() => assertTransition("vm-x", "running", "lost"), /FAILED_PRECONDITION|cannot go from running to lost/);
  assert.deepEqual(WORKER_STATUSES, ["creating", "running", "paused", "stopping", "stopped", "failed"]);
  assert.ok(isWorkerStatus("running"));
  for (const status of ["lost", "exploded", undefined, 5]) assert.ok(!isWorkerStatus(status), String(status));
});
