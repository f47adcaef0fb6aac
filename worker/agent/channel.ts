// One VM's channel to its guest agent (agent/, docs/agent-protocol.md): a unix socket the VMM
// serves (QEMU's virtio-serial chardev), many requests at once, each on its own stream. The guest
// is hostile: frames are bounded and checked (frame.ts), answers are checked against schemas, a
// channel that breaks the protocol is closed for good and says why; requests are bounded in
// number and in time, so nothing a guest does (or fails to do) grows the worker or blocks a call.
import { type Socket, createConnection } from "node:net";
import type { Logger } from "pino";
import { z } from "zod";
import { invalidArgument, resourceExhausted, unavailable, WorkerError } from "../core/errors.js";
import type { AgentConnection, AgentState, ExecRequest } from "../ports/index.js";
import { type AgentFrame, AgentProtocolError, encodeFrame, FrameDecoder, FrameType, MAX_PAYLOAD } from "./frame.js";

const Hello = z.object({
  protocol: z.literal(1),
  version: z.string().max(64),
  uptimeMs: z.number().int().nonnegative(),
  pid: z.number().int(),
});
const MAX_OUTPUT = 64 * 1024;
const Bytes = z
  .string()
  .max(Math.ceil(MAX_OUTPUT / 3) * 4)
  .nullable()
  .transform((text) => Buffer.from(text ?? "", "base64"));
const ExecAnswer = z.object({
  exitCode: z.number().int().min(-1).max(255),
  signal: z.number().int().min(0).max(64),
  timedOut: z.boolean(),
  stdout: Bytes,
  stderr: Bytes,
  stdoutTruncated: z.boolean(),
  stderrTruncated: z.boolean(),
  durationMs: z.number().int().nonnegative(),
});
const ErrorAnswer = z.object({ message: z.string().max(4096) });

export type AgentHello = z.infer<typeof Hello>;
export type ExecResult = z.infer<typeof ExecAnswer>;

export interface AgentChannelOptions {
  socketPath: string;
  log: Logger;
  /** Requests in flight at once; more are refused (RESOURCE_EXHAUSTED), never queued. */
  maxInFlight?: number;
  /** How often a hello is asked for until one comes: the guest drops what arrives before it listens. */
  helloIntervalMs?: number;
  /** Added to a request's own timeout before the worker gives up on an answer. */
  answerGraceMs?: number;
}

