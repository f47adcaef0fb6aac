// Files in a VM through its guest agent: what a call may hold, checked before anything reaches the
// guest, and the split of one call into the agent's frame-sized pieces.
import { AGENT_CHUNK_BYTES, type AgentConnection, type FileChunk } from "../ports/agent.js";
import type { FileWriteInput } from "./api.js";
import { invalidArgument } from "./errors.js";

export const FILE_LIMITS = {
  /** Bytes one writeFile or readFile call moves; bigger files take several calls, by offset. */
  maxCallBytes: 1024 * 1024,
  maxPathBytes: 4096,
  /** Pieces of one call in flight to the agent at once. */
  pipelinedChunks: 4,
} as const;

export function validatePath(path: string): string {
  if (!path.startsWith("/")) throw invalidArgument(`path "${path.slice(0, 80)}" is not absolute`);
  if (path.includes("\0")) throw invalidArgument("a path may not contain NUL");
  if (Buffer.byteLength(path) > FILE_LIMITS.maxPathBytes) throw invalidArgument(`path is longer than ${FILE_LIMITS.maxPathBytes} bytes`);
  return path;
}

export function validateOffset(offset: number, what = "offset"): number {
  if (!Number.isSafeInteger(offset) || offset < 0) throw invalidArgument(`${what} ${offset} is not a byte offset`);
  return offset;
}

export function validateWrite(write: FileWriteInput): Required<FileWriteInput> {
  validatePath(write.path);
  validateOffset(write.offset);
  if (write.data.length > FILE_LIMITS.maxCallBytes) {
    throw invalidArgument(`a write holds ${write.data.length} bytes (at most ${FILE_LIMITS.maxCallBytes}: write big files by offset)`);
  }
  validateOffset(write.offset + write.data.length, "end of the write");
  const mode = write.mode || 0o644;
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw invalidArgument(`mode ${mode} is not a permission mode`);
  return { path: write.path, offset: write.offset, data: write.data, mode, truncate: write.truncate ?? false };
}

/** Writes in frame-sized pieces, a few in flight at once. */
export async function writeInPieces(agent: AgentConnection, write: Required<FileWriteInput>): Promise<{ size: number }> {
  const pieces: Array<{ offset: number; data: Uint8Array }> = [];
  for (let at = 0; at < write.data.length || pieces.length === 0; at += AGENT_CHUNK_BYTES) {
    pieces.push({ offset: write.offset + at, data: write.data.subarray(at, at + AGENT_CHUNK_BYTES) });
  }
  // A truncating write's first piece goes alone: a later piece must not land before the cut.
  let size = 0;
  if (write.truncate) {
    ({ size } = await agent.writeFile({ path: write.path, mode: write.mode, truncate: true, ...pieces.shift()! }));
  }
  // The rest with a few in flight, so the channel never idles between answer and next request.
  let next = 0;
  const lane = async () => {
    while (next < pieces.length) {
      const piece = pieces[next++]!;
      size = Math.max(size, (await agent.writeFile({ path: write.path, mode: write.mode, ...piece })).size);
    }
  };
  await Promise.all(Array.from({ length: Math.min(FILE_LIMITS.pipelinedChunks, pieces.length) }, lane));
  return { size };
}

/** Reads up to maxBytes (at most FILE_LIMITS.maxCallBytes) from offset, in frame-sized pieces. */
export async function readInPieces(agent: AgentConnection, path: string, offset: number, maxBytes: number): Promise<FileChunk> {
  const wanted = Math.min(Math.max(0, maxBytes), FILE_LIMITS.maxCallBytes);
  const first = await agent.readFile(path, offset, Math.min(wanted, AGENT_CHUNK_BYTES));
  const parts = [first.data];
  let last = first;
  let at = offset + first.data.length;
  const end = Math.min(offset + wanted, first.size);
  // A short piece is the end of the file (or it shrank meanwhile): nothing after it is read, so
  // the answer is one contiguous run of bytes.
  let short = first.data.length < Math.min(wanted, AGENT_CHUNK_BYTES);
  while (!short && at < end) {
    const starts: number[] = [];
    for (let next = at; next < end && starts.length < FILE_LIMITS.pipelinedChunks; next += AGENT_CHUNK_BYTES) starts.push(next);
    const chunks = await Promise.all(starts.map((start) => agent.readFile(path, start, Math.min(AGENT_CHUNK_BYTES, end - start))));
    for (const [i, chunk] of chunks.entries()) {
      parts.push(chunk.data);
      at += chunk.data.length;
      last = chunk;
      if (chunk.data.length < Math.min(AGENT_CHUNK_BYTES, end - starts[i]!)) {
        short = true;
        break;
      }
    }
  }
  const data = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  return { data, size: last.size, eof: offset + data.length >= last.size };
}
