// A small, bounds-checked Cap'n Proto wire reader and a single-segment builder.
// Why not capnp-es here: its readers trust pointers (huge list counts get allocated, errors surface
// deep inside accessors) and its per-field object churn is slow. Every read below checks the
// pointer against its segment, charges the traversal budget and the nesting depth first.

export class MalformedMessageError extends Error {
  override name = "MalformedMessageError";
}

const malformed = (message: string): never => {
  throw new MalformedMessageError(message);
};

/** Element size codes of list pointers. */
export const enum ElementSize {
  Void = 0,
  Bit = 1,
  Byte = 2,
  TwoBytes = 3,
  FourBytes = 4,
  EightBytes = 5,
  Pointer = 6,
  Composite = 7,
}

const BITS_PER_ELEMENT = [0, 1, 8, 16, 32, 64, 64, 0];

export interface ReaderLimits {
  traversalLimitWords: number;
  nestingLimit: number;
}

/** A struct inside a received message. Fields beyond the sent sizes read as their defaults (zero). */
export interface StructReader {
  readonly msg: MessageReader;
  readonly seg: Buffer;
  readonly segId: number;
  /** Byte offset of the data section in seg. */
  readonly data: number;
  readonly dataBytes: number;
  /** Byte offset of the pointer section in seg. */
  readonly ptrs: number;
  readonly ptrCount: number;
  readonly depth: number;
}

export interface ListReader {
  readonly msg: MessageReader;
  readonly seg: Buffer;
  readonly segId: number;
  readonly elementSize: ElementSize;
  readonly length: number;
  /** Byte offset of element 0 (after the tag word for composite lists). */
  readonly start: number;
  /** Bytes per element, for composite lists data + pointers. */
  readonly stepBytes: number;
  readonly structDataBytes: number;
  readonly structPtrCount: number;
  readonly depth: number;
}

/** Where a pointer lives: the segment and byte offset of the pointer word. */
interface Resolved {
  segId: number;
  seg: Buffer;
  lo: number;
  hi: number;
  /** False for null and capability pointers. */
  isObject: boolean;
  /** Byte offset of the pointed-to object (struct/list pointers only). */
  target: number;
}

export class MessageReader {
  private traversalLeft: number;

  constructor(
    readonly segments: readonly Buffer[],
    readonly limits: ReaderLimits,
  ) {
    // Besides the configured cap, a message may not make us visit more than a few times its own
    // size: that bounds what tiny messages full of zero-sized list elements can cost.
    let words = 0;
    for (const segment of segments) words += segment.length / 8;
    this.traversalLeft = Math.min(limits.traversalLimitWords, words * 4 + 1024);
  }

  /** Charges the traversal budget for a read of `words` words. */
  charge(words: number): void {
    this.traversalLeft -= words === 0 ? 1 : words;
    if (this.traversalLeft < 0) malformed("traversal limit exceeded");
  }

  root(): StructReader {
    const seg = this.segments[0];
    if (!seg || seg.length < 8) return malformed("message has no root pointer");
    return this.structAt(0, 0, 0) ?? emptyStruct(this);
  }

  /** Follows the pointer word at (segId, byteOffset), resolving far pointers. */
  resolve(segId: number, offset: number): Resolved {
    const seg = this.segments[segId]!;
    const lo = seg.readUInt32LE(offset);
    const hi = seg.readUInt32LE(offset + 4);
    const kind = lo & 3;
    if (kind === 2) return this.resolveFar(lo, hi);
    if (kind === 3 || (lo === 0 && hi === 0)) return { segId, seg, lo, hi, isObject: false, target: -1 };
    return { segId, seg, lo, hi, isObject: true, target: offset + 8 + (lo >> 2) * 8 };
  }

