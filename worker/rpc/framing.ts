// Cap'n Proto standard stream framing: u32 (segment count - 1), u32 size in words per segment,
// padding to a word, then the segments. The decoder is incremental and checks the declared sizes
// against the limits before it buffers or allocates anything for the message.

export class FramingError extends Error {
  override name = "FramingError";
}

export interface FramingLimits {
  maxMessageBytes: number;
  maxSegments: number;
}

export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Total bytes of the message being received, once its header is known. */
  private expected = 0;
  private segmentWords: number[] = [];
  private headerBytes = 0;

  constructor(private readonly limits: FramingLimits) {}

  /** Feeds bytes; returns the complete messages as lists of segments. Throws FramingError on bad input. */
  push(chunk: Buffer): Buffer[][] {
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    const out: Buffer[][] = [];
    for (;;) {
      if (this.expected === 0 && !this.readHeader()) break;
      if (this.buffered < this.expected) break;
      out.push(this.takeMessage());
    }
    return out;
  }

  /** Bytes held for an incomplete message. */
  get pendingBytes(): number {
    return this.buffered;
  }

  /** Drops whatever is held (the connection is gone). */
  clear(): void {
    this.chunks = [];
    this.buffered = 0;
    this.expected = 0;
  }

  private readHeader(): boolean {
    if (this.buffered < 4) return false;
    const first = this.peek(4);
    const segmentCount = first.readUInt32LE(0) + 1;
    if (segmentCount > this.limits.maxSegments || segmentCount === 0) {
      throw new FramingError(`message declares ${segmentCount} segments (limit ${this.limits.maxSegments})`);
    }
    const headerBytes = 4 + segmentCount * 4 + (segmentCount % 2 === 0 ? 4 : 0);
    if (this.buffered < headerBytes) return false;
    const header = this.peek(headerBytes);
    let total = headerBytes;
    const words: number[] = new Array(segmentCount);
    for (let i = 0; i < segmentCount; i++) {
      const w = header.readUInt32LE(4 + i * 4);
      words[i] = w;
      total += w * 8;
      if (total > this.limits.maxMessageBytes) {
        throw new FramingError(`message larger than ${this.limits.maxMessageBytes} bytes`);
      }
    }
    if (words[0] === 0) throw new FramingError("first segment is empty (no root pointer)");
    this.expected = total;
    this.segmentWords = words;
    this.headerBytes = headerBytes;
    return true;
  }

  /** The first n buffered bytes as one Buffer (copies only when they span chunks). */
  private peek(n: number): Buffer {
    const head = this.chunks[0]!;
    if (head.length >= n) return head;
    const joined = Buffer.concat(this.chunks);
    this.chunks = [joined];
    return joined;
  }

  private takeMessage(): Buffer[] {
    const total = this.expected;
    let message: Buffer;
    const head = this.chunks[0]!;
    if (head.length >= total) {
      message = head.subarray(0, total);
      if (head.length === total) this.chunks.shift();
      else this.chunks[0] = head.subarray(total);
    } else {
      message = Buffer.allocUnsafe(total);
      let filled = 0;
      while (filled < total) {
        const chunk = this.chunks[0]!;
        const take = Math.min(chunk.length, total - filled);
        chunk.copy(message, filled, 0, take);
        filled += take;
        if (take === chunk.length) this.chunks.shift();
        else this.chunks[0] = chunk.subarray(take);
      }
    }
    this.buffered -= total;
    this.expected = 0;
    const segments: Buffer[] = new Array(this.segmentWords.length);
    let offset = this.headerBytes;
    for (let i = 0; i < this.segmentWords.length; i++) {
      const bytes = this.segmentWords[i]! * 8;
      segments[i] = message.subarray(offset, offset + bytes);
      offset += bytes;
    }
    return segments;
  }
}

/** Frames already-built segments (the builder produces framed buffers itself; this is for tests and tools). */
export function frameSegments(segments: readonly Uint8Array[]): Buffer {
  const count = segments.length;
  const headerBytes = 4 + count * 4 + (count % 2 === 0 ? 4 : 0);
  const header = Buffer.alloc(headerBytes);
  header.writeUInt32LE(count - 1, 0);
  segments.forEach((segment, i) => {
    if (segment.length % 8 !== 0) throw new Error("segment length must be a multiple of 8");
    header.writeUInt32LE(segment.length / 8, 4 + i * 4);
  });
  return Buffer.concat([header, ...segments]);
}
