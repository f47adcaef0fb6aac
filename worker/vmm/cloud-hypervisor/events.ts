// Cloud Hypervisor's event monitor writes one JSON object per event, pretty-printed and simply
// concatenated (no framing, no one-object-per-line guarantee). This splits that stream
// incrementally, tails the event file the VMM writes, and validates each event with zod.
import { open, type FileHandle } from "node:fs/promises";
import { StringDecoder } from "node:string_decoder";
import { z } from "zod";

export const chEventSchema = z.object({
  timestamp: z.object({ secs: z.number().int().nonnegative(), nanos: z.number().int().nonnegative() }).optional(),
  source: z.string(),
  event: z.string(),
  properties: z.record(z.string(), z.unknown()).nullable().optional(),
});
export type ChEvent = z.infer<typeof chEventSchema>;

/**
 * Splits a stream of concatenated JSON objects. Feed text chunks in any split; complete objects
 * come out in order. Braces inside strings (and escaped quotes) are not mistaken for structure.
 */
export class JsonObjectStream {
  private pending = "";
  /** Scan position inside `pending`, so a long object split over many chunks is scanned once. */
  private scanned = 0;
  private depth = 0;
  private inString = false;
  private escaped = false;
  private start = -1;

  /** Returns the objects completed by this chunk; throws on text that is not JSON objects. */
  push(chunk: string): unknown[] {
    this.pending += chunk;
    const out: unknown[] = [];
    let i = this.scanned;
    for (; i < this.pending.length; i++) {
      const c = this.pending[i]!;
      if (this.depth === 0) {
        if (c === "{") {
          this.start = i;
          this.depth = 1;
        } else if (!/\s/.test(c)) {
          throw new Error(`event stream: unexpected ${JSON.stringify(c)} between objects`);
        }
        continue;
      }
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === "\\") this.escaped = true;
        else if (c === '"') this.inString = false;
        continue;
      }
      if (c === '"') this.inString = true;
      else if (c === "{" || c === "[") this.depth++;
      else if (c === "}" || c === "]") {
        this.depth--;
        if (this.depth === 0) {
          out.push(JSON.parse(this.pending.slice(this.start, i + 1)));
          this.pending = this.pending.slice(i + 1);
          i = -1;
          this.start = -1;
        }
      }
    }
    this.scanned = this.pending.length;
    if (this.depth === 0) {
      this.pending = "";
      this.scanned = 0;
    }
    return out;
  }

  /** Bytes of an object still incomplete (for diagnostics). */
  get bufferedLength(): number {
    return this.pending.length;
  }
}

/** Parses validated events from a stream; what is not a valid event goes to `onInvalid`. */
export class ChEventParser {
  private readonly objects = new JsonObjectStream();
  constructor(private readonly onInvalid: (value: unknown, reason: string) => void = () => {}) {}

  push(chunk: string): ChEvent[] {
    const events: ChEvent[] = [];
    for (const value of this.objects.push(chunk)) {
      const parsed = chEventSchema.safeParse(value);
      if (parsed.success) events.push(parsed.data);
      else this.onInvalid(value, parsed.error.message);
    }
    return events;
  }
}

export interface EventTail {
  /** Reads whatever the file holds now (e.g. the last events of a VMM that just exited). */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Follows the event file the VMM appends to (a regular file, so that a restarted worker can read it
 * again and the VMM never blocks on a reader). Polls for growth; reads from the start. Events that
 * end before `liveFrom` (the file's size when a restarted worker adopted the VMM) are history:
 * they come with `historic` set, so that a state change long past is not acted on again.
 */
export function tailEventFile(
  path: string,
  onEvent: (event: ChEvent, historic: boolean) => void,
  options: { intervalMs?: number; onError?: (err: Error) => void; liveFrom?: number } = {},
): EventTail {
  const liveFrom = options.liveFrom ?? 0;
  // Events only nudge waiters (they also poll vm.info), so a relaxed interval is enough.
  const intervalMs = options.intervalMs ?? 200;
  const parser = new ChEventParser((value, reason) => options.onError?.(new Error(`invalid event ${JSON.stringify(value)}: ${reason}`)));
  const decoder = new StringDecoder("utf8");
  let offset = 0;
  let handle: FileHandle | undefined;
  let closed = false;
  let broken = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();

  const readMore = async () => {
    if (closed || broken) return;
    try {
      handle ??= await open(path, "r");
    } catch {
      return; // not created yet: the VMM creates it at start
    }
    const buffer = Buffer.alloc(65536);
    for (;;) {
      // A read never crosses liveFrom, so every event it completes is wholly history or not.
      const length = offset < liveFrom ? Math.min(buffer.length, liveFrom - offset) : buffer.length;
      const { bytesRead } = await handle.read(buffer, 0, length, offset);
      if (bytesRead === 0) return;
      offset += bytesRead;
      const historic = offset <= liveFrom;
      try {
        for (const event of parser.push(decoder.write(buffer.subarray(0, bytesRead)))) onEvent(event, historic);
      } catch (err) {
        broken = true; // garbage in the stream: stop following it, vm.info still works
        options.onError?.(err as Error);
        return;
      }
    }
  };
  // One read at a time: the poll timer and flush() must not read the same bytes twice.
  const readSerially = () => (running = running.then(readMore, readMore));
  const tick = () => {
    readSerially()
      .catch((err: Error) => options.onError?.(err))
      .finally(() => {
        if (!closed) {
          timer = setTimeout(tick, intervalMs);
          timer.unref();
        }
      });
  };
  tick();
  return {
    async flush() {
      await readSerially().catch(() => undefined); // a failed read is retried by the next tick
    },
    async close() {
      closed = true;
      clearTimeout(timer);
      // Closing: the follower's own failures were its ticks', and the file is ours alone.
      await running.catch(() => undefined);
      await handle?.close().catch(() => undefined);
    },
  };
}
