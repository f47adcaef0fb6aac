// A small QMP client: one unix-socket connection, commands matched to replies by id, events emitted.
import { EventEmitter } from "node:events";
import { connect, type Socket } from "node:net";

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** Microseconds since the epoch, as QEMU stamped it. */
  timestampUs: number;
}

export class QmpError extends Error {
  constructor(
    readonly errorClass: string,
    message: string,
  ) {
    super(message);
    this.name = "QmpError";
  }
}

/** The connection closed, or a command got no reply in time. */
export class QmpConnectionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "QmpConnectionError";
  }
}

interface Pending {
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
  command: string;
}

export interface QmpClientEvents {
  event: [QmpEvent];
  close: [];
}

export class QmpClient extends EventEmitter<QmpClientEvents> {
  private buffer = "";
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closedReason: string | undefined;
  /** Resolves when the connection is gone, whoever closed it. */
  readonly closed: Promise<void>;
  private greetingWaiter: { resolve(): void; reject(err: Error): void } | undefined;

  private constructor(
    private readonly socket: Socket,
    readonly path: string,
  ) {
    super();
    this.closed = new Promise((resolve) => socket.once("close", () => resolve()));
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => this.onData(chunk));
    socket.on("error", () => undefined); // "close" follows and does the work
    socket.on("close", () => this.onClose());
  }

  /**
   * Connects, reads the greeting and negotiates capabilities. One attempt: ENOENT or
   * ECONNREFUSED reject at once (callers that wait for QEMU to create the socket retry).
   */
  static async connect(path: string, timeoutMs = 5000): Promise<QmpClient> {
    const socket = connect(path);
    const client = new QmpClient(socket, path);
    const greeted = new Promise<void>((resolve, reject) => (client.greetingWaiter = { resolve, reject }));
    greeted.catch(() => undefined); // awaited below; a failed connect must not leave it unhandled
    const timer = setTimeout(() => client.destroy(`no QMP greeting within ${timeoutMs} ms`), timeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("error", reject);
        socket.once("close", () => reject(new QmpConnectionError(`QMP ${path}: ${client.closedReason ?? "closed"}`)));
      });
      await greeted;
      await client.execute("qmp_capabilities", undefined, timeoutMs);
      return client;
    } catch (err) {
      client.destroy("connect failed");
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  get isOpen(): boolean {
    return this.closedReason === undefined;
  }

  /** Runs a command; rejects with QmpError for a QEMU error, QmpConnectionError for no reply. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 5000): Promise<T> {
    if (this.closedReason !== undefined) {
      return Promise.reject(new QmpConnectionError(`QMP ${command}: connection closed (${this.closedReason})`));
    }
    const id = String(this.nextId++);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpConnectionError(`QMP ${command}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject, timer, command });
      this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`);
    });
  }

  /** The next event with this name (and matching the predicate), or rejects when the connection closes. */
  waitEvent(name: string, timeoutMs: number, predicate: (event: QmpEvent) => boolean = () => true): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        this.off("event", onEvent);
        this.off("close", onClose);
      };
      const onEvent = (event: QmpEvent) => {
        if (event.event !== name || !predicate(event)) return;
        cleanup();
        resolve(event);
      };
      const onClose = () => {
        cleanup();
        reject(new QmpConnectionError(`QMP connection closed while waiting for ${name}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new QmpConnectionError(`no QMP ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      if (!this.isOpen) return onClose();
      this.on("event", onEvent);
      this.on("close", onClose);
    });
  }

  /** Closes the connection; pending commands are rejected. */
  async close(): Promise<void> {
    this.destroy("closed by client");
    await this.closed;
  }

  private destroy(reason: string): void {
    this.closedReason ??= reason;
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    for (let newline = this.buffer.indexOf("\n"); newline >= 0; newline = this.buffer.indexOf("\n")) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(line) as Record<string, unknown>;
    } catch {
      this.destroy(`unparsable QMP line: ${line.slice(0, 200)}`);
      return;
    }
    if ("QMP" in message) {
      this.greetingWaiter?.resolve();
      this.greetingWaiter = undefined;
      return;
    }
    if (typeof message.event === "string") {
      const stamp = message.timestamp as { seconds?: number; microseconds?: number } | undefined;
      this.emit("event", {
        event: message.event,
        data: (message.data as Record<string, unknown> | undefined) ?? {},
        timestampUs: (stamp?.seconds ?? 0) * 1e6 + (stamp?.microseconds ?? 0),
      });
      return;
    }
    const id = typeof message.id === "string" ? message.id : undefined;
    const pending = id === undefined ? undefined : this.pending.get(id);
    if (!pending) return; // a reply to a command that already timed out
    this.pending.delete(id!);
    clearTimeout(pending.timer);
    if ("error" in message) {
      const error = message.error as { class?: string; desc?: string };
      pending.reject(new QmpError(error.class ?? "GenericError", `QMP ${pending.command}: ${error.desc ?? "error"}`));
    } else {
      pending.resolve(message.return);
    }
  }

  private onClose(): void {
    this.closedReason ??= "closed by QEMU";
    const error = new QmpConnectionError(`QMP connection closed (${this.closedReason})`);
    this.greetingWaiter?.reject(error);
    this.greetingWaiter = undefined;
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      this.pending.delete(id);
      pending.reject(new QmpConnectionError(`QMP ${pending.command}: connection closed (${this.closedReason})`));
    }
    this.emit("close");
  }
}
