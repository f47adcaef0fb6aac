// A raw-bytes peer for robustness tests: sends arbitrary frames, collects decoded replies.
import net from "node:net";
import { FrameDecoder } from "../../worker/rpc/framing.js";
import { DEFAULT_LIMITS } from "../../worker/rpc/limits.js";
import { MessageReader, type StructReader, readStruct, readU16, readU32, readText } from "../../worker/rpc/wire.js";

export interface Reply {
  tag: number;
  body: StructReader | null;
  root: StructReader;
}

export class RawPeer {
  readonly replies: Reply[] = [];
  closed = false;
  private readonly decoder = new FrameDecoder(DEFAULT_LIMITS);
  private waiters: Array<() => void> = [];

  private constructor(readonly socket: net.Socket) {
    socket.on("data", (chunk) => {
      for (const segments of this.decoder.push(chunk)) {
        const root = new MessageReader(segments, DEFAULT_LIMITS).root();
        this.replies.push({ tag: readU16(root, 0), body: readStruct(root, 0), root });
      }
      this.wake();
    });
    socket.on("close", () => {
      this.closed = true;
      this.wake();
    });
    socket.on("error", () => undefined);
  }

  static connect(path: string): Promise<RawPeer> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(path, () => resolve(new RawPeer(socket)));
      socket.once("error", reject);
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  send(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Waits until `predicate` holds over the replies (or the connection closes). */
  async until(predicate: (peer: RawPeer) => boolean, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate(this)) {
      if (this.closed) throw new Error("connection closed while waiting");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("timed out waiting for replies");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  waitClosed(timeoutMs = 5000): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("connection not closed")), timeoutMs);
      this.socket.once("close", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** The Return for a question, as {kind, reason, type}. */
  returnFor(questionId: number): { exception: boolean; reason: string; type: number } | undefined {
    for (const reply of this.replies) {
      if (reply.tag !== 3 || reply.body === null || readU32(reply.body, 0) !== questionId) continue;
      const exception = readU16(reply.body, 6) === 1;
      const e = exception ? readStruct(reply.body, 0) : null;
      return { exception, reason: e ? readText(e, 0) : "", type: e ? readU16(e, 4) : -1 };
    }
    return undefined;
  }

  close(): void {
    this.socket.destroy();
  }
}
