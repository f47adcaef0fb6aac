// The host's side of the agent's framed protocol (docs/agent-protocol.md; agent/frame.go is the
// guest's). Every byte comes from a guest, so the decoder checks each header before it buffers a
// payload, and holds at most one frame's worth of bytes.

export const HEADER_BYTES = 16;
export const MAX_PAYLOAD = 256 * 1024;
const MAGIC = Buffer.from("PCR1");

export const FrameType = {
  helloRequest: 1,
  hello: 2,
  exec: 3,
  exit: 4,
  error: 5,
  cancel: 6,
  fileWrite: 7,
  fileWritten: 8,
  fileRead: 9,
  fileData: 10,
  stat: 11,
  statResult: 12,
  list: 13,
  listResult: 14,
  processStart: 15,
  processStarted: 16,
  processRead: 17,
  processOutput: 18,
  processWrite: 19,
  ok: 20,
  processSignal: 21,
  processWait: 22,
  processStatus: 23,
  processResize: 24,
  fault: 25,
  faultDone: 26,
  personalize: 27,
  personalized: 28,
} as const;

export interface AgentFrame {
  type: number;
  stream: number;
  payload: Buffer;
}

export class AgentProtocolError extends Error {
  override name = "AgentProtocolError";
}

export function encodeFrame(frame: AgentFrame): Buffer {
  if (frame.payload.length > MAX_PAYLOAD)
    throw new RangeError(`agent frame payload of ${frame.payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  const header = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(header, 0);
  header[4] = frame.type;
  header.writeUInt32BE(frame.stream, 8);
  header.writeUInt32BE(frame.payload.length, 12);
  return Buffer.concat([header, frame.payload]);
}

/**
 * A payload of JSON and raw bytes (file and process data, which base64 would grow by a third):
 * a u32 big-endian length of the JSON, the JSON, then the bytes.
 */
export function encodeMixed(json: unknown, bytes: Uint8Array): Buffer {
  const text = Buffer.from(JSON.stringify(json));
  const length = Buffer.alloc(4);
  length.writeUInt32BE(text.length, 0);
  return Buffer.concat([length, text, bytes]);
}

export function decodeMixed(payload: Buffer): { json: Buffer; bytes: Buffer } {
  if (payload.length < 4) throw new AgentProtocolError("a mixed payload shorter than its length field");
  const length = payload.readUInt32BE(0);
  if (length > payload.length - 4) throw new AgentProtocolError(`a mixed payload's JSON of ${length} bytes overruns it`);
  return { json: payload.subarray(4, 4 + length), bytes: payload.subarray(4 + length) };
}

function headerProblem(header: Buffer): string | undefined {
  if (!header.subarray(0, 4).equals(MAGIC)) return "frame without the magic";
  if (header[5] !== 0 || header[6] !== 0 || header[7] !== 0) return "frame with reserved bytes set";
  const length = header.readUInt32BE(12);
  if (length > MAX_PAYLOAD) return `frame payload of ${length} bytes (at most ${MAX_PAYLOAD})`;
  return undefined;
}

/**
 * Incremental decoder. Until the channel marks it `synced` (at the agent's hello), bad headers
 * are skipped a byte at a time, at most `maxSkipBytes` in all: a channel can open mid-frame, as
 * virtio-serial drops what the guest wrote while no host listened. Once synced, any bad header
 * is an error: the channel is no longer trusted.
 */
export class FrameDecoder {
  private buffer: Buffer = Buffer.alloc(0);
  private skipped = 0;
  synced = false;

  constructor(private readonly maxSkipBytes = 1024 * 1024) {}

  push(chunk: Buffer): AgentFrame[] {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    const frames: AgentFrame[] = [];
    for (;;) {
      if (!this.synced && !this.skipToMagic()) break;
      if (this.buffer.length < HEADER_BYTES) break;
      const header = this.buffer.subarray(0, HEADER_BYTES);
      const problem = headerProblem(header);
      if (problem && this.synced) throw new AgentProtocolError(problem);
      if (problem) {
        // Junk that happened to hold the magic: look further.
        this.buffer = this.buffer.subarray(1);
        this.skipped += 1;
        continue;
      }
      const length = header.readUInt32BE(12);
      if (this.buffer.length < HEADER_BYTES + length) break;
      frames.push({
        type: header[4]!,
        stream: header.readUInt32BE(8),
        payload: Buffer.from(this.buffer.subarray(HEADER_BYTES, HEADER_BYTES + length)),
      });
      this.buffer = this.buffer.subarray(HEADER_BYTES + length);
    }
    return frames;
  }

  /** Drops bytes up to the first possible magic; false while more bytes are needed. */
  private skipToMagic(): boolean {
    const at = this.buffer.indexOf(MAGIC);
    // Keep a tail that may be the start of a magic split across chunks.
    const drop = at >= 0 ? at : Math.max(0, this.buffer.length - (MAGIC.length - 1));
    this.skipped += drop;
    this.buffer = this.buffer.subarray(drop);
    if (this.skipped > this.maxSkipBytes) throw new AgentProtocolError(`no frame in the first ${this.maxSkipBytes} bytes`);
    return at >= 0;
  }

  /** Bytes held for an incomplete frame. */
  get pendingBytes(): number {
    return this.buffer.length;
  }
}