interface Pending {
  /** What an answer must look like: checked before anyone sees it. */
  schema: z.ZodType;
  resolve(answer: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

export class AgentChannel implements AgentConnection {
  state: AgentState = "connecting";
  /** Why the channel is broken, when it is. */
  brokenReason?: string;
  hello?: AgentHello;
  /** When the first hello came. */
  readyAtMs?: number;
  private socket?: Socket;
  private decoder = new FrameDecoder();
  private readonly pending = new Map<number, Pending>();
  private nextStream = 1;
  private helloTimer?: NodeJS.Timeout;
  private reconnectTimer?: NodeJS.Timeout;
  private readonly readyWaiters = new Set<() => void>();

  constructor(private readonly options: AgentChannelOptions) {}

  start(): void {
    if (this.state === "closed" || this.state === "broken" || this.socket) return;
    const socket = createConnection(this.options.socketPath);
    this.socket = socket;
    this.decoder = new FrameDecoder();
    socket.on("connect", () => this.askHello());
    socket.on("data", (chunk: Buffer) => this.heard(chunk));
    socket.on("error", () => undefined); // "close" follows and says what matters
    socket.on("close", () => {
      if (this.socket !== socket) return;
      this.socket = undefined;
      clearInterval(this.helloTimer);
      this.failPending(unavailable("the VM's agent channel closed"));
      if (this.state === "closed" || this.state === "broken") return;
      this.state = "connecting";
      // The VMM may not serve the socket yet (starting) or any more (gone): try again shortly.
      this.reconnectTimer = setTimeout(() => this.start(), 250);
      this.reconnectTimer.unref();
    });
  }

  /** Resolves at the agent's hello; rejects after `timeoutMs` or when the channel breaks. */
  whenReady(timeoutMs: number): Promise<AgentHello> {
    if (this.state === "ready" && this.hello) return Promise.resolve(this.hello);
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.readyWaiters.delete(done);
        if (this.state === "ready" && this.hello) resolve(this.hello);
        else reject(unavailable(`the VM's agent is ${this.state}${this.brokenReason ? `: ${this.brokenReason}` : ""}`));
      };
      const timer = setTimeout(() => {
        this.readyWaiters.delete(done);
        reject(unavailable(`the VM's agent did not say hello within ${timeoutMs} ms`));
      }, timeoutMs);
      this.readyWaiters.add(done);
    });
  }

  exec(request: ExecRequest): Promise<ExecResult> {
    return this.request(
      ExecAnswer,
      FrameType.exec,
      Buffer.from(
        JSON.stringify({
          argv: request.argv,
          env: request.env ?? [],
          cwd: request.cwd ?? "",
          stdin: Buffer.from(request.stdin ?? new Uint8Array()).toString("base64"),
          timeoutMs: request.timeoutMs ?? 0,
        }),
      ),
      request.timeoutMs,
    );
  }

  close(): void {
    this.state = "closed";
    clearInterval(this.helloTimer);
    clearTimeout(this.reconnectTimer);
    this.socket?.destroy();
    this.socket = undefined;
    this.failPending(unavailable("the VM's agent channel closed"));
    this.wakeReadyWaiters();
  }

  get inFlight(): number {
    return this.pending.size;
  }

  // --- internals -------------------------------------------------------------------------------

  private request<T extends z.ZodType>(schema: T, type: number, body: Buffer, timeoutMs = 0): Promise<z.infer<T>> {
    if (this.state !== "ready" || !this.socket) {
      return Promise.reject(unavailable(`the VM's agent is ${this.state}${this.brokenReason ? `: ${this.brokenReason}` : ""}`));
    }
    // Checked before anything is registered: a request that cannot be sent must hold no slot.
    if (body.length > MAX_PAYLOAD) {
      return Promise.reject(
        invalidArgument(`the request is ${body.length} bytes encoded (at most ${MAX_PAYLOAD}: escape-heavy text grows)`),
      );
    }
    const max = this.options.maxInFlight ?? 128;
    if (this.pending.size >= max) return Promise.reject(resourceExhausted(`${max} requests to the VM's agent are in flight`));
    const stream = this.nextStream;
    this.nextStream = this.nextStream >= 0xffff_ffff ? 1 : this.nextStream + 1;
    const socket = this.socket;
    return new Promise<z.infer<T>>((resolve, reject) => {
      const waitMs = (timeoutMs > 0 ? timeoutMs : 24 * 3600_000) + (this.options.answerGraceMs ?? 5000);
      const timer = setTimeout(() => {
        this.pending.delete(stream);
        this.send(socket, FrameType.cancel, stream, Buffer.alloc(0));
        reject(new WorkerError("DEADLINE_EXCEEDED", `the VM's agent did not answer within ${waitMs} ms`));
      }, waitMs);
      this.pending.set(stream, { schema, resolve: resolve as (answer: unknown) => void, reject, timer });
      this.send(socket, type, stream, body);
    });
  }

  private send(socket: Socket, type: number, stream: number, payload: Buffer): void {
    if (!socket.destroyed) socket.write(encodeFrame({ type, stream, payload }));
  }

  private askHello(): void {
    const socket = this.socket;
    if (!socket) return;
    this.send(socket, FrameType.helloRequest, 0, Buffer.alloc(0));
    clearInterval(this.helloTimer);
    this.helloTimer = setInterval(() => {
      if (this.state === "ready" || this.socket !== socket) clearInterval(this.helloTimer);
      else this.send(socket, FrameType.helloRequest, 0, Buffer.alloc(0));
    }, this.options.helloIntervalMs ?? 500);
    this.helloTimer.unref();
  }

  private heard(chunk: Buffer): void {
    let frames: AgentFrame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.breakChannel((err as AgentProtocolError).message);
      return;
    }
    for (const frame of frames) {
      try {
        this.dispatch(frame);
      } catch (err) {
        this.breakChannel((err as Error).message);
        return;
      }
      if (this.state === "broken") return;
    }
  }

  private dispatch(frame: AgentFrame): void {
    if (frame.type === FrameType.hello) {
      const hello = this.parse(Hello, frame.payload, "hello");
      if (this.hello && this.hello.pid !== hello.pid) {
        // A new agent (the old one was killed): the old one's requests will never be answered.
        this.failPending(unavailable("the VM's agent restarted"));
      }
      this.hello = hello;
      this.decoder.synced = true;
      if (this.state !== "ready") {
        this.state = "ready";
        this.readyAtMs ??= Date.now();
        this.options.log.info({ version: hello.version, uptimeMs: hello.uptimeMs }, "agent ready");
      }
      clearInterval(this.helloTimer);
      this.wakeReadyWaiters();
      return;
    }
    if (!this.decoder.synced) return; // anything before the hello may be a previous connection's tail
    if (frame.type !== FrameType.exit && frame.type !== FrameType.error)
      throw new AgentProtocolError(`unexpected frame type ${frame.type}`);
    const pending = this.pending.get(frame.stream);
    // An answer after its deadline (the request was cancelled): nothing waits for it.
    if (!pending) return;
    // A malformed answer throws here, with the request still pending: breaking the channel fails it.
    const answer = frame.type === FrameType.exit ? this.parse(pending.schema, frame.payload, "answer") : undefined;
    const error = frame.type === FrameType.error ? this.parse(ErrorAnswer, frame.payload, "error") : undefined;
    this.pending.delete(frame.stream);
    clearTimeout(pending.timer);
    if (error) pending.reject(new WorkerError("FAILED_PRECONDITION", `agent: ${error.message}`));
    else pending.resolve(answer);
  }

  private parse<T extends z.ZodType>(schema: T, payload: Buffer, what: string): z.infer<T> {
    let json: unknown;
    try {
      json = JSON.parse(payload.toString("utf8"));
    } catch {
      throw new AgentProtocolError(`the agent's ${what} is not JSON`);
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) throw new AgentProtocolError(`the agent's ${what} does not match its schema: ${parsed.error.issues[0]?.message}`);
    return parsed.data;
  }

  private breakChannel(reason: string): void {
    if (this.state === "broken" || this.state === "closed") return;
    this.state = "broken";
    this.brokenReason = reason;
    this.options.log.warn({ reason }, "the VM's agent broke the protocol: its channel is closed");
    clearInterval(this.helloTimer);
    this.socket?.destroy();
    this.socket = undefined;
    this.failPending(unavailable(`the VM's agent channel is broken: ${reason}`));
    this.wakeReadyWaiters();
  }

  private failPending(err: Error): void {
    for (const [stream, pending] of this.pending) {
      clearTimeout(pending.timer);
      this.pending.delete(stream);
      pending.reject(err);
    }
  }

  private wakeReadyWaiters(): void {
    for (const wake of [...this.readyWaiters]) wake();
  }
}