  private resolveFar(lo: number, hi: number): Resolved {
    const padSeg = this.segments[hi];
    if (!padSeg) return malformed("far pointer to a missing segment");
    const padOffset = (lo >>> 3) * 8;
    const doubleFar = (lo & 4) !== 0;
    if (padOffset + (doubleFar ? 16 : 8) > padSeg.length) malformed("far pointer landing pad out of bounds");
    this.charge(1);
    const padLo = padSeg.readUInt32LE(padOffset);
    const padHi = padSeg.readUInt32LE(padOffset + 4);
    if (!doubleFar) {
      const kind = padLo & 3;
      if (kind === 2) malformed("far pointer lands on another far pointer");
      if (kind === 3 || (padLo === 0 && padHi === 0)) return { segId: hi, seg: padSeg, lo: padLo, hi: padHi, isObject: false, target: -1 };
      return { segId: hi, seg: padSeg, lo: padLo, hi: padHi, isObject: true, target: padOffset + 8 + (padLo >> 2) * 8 };
    }
    if ((padLo & 7) !== 2) malformed("double-far landing pad is not a single far pointer");
    const contentSeg = this.segments[padHi];
    if (!contentSeg) return malformed("double-far pointer to a missing segment");
    const tagLo = padSeg.readUInt32LE(padOffset + 8);
    const tagHi = padSeg.readUInt32LE(padOffset + 12);
    if ((tagLo & 3) > 1 || tagLo >>> 2 !== 0) malformed("double-far tag is not a struct/list tag with zero offset");
    return { segId: padHi, seg: contentSeg, lo: tagLo, hi: tagHi, isObject: true, target: (padLo >>> 3) * 8 };
  }

  /** Reads the struct the pointer at (segId, offset) points to; null for a null pointer. */
  structAt(segId: number, offset: number, depth: number): StructReader | null {
    if (depth > this.limits.nestingLimit) malformed("nesting limit exceeded");
    const p = this.resolve(segId, offset);
    if (!p.isObject) {
      if (p.lo === 0 && p.hi === 0) return null;
      return malformed("expected a struct pointer, found a capability");
    }
    if ((p.lo & 3) !== 0) malformed("expected a struct pointer, found a list");
    const dataWords = p.hi & 0xffff;
    const ptrCount = p.hi >>> 16;
    const words = dataWords + ptrCount;
    if (p.target < 0 || p.target + words * 8 > p.seg.length) malformed("struct pointer out of bounds");
    this.charge(words);
    return {
      msg: this,
      seg: p.seg,
      segId: p.segId,
      data: p.target,
      dataBytes: dataWords * 8,
      ptrs: p.target + dataWords * 8,
      ptrCount,
      depth: depth + 1,
    };
  }

  /** Reads the list the pointer at (segId, offset) points to; null for a null pointer. */
  listAt(segId: number, offset: number, depth: number): ListReader | null {
    if (depth > this.limits.nestingLimit) malformed("nesting limit exceeded");
    const p = this.resolve(segId, offset);
    if (!p.isObject) {
      if (p.lo === 0 && p.hi === 0) return null;
      return malformed("expected a list pointer, found a capability");
    }
    if ((p.lo & 3) !== 1) malformed("expected a list pointer, found a struct");
    const elementSize = (p.hi & 7) as ElementSize;
    const count = p.hi >>> 3;
    if (elementSize === ElementSize.Composite) {
      // count is the word count of the elements; the tag word in front gives the element count.
      if (p.target < 0 || p.target + 8 + count * 8 > p.seg.length) malformed("list pointer out of bounds");
      const tagLo = p.seg.readUInt32LE(p.target);
      const tagHi = p.seg.readUInt32LE(p.target + 4);
      if ((tagLo & 3) !== 0) malformed("composite list tag is not a struct tag");
      const length = tagLo >>> 2;
      const dataWords = tagHi & 0xffff;
      const ptrCount = tagHi >>> 16;
      const step = dataWords + ptrCount;
      if (length * step > count) malformed("composite list elements exceed the list size");
      // Zero-sized elements still cost one word each, so a tiny message cannot claim 2^29 of them.
      this.charge(step === 0 ? length : count);
      return {
        msg: this,
        seg: p.seg,
        segId: p.segId,
        elementSize,
        length,
        start: p.target + 8,
        stepBytes: step * 8,
        structDataBytes: dataWords * 8,
        structPtrCount: ptrCount,
        depth: depth + 1,
      };
    }
    const bits = BITS_PER_ELEMENT[elementSize]!;
    const bytes = Math.ceil((count * bits) / 64) * 8;
    if (p.target < 0 || p.target + bytes > p.seg.length) malformed("list pointer out of bounds");
    this.charge(bits === 0 ? count : bytes / 8);
    const isPointers = elementSize === ElementSize.Pointer;
    return {
      msg: this,
      seg: p.seg,
      segId: p.segId,
      elementSize,
      length: count,
      start: p.target,
      stepBytes: bits / 8,
      structDataBytes: isPointers ? 0 : bits / 8,
      structPtrCount: isPointers ? 1 : 0,
      depth: depth + 1,
    };
  }
}

export function emptyStruct(msg: MessageReader): StructReader {
  return { msg, seg: msg.segments[0]!, segId: 0, data: 0, dataBytes: 0, ptrs: 0, ptrCount: 0, depth: 1 };
}

