// The host's agent frame decoder on hostile bytes: bounded, resynchronising only before the hello.
import assert from "node:assert/strict";
import { test } from "node:test";
import { AgentProtocolError, encodeFrame, FrameDecoder, FrameType, HEADER_BYTES, MAX_PAYLOAD } from "../../worker/agent/frame.js";

const frame = (stream: number, text: string) => encodeFrame({ type: FrameType.exit, stream, payload: Buffer.from(text) });

test("frames split anywhere come out whole and in order", () => {
  const bytes = Buffer.concat([frame(1, "one"), frame(2, ""), frame(3, "three")]);
  for (let cut = 0; cut <= bytes.length; cut++) {
    const decoder = new FrameDecoder();
    decoder.synced = true;
    const out = [...decoder.push(bytes.subarray(0, cut)), ...decoder.push(bytes.subarray(cut))];
    assert.deepEqual(
      out.map((entry) => [entry.stream, entry.payload.toString()]),
      [
        [1, "one"],
        [2, ""],
        [3, "three"],
      ],
    );
  }
});

test("before the hello, junk (even junk holding the magic) is skipped", () => {
  const decoder = new FrameDecoder();
  const junk = Buffer.concat([Buffer.from("boot noise PCR1\xff\xff\xff"), Buffer.from("PC")]);
  const out = decoder.push(Buffer.concat([junk, frame(7, "x")]));
  assert.deepEqual(
    out.map((entry) => entry.stream),
    [7],
  );
});

test("before the hello, skipping is bounded", () => {
  const decoder = new FrameDecoder(1000);
  assert.throws(() => decoder.push(Buffer.alloc(2000, 0x41)), AgentProtocolError);
});

test("once synced, a bad header breaks the channel", () => {
  const decoder = new FrameDecoder();
  decoder.synced = true;
  assert.throws(() => decoder.push(Buffer.from("garbage garbage garbage")), /without the magic/);
});

test("a declared payload over the bound is refused from its header, before any of it is buffered", () => {
  const decoder = new FrameDecoder();
  decoder.synced = true;
  const header = frame(1, "").subarray(0, HEADER_BYTES);
  header.writeUInt32BE(MAX_PAYLOAD + 1, 12);
  assert.throws(() => decoder.push(header), /at most/);
});

test("reserved bytes must be zero", () => {
  const decoder = new FrameDecoder();
  decoder.synced = true;
  const bytes = frame(1, "x");
  bytes[6] = 1;
  assert.throws(() => decoder.push(bytes), /reserved/);
});
