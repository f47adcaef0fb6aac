import assert from "node:assert/strict";
import { test } from "node:test";
import { EventLog } from "../../worker/core/events.js";

test("events come in order with increasing seq, and since() pages through them", async () => {
  const log = new EventLog(100);
  log.append("vm-a", "creating");
  log.append("vm-a", "running");
  log.append("vm-a", "stopping");
  const first = await log.since(1n, 2, 0);
  assert.deepEqual(
    first.events.map((e) => e.status),
    ["creating", "running"],
  );
  const rest = await log.since(first.nextSeq, 10, 0);
  assert.deepEqual(
    rest.events.map((e) => e.status),
    ["stopping"],
  );
  assert.equal(rest.nextSeq, 4n);
});

test("since() waits for the next event, and times out empty", async () => {
  const log = new EventLog();
  setTimeout(() => log.append("vm-b", "failed", "killed"), 30);
  const started = Date.now();
  const got = await log.since(1n, 10, 5_000);
  assert.equal(got.events[0]?.reason, "killed");
  assert.ok(Date.now() - started < 1_000);
  const empty = await log.since(got.nextSeq, 10, 50);
  assert.deepEqual(empty.events, []);
  assert.equal(empty.nextSeq, got.nextSeq);
});

test("the log is bounded", async () => {
  const log = new EventLog(10);
  for (let i = 0; i < 25; i++) log.append("vm-c", "running");
  const all = await log.since(0n, 100, 0);
  assert.equal(all.events.length, 10);
  assert.equal(all.events[0]!.seq, 16n);
});
