// `cp`: a file into or out of a guest, one side written `<id>:<path>`. Moved 1 MiB per call, a few
// calls in flight, so memory stays bounded whatever the file's size; "-" is stdin or stdout.
import { createReadStream, createWriteStream, statSync } from "node:fs";
import { basename, join } from "node:path";
import { once } from "node:events";
import type { FileChunk } from "../worker/core/api.js";
import type { WorkerClient } from "../worker/rpc/worker-client.js";
import { UsageError } from "./args.js";

const CALL_BYTES = 1024 * 1024;

export interface GuestPath {
  id: string;
  path: string;
}

/** `vm-1234:/etc/hosts` names a guest path; anything else is local. */
export function guestPath(arg: string): GuestPath | undefined {
  const match = /^(vm-[0-9a-f]+):(.*)$/.exec(arg);
  return match ? { id: match[1]!, path: match[2]! } : undefined;
}

export function parseCopy(src: string, dst: string): { upload: boolean; local: string; guest: GuestPath } {
  const from = guestPath(src);
  const to = guestPath(dst);
  if (Boolean(from) === Boolean(to)) throw new UsageError("cp: exactly one of <src> and <dst> is <id>:<path>");
  if (to) return { upload: true, local: src, guest: { ...to, path: to.path.endsWith("/") ? to.path + basename(src) : to.path } };
  const intoDirectory = dst !== "-" && (dst.endsWith("/") || isDirectory(dst));
  return { upload: false, local: intoDirectory ? join(dst, basename(from!.path)) : dst, guest: from! };
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false; // not there yet: it is the file to create
  }
}

/** Calls in flight at once: the channel to the guest never idles between an answer and the next call. */
const IN_FLIGHT = 4;

/** Runs `calls` with at most IN_FLIGHT at once; the first failure fails the whole copy. */
class Lanes {
  private readonly running = new Set<Promise<void>>();
  private failure: unknown;

  async add(call: () => Promise<void>): Promise<void> {
    while (this.running.size >= IN_FLIGHT) await Promise.race(this.running);
    this.check();
    const promise: Promise<void> = call().then(
      () => void this.running.delete(promise),
      (err: unknown) => {
        this.failure ??= err;
        this.running.delete(promise);
      },
    );
    this.running.add(promise);
  }

  async drain(): Promise<void> {
    await Promise.all(this.running);
    this.check();
  }

  private check(): void {
    if (this.failure !== undefined) throw this.failure;
  }
}

/** Sends the local file (or stdin) to the guest; answers the bytes written. */
export async function upload(client: WorkerClient, local: string, guest: GuestPath): Promise<number> {
  const mode = local === "-" ? 0o644 : statSync(local).mode & 0o7777;
  const input = local === "-" ? process.stdin : createReadStream(local, { highWaterMark: CALL_BYTES });
  const lanes = new Lanes();
  let offset = 0;
  let pending: Buffer = Buffer.alloc(0);
  const send = async (data: Buffer) => {
    const at = offset;
    offset += data.length;
    const write = () => client.writeFile(guest.id, { path: guest.path, offset: at, data, mode, truncate: at === 0 }).then(() => undefined);
    // The truncating first call goes alone: no later piece may land before the cut.
    if (at === 0) await write();
    else await lanes.add(write);
  };
  for await (const chunk of input as AsyncIterable<Buffer>) {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    while (pending.length >= CALL_BYTES) {
      await send(pending.subarray(0, CALL_BYTES));
      pending = pending.subarray(CALL_BYTES);
    }
  }
  if (pending.length > 0 || offset === 0) await send(pending);
  await lanes.drain();
  return offset;
}

/** Fetches the guest file into a local file (or stdout), in order; answers the bytes read. */
export async function download(client: WorkerClient, guest: GuestPath, local: string): Promise<number> {
  const first = await client.readFile(guest.id, guest.path, 0, CALL_BYTES);
  const target = local === "-" ? process.stdout : createWriteStream(local);
  const write = async (data: Uint8Array) => {
    if (data.length > 0 && !target.write(data)) await once(target, "drain");
  };
  let offset = first.data.length;
  try {
    await write(first.data);
    // Reads of the rest, a few ahead; written out in order. A short answer (the file shrank) ends it.
    const ahead: Promise<FileChunk>[] = [];
    let next = offset;
    let done = first.eof || first.data.length < CALL_BYTES;
    while (!done) {
      while (ahead.length < IN_FLIGHT && next < first.size) {
        ahead.push(client.readFile(guest.id, guest.path, next, CALL_BYTES));
        next += CALL_BYTES;
      }
      const chunk = await ahead.shift();
      if (!chunk) break;
      await write(chunk.data);
      offset += chunk.data.length;
      done = chunk.data.length < CALL_BYTES || chunk.eof;
    }
    // Reads still in flight after a short answer: awaited, their bytes not used.
    await Promise.allSettled(ahead);
  } finally {
    if (target !== process.stdout) {
      target.end();
      await once(target, "finish");
    }
  }
  return offset;
}
