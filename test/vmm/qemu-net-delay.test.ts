// The in-QEMU delay's queue is bounded as netem's `limit` is: a guest flooding while delayed
// loses packets instead of growing the worker's memory for up to a minute. A delay QEMU refuses
// leaves nothing that fails later.
import assert from "node:assert/strict";
import { test } from "node:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { fromPeers, HeldPackets, MAX_HELD_PACKETS, PacketReader, QemuNetDelay } from "../../worker/vmm/qemu/net-delay.js";

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

test("a delay aimed at peers holds only IPv4 packets from their addresses; short or odd frames are not theirs", () => {
  /** A framed packet from `source` as QEMU hands it over: length, a 12-byte virtio-net header, Ethernet, IPv4. */
  const framed = (source: string, etherType = 0x0800, ipBytes = 20, vnetHeader = 12) => {
    const frame = Buffer.alloc(vnetHeader + 14 + ipBytes);
    frame.writeUInt16BE(etherType, vnetHeader + 12);
    if (ipBytes >= 16) {
      frame[vnetHeader + 14] = 0x45;
      Buffer.from(source.split(".").map(Number)).copy(frame, vnetHeader + 14 + 12);
    }
    const length = Buffer.alloc(4);
    length.writeUInt32BE(frame.length);
    return Buffer.concat([length, frame]);
  };
  const peers = fromPeers(["10.213.0.5/32", "10.214.0.0/16"]);
  assert.equal(peers(framed("10.213.0.5")), true);
  assert.equal(peers(framed("10.214.9.9")), true);
  assert.equal(peers(framed("10.214.9.9", 0x0800, 20, 10)), true, "a 10-byte virtio-net header");
  assert.equal(peers(framed("10.214.9.9", 0x0800, 20, 0)), true, "none");
  assert.equal(peers(framed("10.213.0.6")), false);
  assert.equal(peers(framed("10.213.0.5", 0x0806)), false, "ARP");
  assert.equal(peers(framed("10.213.0.5", 0x0800, 10)), false, "a runt");
  assert.equal(fromPeers([])(framed("1.2.3.4", 0x86dd)), true, "no peers named: everything is held");
  assert.equal(fromPeers(["0.0.0.0/0"])(framed("1.2.3.4")), true);
});

test("a delay QEMU refuses (chardev-add fails) is an error, and nothing rejects later: the worker would crash on it", async () => {
  const vmDir = await mkdtemp(join(tmpdir(), "pcr-delay-"));
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);
  process.on("unhandledRejection", onUnhandled);
  try {
    const execute = async (command: string) => {
      if (command === "chardev-add") throw new Error("Failed to connect to 'delay-out.sock': Permission denied");
      return {};
    };
    const delay = new QemuNetDelay(execute, vmDir, pino({ level: "silent" }));
    await assert.rejects(delay.start("f-1", 100, 0), /cannot delay the VM's network inside QEMU: .*Permission denied/);
    // The wait for QEMU's connection gives up after 5 s: its rejection must have been handled.
    await new Promise((resolve) => setTimeout(resolve, 5_500));
    assert.deepEqual(unhandled, []);
  } finally {
    process.off("unhandledRejection", onUnhandled);
    await rm(vmDir, { recursive: true, force: true });
  }
});