// ---- struct field access ----

export const readU8 = (s: StructReader, byteOffset: number): number => (byteOffset + 1 <= s.dataBytes ? s.seg[s.data + byteOffset]! : 0);
export const readU16 = (s: StructReader, byteOffset: number): number =>
  byteOffset + 2 <= s.dataBytes ? s.seg.readUInt16LE(s.data + byteOffset) : 0;
export const readU32 = (s: StructReader, byteOffset: number): number =>
  byteOffset + 4 <= s.dataBytes ? s.seg.readUInt32LE(s.data + byteOffset) : 0;
export const readU64 = (s: StructReader, byteOffset: number): bigint =>
  byteOffset + 8 <= s.dataBytes ? s.seg.readBigUInt64LE(s.data + byteOffset) : 0n;
export const readBool = (s: StructReader, bit: number, defaultValue = false): boolean => {
  const byte = bit >>> 3;
  if (byte >= s.dataBytes) return defaultValue;
  return (((s.seg[s.data + byte]! >>> (bit & 7)) & 1) === 1) !== defaultValue;
};

/** Byte offset of pointer `index` of s, or -1 when the sender's struct has fewer pointers. */
export const pointerOffset = (s: StructReader, index: number): number => (index < s.ptrCount ? s.ptrs + index * 8 : -1);

export const isNullPointer = (s: StructReader, index: number): boolean => {
  const at = pointerOffset(s, index);
  return at < 0 || (s.seg.readUInt32LE(at) === 0 && s.seg.readUInt32LE(at + 4) === 0);
};

export function readStruct(s: StructReader, index: number): StructReader | null {
  const at = pointerOffset(s, index);
  return at < 0 ? null : s.msg.structAt(s.segId, at, s.depth);
}

export function readList(s: StructReader, index: number): ListReader | null {
  const at = pointerOffset(s, index);
  return at < 0 ? null : s.msg.listAt(s.segId, at, s.depth);
}

function byteListBytes(list: ListReader | null): Buffer | null {
  if (list === null) return null;
  if (list.elementSize !== ElementSize.Byte) malformed("expected a list of bytes");
  return list.seg.subarray(list.start, list.start + list.length);
}

export function readText(s: StructReader, index: number): string {
  const bytes = byteListBytes(readList(s, index));
  if (bytes === null) return "";
  if (bytes.length === 0 || bytes[bytes.length - 1] !== 0) malformed("text is not NUL-terminated");
  return bytes.toString("utf8", 0, bytes.length - 1);
}

/** Data as a copy the caller owns (the frame buffer may be shared). */
export function readData(s: StructReader, index: number): Uint8Array {
  const bytes = byteListBytes(readList(s, index));
  return bytes === null ? new Uint8Array(0) : new Uint8Array(bytes);
}

/** Capability index of a capability pointer; -1 for null. */
export function readCapabilityIndex(s: StructReader, index: number): number {
  const at = pointerOffset(s, index);
  if (at < 0) return -1;
  const p = s.msg.resolve(s.segId, at);
  if (p.lo === 0 && p.hi === 0) return -1;
  if ((p.lo & 3) !== 3 || p.lo !== 3) return malformed("expected a capability pointer");
  return p.hi;
}

/** Element i of a list of structs. */
export function listStruct(list: ListReader, i: number): StructReader {
  if (list.elementSize === ElementSize.Composite) {
    const data = list.start + i * list.stepBytes;
    return {
      msg: list.msg,
      seg: list.seg,
      segId: list.segId,
      data,
      dataBytes: list.structDataBytes,
      ptrs: data + list.structDataBytes,
      ptrCount: list.structPtrCount,
      depth: list.depth,
    };
  }
  if (list.elementSize === ElementSize.Bit || list.elementSize === ElementSize.Void) {
    return malformed("expected a list of structs");
  }
  // A primitive or pointer list read as structs (allowed by the encoding spec for upgrades).
  const data = list.start + i * list.stepBytes;
  return {
    msg: list.msg,
    seg: list.seg,
    segId: list.segId,
    data,
    dataBytes: list.structDataBytes,
    ptrs: data + list.structDataBytes,
    ptrCount: list.structPtrCount,
    depth: list.depth,
  };
}

function checkLength(list: ListReader | null, maxLength: number): void {
  if (list !== null && list.length > maxLength) malformed(`list of ${list.length} elements exceeds the limit of ${maxLength}`);
}

