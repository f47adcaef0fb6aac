import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { FrameDecoder, FramingError, frameSegments } from "../../worker/rpc/framing.js";
import { DEFAULT_LIMITS } from "../../worker/rpc/limits.js";
import {
  MalformedMessageError,
  MessageBuilder,
  MessageReader,
  readStructList,
  readText,
  readTextList,
  readStruct,
} from "../../worker/rpc/wire.js";

const limits = { maxMessageBytes: 1024 * 1024, maxSegments: 8 };

function sampleMessage(text: string): Buffer {
  const b = new MessageBuilder();
  const s = b.initStruct(b.root, 1, 2);
  b.setU32(s, 7);
  b.setText(s + 8, text);
  b.setTextList(s + 16, ["a", "bb", ""]);
  return b.finish();
}

describe("stream framing", () => {
  test("decodes messages split at every byte and glued together", () => {
    const one = sampleMessage("hello");
    const two = sampleMessage("world, a longer one");
    const stream = Buffer.concat([one, two, one]);
    const decoder = new FrameDecoder(limits);
    const got: Buffer[][] = [];
    for (let i = 0; i < stream.length; i++) got.push(...decoder.push(stream.subarray(i, i + 1)));
    assert.equal(got.length, 3);
    const texts = got.map((segments) => readText(new MessageReader(segments, DEFAULT_LIMITS).root(), 0));
    assert.deepEqual(texts, ["hello", "world, a longer one", "hello"]);
    assert.equal(decoder.pendingBytes, 0);
    assert.equal(new FrameDecoder(limits).push(stream).length, 3);
  });

  test("multi-segment frames with far pointers", () => {
    // Segment 0: root far pointer to a landing pad in segment 1 that points to a struct there.
    const seg0 = Buffer.alloc(8);
    seg0.writeUInt32LE((0 << 3) | 2, 0);
    seg0.writeUInt32LE(1, 4);
    const seg1 = Buffer.alloc(24);
    seg1.writeUInt32LE(0, 0); // struct pointer, offset 0
    seg1.writeUInt32LE(1 | (0 << 16), 4); // 1 data word, 0 pointers
    seg1.writeUInt32LE(0xdeadbeef, 8);
    const frames = new FrameDecoder(limits).push(frameSegments([seg0, seg1]));
    assert.equal(frames.length, 1);
    const root = new MessageReader(frames[0]!, DEFAULT_LIMITS).root();
    assert.equal(root.seg.readUInt32LE(root.data), 0xdeadbeef);
  });

  test("too many segments is rejected from the first 4 bytes", () => {
    const header = Buffer.alloc(4);
    header.writeUInt32LE(1000, 0);
    assert.throws(() => new FrameDecoder(limits).push(header), FramingError);
    header.writeUInt32LE(0xffffffff, 0);
    assert.throws(() => new FrameDecoder(limits).push(header), FramingError);
  });

  test("an oversized message is rejected from its header, before buffering", () => {
    const header = Buffer.alloc(8);
    header.writeUInt32LE(0, 0);
    header.writeUInt32LE(0xffffffff, 4);
    assert.throws(() => new FrameDecoder(limits).push(header), /larger than/);
    header.writeUInt32LE(limits.maxMessageBytes / 8, 4); // header + this is one word too many
    assert.throws(() => new FrameDecoder(limits).push(header), /larger than/);
  });

  test("an empty first segment is rejected", () => {
    assert.throws(() => new FrameDecoder(limits).push(Buffer.alloc(8)), FramingError);
  });
});

describe("wire reader limits", () => {
  const reader = (bytes: Buffer) => new MessageReader(new FrameDecoder(limits).push(bytes)[0]!, DEFAULT_LIMITS);

  test("a list pointer claiming 2^29 elements in a tiny message is rejected, not allocated", () => {
    const seg = Buffer.alloc(16);
    seg.writeUInt32LE(0, 0);
    seg.writeUInt32LE(0 | (1 << 16), 4); // root: 0 data words, 1 pointer
    seg.writeUInt32LE(1, 8); // list pointer, offset 0
    seg.writeUInt32LE((5 | ((2 ** 29 - 1) << 3)) >>> 0, 12); // 8-byte elements
    const root = reader(frameSegments([seg])).root();
    assert.throws(() => readTextList(root, 0), MalformedMessageError);
    // The same count of zero-sized elements fits in bounds but exhausts the traversal budget.
    seg.writeUInt32LE(((2 ** 29 - 1) << 3) >>> 0, 12);
    assert.throws(() => readStructList(reader(frameSegments([seg])).root(), 0), /traversal limit/);
  });

  test("composite list whose tag claims more elements than its words", () => {
    const seg = Buffer.alloc(32);
    seg.writeUInt32LE(0, 0);
    seg.writeUInt32LE(1 << 16, 4);
    seg.writeUInt32LE(1, 8);
    seg.writeUInt32LE(7 | (1 << 3), 12); // composite, 1 word
    seg.writeUInt32LE(((2 ** 29) << 2) >>> 0, 16); // tag: many elements
    seg.writeUInt32LE(1, 20); // 1 data word each
    assert.throws(() => readStructList(reader(frameSegments([seg])).root(), 0), /exceed/);
  });

  test("pointer cycles are stopped by the traversal or nesting limit", () => {
    // Root struct with one pointer that points back at the root struct.
    const seg = Buffer.alloc(16);
    seg.writeUInt32LE(0, 0);
    seg.writeUInt32LE(1 << 16, 4);
    seg.writeInt32LE((-2 << 2) | 0, 8); // offset -2 words: back to the root pointer's target
    seg.writeUInt32LE(1 << 16, 12);
    let s = reader(frameSegments([seg])).root();
    assert.throws(() => {
      for (;;) s = readStruct(s, 0)!;
    }, /nesting limit/);
  });

  test("out-of-bounds struct and text without NUL", () => {
    const seg = Buffer.alloc(16);
    seg.writeUInt32LE(0, 0);
    seg.writeUInt32LE(1 << 16, 4);
    seg.writeUInt32LE(4 << 2, 8);
    seg.writeUInt32LE(1, 12);
    assert.throws(() => readStruct(reader(frameSegments([seg])).root(), 0), /out of bounds/);
    seg.writeUInt32LE(1, 8);
    seg.writeUInt32LE(2 | (0 << 3), 12); // empty byte list: not a valid text
    assert.throws(() => readText(reader(frameSegments([seg])).root(), 0), /NUL/);
  });
});
