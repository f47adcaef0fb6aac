// One VM's channel to its guest agent (agent/, docs/agent-protocol.md): a unix socket the VMM
// serves (QEMU's virtio-serial chardev), many requests at once, each on its own stream. The guest
// is hostile: frames are bounded and checked (frame.ts), answers are checked against schemas, a
// channel that breaks the protocol is closed for good and says why; requests are bounded in
// number and in time, so nothing a guest does (or fails to do) grows the worker or blocks a call.
import { type Socket, createConnection } from "node:net";
import type { Logger } from "pino";
import { z } from "zod";
import { type ErrorCode, invalidArgument, resourceExhausted, unavailable, WorkerError } from "../core/errors.js";
import type {
  AgentConnection,
  AgentState,
  DirListing,
  ExecRequest,
  ExecResult,
  FileChunk,
  FileStat,
  FileWrite,
  GuestFault,
  GuestFaultResult,
  OutputStream,
  Personalization,
  ProcessOutput,
  ProcessStart,
  ProcessStatus,
} from "../ports/index.js";
import {
  type AgentFrame,
  AgentProtocolError,
  decodeMixed,
  encodeFrame,
  encodeMixed,
  FrameDecoder,
  FrameType,
  MAX_PAYLOAD,
} from "./frame.js";

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
/** Codes an agent may give its errors; anything else is FAILED_PRECONDITION. */
const AGENT_ERROR_CODES = ["INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"] as const;
const ErrorAnswer = z.object({ message: z.string().max(4096), code: z.string().max(32).optional() });
const Count = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const Stat = z.object({
  name: z.string().max(4096),
  type: z.enum(["file", "dir", "symlink", "other"]),
  size: Count,
  mode: z.number().int().min(0).max(0o7777),
  mtimeMs: z.number().int(),
});
const Written = z.object({ size: Count });
const ReadHeader = z.object({ size: Count, eof: z.boolean() });
const Listing = z.object({ entries: z.array(Stat).max(4096), truncated: z.boolean() });
const Started = z.object({ pid: z.number().int().positive() });
const OutputHeader = z.object({ offset: Count, nextOffset: Count, eof: z.boolean() });
const Status = z.object({
  pid: z.number().int().positive(),
  running: z.boolean(),
  exitCode: z.number().int().min(-1).max(255),
  signal: z.number().int().min(0).max(64),
});
const Ok = z.object({});
/** Deadlines (before the grace) of calls that should not take long: a hung guest must not hold a slot for a day. */
const FILE_CALL_MS = 60_000;
const CONTROL_CALL_MS = 10_000;
const STDIN_WRITE_MS = 30_000;
const Personalized = z.object({ interface: z.string().max(64) });
const FaultDone = z.object({ pids: z.array(z.number().int().positive()).max(65536), bytes: Count });

export type AgentHello = z.infer<typeof Hello>;

export interface AgentChannelOptions {
  socketPath: string;
  log: Logger;
  /** Requests in flight at once; more are refused (RESOURCE_EXHAUSTED), never queued. */
  maxInFlight?: number;
  /** How often a hello is asked for until one comes: the guest drops what arrives before it listens. */
  helloIntervalMs?: number;
  /** Added to a request's own timeout before the worker gives up on an answer. */
  answerGraceMs?: number;
  /**
   * The socket is a hybrid vsock proxy (Cloud Hypervisor, Firecracker): each connection asks
   * `CONNECT <vsockPort>` first and frames follow its `OK`. Absent: the socket is the port itself.
   */
  vsockPort?: number;
}

/** The proxy's answer line is short; a longer one is not the proxy we know. */
const MAX_CONNECT_ANSWER = 64;