/** A list of structs; `maxLength` caps how many elements a decoder will turn into objects. */
export function readStructList(s: StructReader, index: number, maxLength = Infinity): ListReader | null {
  const list = readList(s, index);
  checkLength(list, maxLength);
  if (list !== null && (list.elementSize === ElementSize.Bit || list.elementSize === ElementSize.Void) && list.length > 0) {
    malformed("expected a list of structs");
  }
  return list;
}

export function readTextList(s: StructReader, index: number, maxLength = Infinity): string[] {
  const list = readList(s, index);
  if (list === null) return [];
  checkLength(list, maxLength);
  if (list.elementSize !== ElementSize.Pointer) return malformed("expected a list of text");
  const out: string[] = new Array(list.length);
  for (let i = 0; i < list.length; i++) {
    const element: StructReader = {
      msg: list.msg,
      seg: list.seg,
      segId: list.segId,
      data: list.start + i * 8,
      dataBytes: 0,
      ptrs: list.start + i * 8,
      ptrCount: 1,
      depth: list.depth,
    };
    out[i] = readText(element, 0);
  }
  return out;
}

// ---- building ----

const HEADER_BYTES = 8;

// The builder writes through typed-array views of its own (offset 0) ArrayBuffer, which assumes a
// little-endian host, as Cap'n Proto's wire format is little-endian.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error("rpc builder requires a little-endian host");

/**
 * Builds one single-segment message into one growing Buffer that already holds the stream framing
 * header, so sending it is a single write. Offsets are absolute byte offsets in that buffer.
 */
export class MessageBuilder {
  private buf!: Buffer;
  private u16!: Uint16Array;
  private u32!: Uint32Array;
  private u64!: BigUint64Array;
  private end: number;
  /** Offset of the root pointer. */
  readonly root = HEADER_BYTES;

  constructor(initialBytes = 512) {
    this.setBuffer(new ArrayBuffer(Math.max(64, (initialBytes + 7) & ~7)));
    this.end = HEADER_BYTES + 8;
  }

  private setBuffer(memory: ArrayBuffer): void {
    this.buf = Buffer.from(memory);
    this.u16 = new Uint16Array(memory);
    this.u32 = new Uint32Array(memory);
    this.u64 = new BigUint64Array(memory);
  }

  /** Reserves zeroed words; returns their byte offset. */
  alloc(words: number): number {
    const offset = this.end;
    const need = offset + words * 8;
    if (need > this.buf.length) {
      let size = this.buf.length * 2;
      while (size < need) size *= 2;
      const old = this.buf;
      this.setBuffer(new ArrayBuffer(size));
      old.copy(this.buf, 0, 0, this.end);
    }
    this.end = need;
    return offset;
  }

  get byteLength(): number {
    return this.end;
  }

  private setPointer(at: number, target: number, kind: number, hi: number): void {
    const offsetWords = (target - at - 8) / 8;
    this.u32[at >>> 2] = (offsetWords << 2) | kind;
    this.u32[(at >>> 2) + 1] = hi;
  }

  /** Allocates a struct, points `at` to it; returns the data section offset (pointers follow it). */
  initStruct(at: number, dataWords: number, ptrCount: number): number {
    if (dataWords + ptrCount === 0) {
      // Zero-sized structs point at themselves (offset -1) so they differ from a null pointer.
      this.u32[at >>> 2] = 0xfffffffc;
      this.u32[(at >>> 2) + 1] = 0;
      return at;
    }
    const target = this.alloc(dataWords + ptrCount);
    this.setPointer(at, target, 0, dataWords | (ptrCount << 16));
    return target;
  }

  /** Allocates a list of primitives or pointers; returns the offset of element 0. */
  initList(at: number, elementSize: ElementSize, length: number): number {
    const bits = BITS_PER_ELEMENT[elementSize]!;
    const target = this.alloc(Math.ceil((length * bits) / 64));
    this.setPointer(at, target, 1, elementSize | (length << 3));
    return target;
  }

  /** Allocates a composite list; returns the offset of element 0 (each element is data then pointers). */
  initStructList(at: number, length: number, dataWords: number, ptrCount: number): number {
    const words = length * (dataWords + ptrCount);
    const tag = this.alloc(1 + words);
    this.setPointer(at, tag, 1, ElementSize.Composite | (words << 3));
    this.u32[tag >>> 2] = length << 2;
    this.u32[(tag >>> 2) + 1] = dataWords | (ptrCount << 16);
    return tag + 8;
  }

