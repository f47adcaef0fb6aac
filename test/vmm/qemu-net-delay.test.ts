// The in-QEMU delay's queue is bounded as netem's `limit` is: a guest flooding while delayed
// loses packets instead of growing the worker's memory for up to a minute.
import assert from "node:assert/strict";
import { test } from "node:test";
import { HeldPackets, MAX_HELD_PACKETS, PacketReader } from "../../worker/vmm/qemu/net-delay.js";

test("the queue holds at most MAX_HELD_PACKETS and drops (and counts) the rest, in order", () => {
  const held = new HeldPackets();
  for (let i = 0; i < MAX_HELD_PACKETS + 500; i++) held.add(Buffer.from([i & 0xff]));
  assert.equal(held.size, MAX_HELD_PACKETS);
  assert.equal(held.dropped, 500);
  assert.deepEqual(held.take(), Buffer.from([0]));
  assert.equal(held.add(Buffer.from([1])), true, "room again after one left");
  assert.equal(held.drain().length, MAX_HELD_PACKETS);
  assert.equal(held.size, 0);
});

test("the queue is bounded in bytes too", () => {
  const held = new HeldPackets(1000, 10_000);
  let accepted = 0;
  for (let i = 0; i < 20; i++) if (held.add(Buffer.alloc(1500))) accepted++;
  assert.equal(accepted, 6);
  assert.equal(held.dropped, 14);
});

test("a frame longer than any packet is refused by the reader (the caller drops the stream)", () => {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(1 << 30);
  assert.throws(() => new PacketReader().push(header), /redirector packet/);
});