interface Pending {
  /** The frame type of a good answer. */
  answerType: number;
  /** Checks an answer's payload and makes it what the caller gets; throws AgentProtocolError. */
  decode(payload: Buffer): unknown;
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
    const { vsockPort } = this.options;
    if (vsockPort === undefined) {
      socket.on("connect", () => this.askHello());
      socket.on("data", (chunk: Buffer) => this.heard(chunk));
    } else {
      socket.on("connect", () => socket.write(`CONNECT ${vsockPort}\n`));
      let answer = Buffer.alloc(0);
      const onAnswer = (chunk: Buffer) => {
        answer = Buffer.concat([answer, chunk]);
        const end = answer.indexOf(0x0a);
        if (end < 0 && answer.length <= MAX_CONNECT_ANSWER) return;
        const line = end < 0 ? "" : answer.subarray(0, end).toString("latin1");
        if (!/^OK \d+$/.test(line)) {
          // Nothing listens on the port yet (the proxy closes), or a proxy we do not know: try again later.
          this.options.log.debug({ answer: line.slice(0, MAX_CONNECT_ANSWER) }, "vsock CONNECT refused");
          socket.destroy();
          return;
        }
        socket.off("data", onAnswer);
        socket.on("data", (data: Buffer) => this.heard(data));
        this.askHello();
        const rest = answer.subarray(end + 1);
        if (rest.length > 0) this.heard(rest);
      };
      socket.on("data", onAnswer);
    }
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
    const body = {
      argv: request.argv,
      env: request.env ?? [],
      cwd: request.cwd ?? "",
      stdin: Buffer.from(request.stdin ?? new Uint8Array()).toString("base64"),
      timeoutMs: request.timeoutMs ?? 0,
    };
    return this.call(FrameType.exec, json(body), FrameType.exit, jsonAnswer(ExecAnswer, "exec answer"), request.timeoutMs);
  }

  async writeFile(request: FileWrite): Promise<{ size: number }> {
    const header = { path: request.path, offset: request.offset, mode: request.mode ?? 0o644, truncate: request.truncate ?? false };
    const body = encodeMixed(header, request.data);
    return this.call(FrameType.fileWrite, body, FrameType.fileWritten, jsonAnswer(Written, "write answer"), FILE_CALL_MS);
  }

  readFile(path: string, offset: number, length: number): Promise<FileChunk> {
    return this.call(
      FrameType.fileRead,
      json({ path, offset, length }),
      FrameType.fileData,
      (payload) => {
        const { json: head, bytes } = decodeMixed(payload);
        if (bytes.length > length) throw new AgentProtocolError(`the agent read ${bytes.length} bytes where ${length} were asked`);
        return { ...parseJson(ReadHeader, head, "read answer"), data: Buffer.from(bytes) };
      },
      FILE_CALL_MS,
    );
  }

  stat(path: string): Promise<FileStat> {
    return this.call(FrameType.stat, json({ path }), FrameType.statResult, jsonAnswer(Stat, "stat answer"), FILE_CALL_MS);
  }

  list(path: string, offset: number): Promise<DirListing> {
    return this.call(FrameType.list, json({ path, offset }), FrameType.listResult, jsonAnswer(Listing, "listing"), FILE_CALL_MS);
  }

  startProcess(request: ProcessStart): Promise<{ pid: number }> {
    const body = { argv: request.argv, env: request.env ?? [], cwd: request.cwd ?? "", tty: request.tty ?? null };
    return this.call(FrameType.processStart, json(body), FrameType.processStarted, jsonAnswer(Started, "start answer"), CONTROL_CALL_MS);
  }

  readProcess(pid: number, stream: OutputStream, offset: number, maxBytes: number, waitMs: number): Promise<ProcessOutput> {
    const body = { pid, stream, offset, maxBytes, waitMs };
    return this.call(
      FrameType.processRead,
      json(body),
      FrameType.processOutput,
      (payload) => {
        const { json: head, bytes } = decodeMixed(payload);
        const answer = parseJson(OutputHeader, head, "output answer");
        if (bytes.length > maxBytes || answer.nextOffset !== answer.offset + bytes.length || answer.offset < offset) {
          throw new AgentProtocolError("the agent's output answer does not add up");
        }
        return { ...answer, data: Buffer.from(bytes) };
      },
      waitMs,
    );
  }

  async writeProcess(pid: number, data: Uint8Array, close: boolean): Promise<void> {
    // The agent answers once the bytes are written: a process that does not read its stdin would hold
    // the slot until it exits. The cancel at the deadline drops a write that has not started.
    const body = encodeMixed({ pid, close }, data);
    await this.call(FrameType.processWrite, body, FrameType.ok, jsonAnswer(Ok, "write answer"), STDIN_WRITE_MS);
  }

  async signalProcess(pid: number, signal: number): Promise<void> {
    await this.call(FrameType.processSignal, json({ pid, signal }), FrameType.ok, jsonAnswer(Ok, "signal answer"), CONTROL_CALL_MS);
  }

  waitProcess(pid: number, waitMs: number): Promise<ProcessStatus> {
    const decode = jsonAnswer(Status, "wait answer");
    return this.call(FrameType.processWait, json({ pid, waitMs }), FrameType.processStatus, decode, waitMs);
  }

  async resizeProcess(pid: number, rows: number, cols: number): Promise<void> {
    const body = json({ pid, rows, cols });
    await this.call(FrameType.processResize, body, FrameType.ok, jsonAnswer(Ok, "resize answer"), CONTROL_CALL_MS);
  }

  fault(fault: GuestFault, timeoutMs: number): Promise<GuestFaultResult> {
    return this.call(FrameType.fault, json(fault), FrameType.faultDone, jsonAnswer(FaultDone, "fault answer"), timeoutMs);
  }

  personalize(request: Personalization, timeoutMs: number): Promise<{ interface: string }> {
    const body = json({ ...request, seed: Buffer.from(request.seed).toString("base64") });
    return this.call(FrameType.personalize, body, FrameType.personalized, jsonAnswer(Personalized, "personalize answer"), timeoutMs);
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

  /**
   * One request on a fresh stream. Answers of `answerType` go through `decode` before anyone sees
   * them; an error frame rejects with the agent's code (when it is one we accept).
   */
  private call<T>(type: number, body: Buffer, answerType: number, decode: (payload: Buffer) => T, timeoutMs = 0): Promise<T> {
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
    return new Promise<T>((resolve, reject) => {
      const waitMs = (timeoutMs > 0 ? timeoutMs : 24 * 3600_000) + (this.options.answerGraceMs ?? 5000);
      const timer = setTimeout(() => {
        this.pending.delete(stream);
        this.send(socket, FrameType.cancel, stream, Buffer.alloc(0));
        reject(new WorkerError("DEADLINE_EXCEEDED", `the VM's agent did not answer within ${waitMs} ms`));
      }, waitMs);
      this.pending.set(stream, { answerType, decode, resolve: resolve as (answer: unknown) => void, reject, timer });
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
      const hello = parseJson(Hello, frame.payload, "hello");
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
    if (!ANSWER_TYPES.has(frame.type)) throw new AgentProtocolError(`unexpected frame type ${frame.type}`);
    const pending = this.pending.get(frame.stream);
    // An answer after its deadline (the request was cancelled): nothing waits for it.
    if (!pending) return;
    if (frame.type !== FrameType.error && frame.type !== pending.answerType) {
      throw new AgentProtocolError(`frame type ${frame.type} answers a request that expects type ${pending.answerType}`);
    }
    // A malformed answer throws here, with the request still pending: breaking the channel fails it.
    const error = frame.type === FrameType.error ? parseJson(ErrorAnswer, frame.payload, "error") : undefined;
    const answer = error ? undefined : pending.decode(frame.payload);
    this.pending.delete(frame.stream);
    clearTimeout(pending.timer);
    if (error) pending.reject(new WorkerError(agentErrorCode(error.code), `agent: ${error.message}`));
    else pending.resolve(answer);
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

const ANSWER_TYPES = new Set<number>([
  FrameType.exit,
  FrameType.error,
  FrameType.fileWritten,
  FrameType.fileData,
  FrameType.statResult,
  FrameType.listResult,
  FrameType.processStarted,
  FrameType.processOutput,
  FrameType.ok,
  FrameType.processStatus,
  FrameType.faultDone,
  FrameType.personalized,
]);

function json(body: unknown): Buffer {
  return Buffer.from(JSON.stringify(body));
}

function parseJson<T extends z.ZodType>(schema: T, payload: Buffer, what: string): z.infer<T> {
  let value: unknown;
  try {
    value = JSON.parse(payload.toString("utf8"));
  } catch {
    throw new AgentProtocolError(`the agent's ${what} is not JSON`);
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new AgentProtocolError(`the agent's ${what} does not match its schema: ${parsed.error.issues[0]?.message}`);
  return parsed.data;
}

function jsonAnswer<T extends z.ZodType>(schema: T, what: string): (payload: Buffer) => z.infer<T> {
  return (payload) => parseJson(schema, payload, what);
}

function agentErrorCode(code: string | undefined): ErrorCode {
  return (AGENT_ERROR_CODES as readonly string[]).includes(code ?? "") ? (code as ErrorCode) : "FAILED_PRECONDITION";
}