  setText(at: number, value: string): void {
    const n = value.length;
    if (n <= 64) {
      // Short ASCII strings are copied by hand: cheaper than two calls into native code.
      const mark = this.end;
      const target = this.initList(at, ElementSize.Byte, n + 1);
      const buf = this.buf;
      let i = 0;
      for (; i < n; i++) {
        const c = value.charCodeAt(i);
        if (c >= 0x80) break;
        buf[target + i] = c;
      }
      if (i === n) return;
      buf.fill(0, target, this.end); // not ASCII after all: undo and take the general path
      this.end = mark;
    }
    const length = Buffer.byteLength(value, "utf8");
    const target = this.initList(at, ElementSize.Byte, length + 1);
    this.buf.write(value, target, length, "utf8");
  }

  setData(at: number, value: Uint8Array): void {
    const target = this.initList(at, ElementSize.Byte, value.length);
    this.buf.set(value, target);
  }

  setTextList(at: number, values: readonly string[]): void {
    const start = this.initList(at, ElementSize.Pointer, values.length);
    for (let i = 0; i < values.length; i++) this.setText(start + i * 8, values[i]!);
  }

  setCapability(at: number, index: number): void {
    this.u32[at >>> 2] = 3;
    this.u32[(at >>> 2) + 1] = index;
  }

  // Field setters: offsets are naturally aligned in Cap'n Proto layouts.
  setU8(at: number, value: number): void {
    this.buf[at] = value;
  }
  setU16(at: number, value: number): void {
    this.u16[at >>> 1] = value;
  }
  setU32(at: number, value: number): void {
    this.u32[at >>> 2] = value;
  }
  setU64(at: number, value: bigint): void {
    this.u64[at >>> 3] = value;
  }
  /** Sets a bool stored XOR its default (pass the schema default). */
  setBool(at: number, bit: number, value: boolean, defaultValue = false): void {
    const byte = at + (bit >>> 3);
    const mask = 1 << (bit & 7);
    if (value !== defaultValue) this.buf[byte]! |= mask;
    else this.buf[byte]! &= ~mask;
  }

  /** Raw bytes, for copying. */
  writeBytes(at: number, bytes: Uint8Array): void {
    this.buf.set(bytes, at);
  }

  /** The framed message: segment-count header and the one segment. */
  finish(): Buffer {
    this.u32[0] = 0;
    this.u32[1] = (this.end - HEADER_BYTES) / 8;
    return this.buf.subarray(0, this.end);
  }
}

/** Deep-copies the object the pointer at `src` points to into the pointer at `dst` (used to echo messages). */
export function copyPointer(msg: MessageReader, segId: number, src: number, depth: number, b: MessageBuilder, dst: number): void {
  const p = msg.resolve(segId, src);
  if (!p.isObject) {
    if ((p.lo & 3) === 3) b.setCapability(dst, p.hi);
    return;
  }
  if ((p.lo & 3) === 0) {
    const s = msg.structAt(segId, src, depth)!;
    const dataWords = s.dataBytes / 8;
    const out = b.initStruct(dst, dataWords, s.ptrCount);
    b.writeBytes(out, s.seg.subarray(s.data, s.data + s.dataBytes));
    for (let i = 0; i < s.ptrCount; i++) copyPointer(msg, s.segId, s.ptrs + i * 8, s.depth, b, out + s.dataBytes + i * 8);
    return;
  }
  const list = msg.listAt(segId, src, depth)!;
  if (list.elementSize === ElementSize.Composite) {
    const out = b.initStructList(dst, list.length, list.structDataBytes / 8, list.structPtrCount);
    for (let i = 0; i < list.length; i++) {
      const element = listStruct(list, i);
      const at = out + i * list.stepBytes;
      b.writeBytes(at, element.seg.subarray(element.data, element.data + element.dataBytes));
      for (let j = 0; j < element.ptrCount; j++) {
        copyPointer(msg, element.segId, element.ptrs + j * 8, element.depth, b, at + element.dataBytes + j * 8);
      }
    }
    return;
  }
  const out = b.initList(dst, list.elementSize, list.length);
  if (list.elementSize === ElementSize.Pointer) {
    for (let i = 0; i < list.length; i++) copyPointer(msg, list.segId, list.start + i * 8, list.depth, b, out + i * 8);
    return;
  }
  const bytes = Math.ceil((list.length * BITS_PER_ELEMENT[list.elementSize]!) / 8);
  b.writeBytes(out, list.seg.subarray(list.start, list.start + bytes));
}
