// One Cap'n Proto RPC connection (level 1) over a byte stream: bootstrap, calls on the bootstrap
// capability and on promised answers of it, Return/Finish/Release/Abort bookkeeping, and the
// client half (questions). Anything we do not speak gets an `unimplemented` echo, never a crash.
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { asWorkerError, WorkerError } from "../core/errors.js";
import { FrameDecoder } from "./framing.js";
import { type ByteBudget, type RpcLimits, withDefaults } from "./limits.js";
import {
  CapDescriptorTag,
  type CallTarget,
  EXCEPTION_TYPES,
  type ExceptionType,
  Layout,
  MessageTag,
  ReturnTag,
  TargetTag,
  abortMessage,
  bootstrapMessage,
  callMessage,
  capabilityReturn,
  exceptionReturn,
  finishMessage,
  releaseMessage,
  resultsReturn,
} from "./protocol.js";
import {
  MalformedMessageError,
  MessageBuilder,
  MessageReader,
  type StructReader,
  copyPointer,
  emptyStruct,
  listStruct,
  pointerOffset,
  readBool,
  readCapabilityIndex,
  readStruct,
  readStructList,
  readText,
  readU16,
  readU32,
  readU64,
} from "./wire.js";

/** Fills a results (or params) content pointer at byte offset `at`; `sizeHint` presizes the buffer. */
export type ContentWriter = ((b: MessageBuilder, at: number) => void) & { sizeHint?: number };

export interface CallContext {
  connection: string;
  requestId: string;
  /** Aborted when the call's deadline passes (its answer, DEADLINE_EXCEEDED, is already sent). */
  signal?: AbortSignal;
  describePeer?: () => Promise<string>;
}

/** One method: decode params (synchronously, before awaiting), do the work, return how to write results. */
export interface MethodEntry {
  readonly name: string;
  handle(params: StructReader, context: CallContext): Promise<ContentWriter>;
}

/** A server-side interface: adding a method is adding an entry at its ordinal. */
export interface InterfaceDispatcher {
  readonly interfaceId: bigint;
  readonly name: string;
  readonly methods: ReadonlyArray<MethodEntry | undefined>;
}

/** An exception the peer returned (or the connection produced). `reason` is "CODE: message" for our errors. */
export class RpcException extends Error {
  override name = "RpcException";
  constructor(
    readonly type: ExceptionType,
    readonly reason: string,
  ) {
    super(reason);
  }
}

export interface ConnectionOptions {
  /** The capability a Bootstrap message gets; absent on a pure client. */
  bootstrap?: InterfaceDispatcher;
  limits?: Partial<RpcLimits>;
  logger: Logger;
  /** Who the peer is, for logs and CallerInfo. */
  peer: string;
  /** A fuller description of the peer (process and user), looked up on demand. */
  describePeer?: () => Promise<string>;
  /** Shared with the other connections of a server: bytes of incomplete messages held. */
  budget?: ByteBudget;
}

/** A capability the peer hosts: a bootstrap promise until its Return arrives, then an import. */
export class RemoteCapability {
  importId: number | undefined;
  /** Why the bootstrap failed, once it has: later calls fail with it at once. */
  failure: RpcException | undefined;
  constructor(
    readonly connection: RpcConnection,
    readonly bootstrapQuestion: number,
    readonly ready: Promise<void>,
  ) {}

  get target(): CallTarget {
    return this.importId === undefined ? { kind: "answer", questionId: this.bootstrapQuestion } : { kind: "import", id: this.importId };
  }
}

interface Answer {
  returned: boolean;
  finished: boolean;
  /** Export id when the answer is a capability (bootstrap). */
  exportId?: number;
}

interface Question {
  resolve(value: StructReader): void;
  reject(error: Error): void;
  bootstrap?: RemoteCapability;
}

interface Export {
  dispatcher: InterfaceDispatcher;
  refs: number;
}

let connectionCounter = 0;

export class RpcConnection {
  readonly peer: string;
  private readonly limits: RpcLimits;
  private readonly log: Logger;
  private readonly decoder: FrameDecoder;
  private readonly bootstrapDispatcher: InterfaceDispatcher | undefined;

  private readonly answers = new Map<number, Answer>();
  private runningCalls = 0;
  private readonly exports = new Map<number, Export>();
  private bootstrapExportId: number | undefined;
  private nextExportId = 0;

  private readonly questions = new Map<number, Question>();
  private readonly freeQuestionIds: number[] = [];
  private nextQuestionId = 0;

  private requestCounter = 0;
  /** Set by drain(): new calls are refused, running ones finish. */
  private draining = false;
  private readonly idleWaiters: Array<() => void> = [];
  private corked = false;
  private readPaused = false;
  private closedError: Error | undefined;
  private isClosed = false;
  private readonly closeWaiters: Array<() => void> = [];
  private readonly describePeer: (() => Promise<string>) | undefined;
  private readonly budget: ByteBudget | undefined;
  /** Bytes of incomplete messages this connection holds against the budget. */
  private charged = 0;
  /** Armed while a message is incomplete. */
  private frameTimer: NodeJS.Timeout | undefined;
  /** When bytes last arrived from the peer, or one of its calls on us last ended. */
  private lastActivityMs = Date.now();

  constructor(
    private readonly socket: Duplex,
    options: ConnectionOptions,
  ) {
    this.peer = options.peer || `conn-${++connectionCounter}`;
    this.limits = withDefaults(options.limits);
    this.log = options.logger;
    this.bootstrapDispatcher = options.bootstrap;
    this.describePeer = options.describePeer;
    this.budget = options.budget;
    this.decoder = new FrameDecoder(this.limits);
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("end", () => this.shutdown(undefined));
    socket.on("close", () => this.shutdown(undefined));
    socket.on("error", (err: Error) => this.shutdown(err));
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Calls the peer's methods are currently running on us. */
  get callsInFlight(): number {
    return this.runningCalls;
  }

  /** Milliseconds since the peer last sent bytes or a call ended, if nothing is under way; else 0. */
  idleForMs(now = Date.now()): number {
    if (this.runningCalls > 0 || this.questions.size > 0 || this.decoder.pendingBytes > 0) return 0;
    return now - this.lastActivityMs;
  }

  /** Resolves once the connection is gone. */
  waitClosed(): Promise<void> {
    if (this.isClosed) return Promise.resolve();
    return new Promise((resolve) => this.closeWaiters.push(resolve));
  }

  /** Ends the connection; a peer that does not close its side within `graceMs` is cut off. */
  close(graceMs = 1000): void {
    if (this.isClosed) return;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), graceMs).unref();
    this.shutdown(undefined);
  }

  /** Refuses new calls, lets running ones send their results (for up to `timeoutMs`), then closes. */
  async drain(timeoutMs: number): Promise<void> {
    this.draining = true;
    if (this.runningCalls > 0 && !this.isClosed) {
      await new Promise<void>((resolve) => {
        this.idleWaiters.push(resolve);
        setTimeout(resolve, timeoutMs).unref();
      });
    }
    this.close();
  }

  // ---- client half ----

  /** Asks for the peer's bootstrap capability; calls may be made on it at once (pipelined). */
  bootstrap(): RemoteCapability {
    const questionId = this.allocateQuestion();
    let question!: Question;
    const ready = new Promise<void>((resolve, reject) => {
      question = { resolve: () => resolve(), reject };
    });
    ready.catch(() => undefined); // failures surface through the calls made on it
    question.bootstrap = new RemoteCapability(this, questionId, ready);
    this.questions.set(questionId, question);
    this.write(bootstrapMessage(questionId));
    return question.bootstrap;
  }

  /** Calls a method; resolves with the results struct (valid until the next await of the caller's choosing). */
  call(
    cap: RemoteCapability,
    interfaceId: bigint,
    methodId: number,
    writeParams?: ContentWriter,
    sizeHint?: number,
  ): Promise<StructReader> {
    if (this.isClosed) return Promise.reject(this.disconnected());
    if (cap.failure) return Promise.reject(cap.failure);
    const questionId = this.allocateQuestion();
    const result = new Promise<StructReader>((resolve, reject) => {
      this.questions.set(questionId, { resolve, reject });
    });
    let message: Buffer;
    try {
      message = callMessage(questionId, cap.target, interfaceId, methodId, writeParams, sizeHint);
    } catch (err) {
      this.questions.delete(questionId);
      this.freeQuestionIds.push(questionId);
      return Promise.reject(err);
    }
    if (message.length > this.limits.maxMessageBytes) {
      // The peer would abort the whole connection over it: refuse this one call instead.
      this.questions.delete(questionId);
      this.freeQuestionIds.push(questionId);
      const reason = `RESOURCE_EXHAUSTED: request of ${message.length} bytes exceeds the ${this.limits.maxMessageBytes}-byte message limit`;
      return Promise.reject(new RpcException("failed", reason));
    }
    this.write(message);
    return result;
  }

  private allocateQuestion(): number {
    return this.freeQuestionIds.pop() ?? this.nextQuestionId++;
  }

  private disconnected(): RpcException {
    const detail = this.closedError ? `: ${this.closedError.message}` : "";
    return new RpcException("disconnected", `UNAVAILABLE: connection to ${this.peer} closed${detail}`);
  }

  // ---- input ----

  private onData(chunk: Buffer): void {
    if (this.isClosed) return;
    this.lastActivityMs = Date.now();
    let frames: Buffer[][];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.abort((err as Error).message);
      return;
    }
    if (!this.holdPending(frames.length > 0)) return;
    for (const segments of frames) {
      if (this.isClosed) return;
      try {
        this.handleMessage(new MessageReader(segments, this.limits));
      } catch (err) {
        if (err instanceof MalformedMessageError) {
          this.abort(`malformed message: ${err.message}`);
        } else {
          // Not a validation failure: a bug on our side (the reader should have caught any bad input).
          // The peer still only loses its own connection.
          this.log.error({ err, peer: this.peer }, "rpc message handling failed");
          this.abort(`internal error handling message: ${(err as Error).message}`);
        }
        return;
      }
    }
  }

  /**
   * Accounts for the incomplete message now held: against the shared budget, and against the
   * frame deadline (restarted whenever a message completed). False when the connection was aborted.
   */
  private holdPending(completedOne: boolean): boolean {
    const pending = this.decoder.pendingBytes;
    if (pending > this.charged) {
      if (this.budget && !this.budget.take(pending - this.charged)) {
        const held = `the server holds ${this.budget.maxBytes} bytes of incomplete messages already`;
        this.abort(`RESOURCE_EXHAUSTED: ${held}; send whole messages, and fewer at once`);
        return false;
      }
    } else {
      this.budget?.give(this.charged - pending);
    }
    this.charged = pending;
    if (pending === 0 || completedOne) {
      clearTimeout(this.frameTimer);
      this.frameTimer = undefined;
    }
    if (pending > 0 && !this.frameTimer && this.limits.frameTimeoutMs > 0) {
      this.frameTimer = setTimeout(
        () => this.abort(`a message was not completed within ${this.limits.frameTimeoutMs} ms`),
        this.limits.frameTimeoutMs,
      );
      this.frameTimer.unref();
    }
    return true;
  }

  private handleMessage(reader: MessageReader): void {
    const root = reader.root();
    const tag = readU16(root, 0);
    switch (tag) {
      case MessageTag.Call:
        this.onCall(reader, root);
        break;
      case MessageTag.Return:
        this.onReturn(this.body(root));
        break;
      case MessageTag.Finish:
        this.onFinish(this.body(root));
        break;
      case MessageTag.Bootstrap:
        this.onBootstrap(this.body(root));
        break;
      case MessageTag.Release:
        this.onRelease(this.body(root));
        break;
      case MessageTag.Abort:
        this.onAbort(readStruct(root, 0));
        break;
      case MessageTag.Unimplemented:
        this.onUnimplemented(readStruct(root, 0));
        break;
      case MessageTag.Resolve:
        this.onResolve(this.body(root));
        break;
      case MessageTag.Disembargo:
        this.onDisembargo(reader, root);
        break;
      default:
        this.sendUnimplemented(reader);
        break;
    }
  }

  private body(root: StructReader): StructReader {
    const body = readStruct(root, 0);
    if (body === null) throw new MalformedMessageError("message body is missing");
    return body;
  }

  // ---- server half ----

  private onBootstrap(body: StructReader): void {
    const questionId = readU32(body, Layout.Bootstrap.questionId);
    if (!this.registerAnswer(questionId)) return;
    const dispatcher = this.bootstrapDispatcher;
    if (!dispatcher) {
      this.sendReturn(questionId, exceptionReturn(questionId, "failed", "FAILED_PRECONDITION: this peer offers no bootstrap capability"));
      return;
    }
    if (this.bootstrapExportId === undefined) {
      this.bootstrapExportId = this.nextExportId++;
      this.exports.set(this.bootstrapExportId, { dispatcher, refs: 0 });
    }
    const exported = this.exports.get(this.bootstrapExportId)!;
    exported.refs++;
    this.answers.get(questionId)!.exportId = this.bootstrapExportId;
    this.sendReturn(questionId, capabilityReturn(questionId, this.bootstrapExportId));
  }

  /** Adds an answer table entry; a reused live question id is a protocol error. */
  private registerAnswer(questionId: number): boolean {
    if (this.answers.has(questionId)) {
      this.abort(`question id ${questionId} is already in use`);
      return false;
    }
    if (this.answers.size >= this.limits.maxUnfinishedAnswers + this.limits.maxOutstandingCalls) {
      this.abort("too many answers the peer never finished");
      return false;
    }
    this.answers.set(questionId, { returned: false, finished: false });
    return true;
  }

  private onCall(reader: MessageReader, root: StructReader): void {
    const body = this.body(root);
    const questionId = readU32(body, Layout.Call.questionId);
    const methodId = readU16(body, Layout.Call.methodId);
    const interfaceId = readU64(body, Layout.Call.interfaceId);
    if (!this.registerAnswer(questionId)) return;

    if (readU16(body, Layout.Call.sendResultsToTag) !== 0) {
      this.sendReturn(questionId, exceptionReturn(questionId, "unimplemented", "sendResultsTo other than caller is not supported"));
      return;
    }
    const target = readStruct(body, Layout.Call.target);
    const dispatcher = target === null ? undefined : this.resolveTarget(target);
    if (dispatcher === undefined) {
      this.sendReturn(
        questionId,
        exceptionReturn(questionId, "failed", "INVALID_ARGUMENT: call target is not a capability this connection exports"),
      );
      return;
    }
    const method = dispatcher.interfaceId === interfaceId ? dispatcher.methods[methodId] : undefined;
    if (method === undefined) {
      const which = `interface 0x${interfaceId.toString(16)} method ${methodId}`;
      const reason = `Method not implemented: ${which} (this capability is ${dispatcher.name})`;
      this.sendReturn(questionId, exceptionReturn(questionId, "unimplemented", reason));
      return;
    }
    if (this.draining) {
      this.sendReturn(questionId, exceptionReturn(questionId, "disconnected", "UNAVAILABLE: the worker is shutting down"));
      return;
    }
    if (this.runningCalls >= this.limits.maxOutstandingCalls) {
      const reason = `RESOURCE_EXHAUSTED: more than ${this.limits.maxOutstandingCalls} calls in flight on this connection`;
      this.sendReturn(questionId, exceptionReturn(questionId, "overloaded", reason));
      return;
    }

    let pending: Promise<ContentWriter>;
    const deadline = this.limits.callDeadlineMs > 0 ? new AbortController() : undefined;
    try {
      const payload = readStruct(body, Layout.Call.params);
      const params = (payload && readStruct(payload, Layout.Payload.content)) ?? emptyStruct(reader);
      pending = method.handle(params, {
        connection: this.peer,
        requestId: `${this.peer}/${++this.requestCounter}`,
        signal: deadline?.signal,
        describePeer: this.describePeer,
      });
    } catch (err) {
      pending = Promise.reject(err);
    }
    if (deadline) pending = withDeadline(pending, this.limits.callDeadlineMs, method.name, deadline);
    this.runningCalls++;
    pending
      .then(
        (writeResults) => this.completeCall(questionId, writeResults, undefined),
        (err: unknown) => this.completeCall(questionId, undefined, err),
      )
      .catch((err: unknown) => {
        // Only a bug gets here; it must not become an unhandled rejection (that ends the process).
        this.log.error({ err, peer: this.peer }, "completing an rpc call failed");
        this.abort("internal error completing a call");
      });
  }

  private completeCall(questionId: number, writeResults: ContentWriter | undefined, err: unknown): void {
    this.runningCalls--;
    this.lastActivityMs = Date.now();
    try {
      this.sendCallResult(questionId, writeResults, err);
    } finally {
      if (this.runningCalls === 0) for (const wake of this.idleWaiters.splice(0)) wake();
    }
  }

  private sendCallResult(questionId: number, writeResults: ContentWriter | undefined, err: unknown): void {
    if (this.isClosed) return;
    let message: Buffer;
    if (writeResults) {
      try {
        message = resultsReturn(questionId, writeResults, writeResults.sizeHint);
        if (message.length > this.limits.maxMessageBytes) {
          // The peer would refuse it (and drop the connection): say so instead.
          const limit = this.limits.maxMessageBytes;
          const reason = `RESOURCE_EXHAUSTED: results of ${message.length} bytes exceed the ${limit}-byte message limit`;
          message = exceptionReturn(questionId, "failed", reason);
        }
      } catch (encodeError) {
        this.log.error({ err: encodeError, peer: this.peer }, "encoding rpc results failed");
        message = exceptionReturn(questionId, "failed", asWorkerError(encodeError).reason);
      }
    } else {
      const failure = callFailure(err);
      message = exceptionReturn(questionId, failure.type, failure.reason);
    }
    this.sendReturn(questionId, message);
  }

  /** The dispatcher a MessageTarget names, if it names a capability we export. */
  private resolveTarget(target: StructReader): InterfaceDispatcher | undefined {
    const tag = readU16(target, Layout.MessageTarget.tag);
    if (tag === TargetTag.ImportedCap) {
      return this.exports.get(readU32(target, Layout.MessageTarget.importedCap))?.dispatcher;
    }
    if (tag !== TargetTag.PromisedAnswer) return undefined;
    const promised = readStruct(target, Layout.MessageTarget.promisedAnswer);
    if (promised === null) return undefined;
    const answer = this.answers.get(readU32(promised, Layout.PromisedAnswer.questionId));
    if (answer?.exportId === undefined) return undefined;
    // Only the answer itself is a capability: any getPointerField step leads nowhere.
    const transform = readStructList(promised, Layout.PromisedAnswer.transform);
    if (transform !== null) {
      for (let i = 0; i < transform.length; i++) {
        if (readU16(listStruct(transform, i), Layout.Op.tag) !== 0) return undefined;
      }
    }
    return this.exports.get(answer.exportId)?.dispatcher;
  }

  private sendReturn(questionId: number, message: Buffer): void {
    this.write(message);
    const answer = this.answers.get(questionId);
    if (!answer) return;
    answer.returned = true;
    if (answer.finished) this.answers.delete(questionId);
  }

  private onFinish(body: StructReader): void {
    const questionId = readU32(body, Layout.Finish.questionId);
    const answer = this.answers.get(questionId);
    if (!answer) {
      // A Finish for nothing: harmless, so not worth dropping the peer over.
      this.log.debug({ peer: this.peer, questionId }, "finish for an unknown question");
      return;
    }
    if (answer.exportId !== undefined && readBool(body, Layout.Finish.releaseResultCapsBit, true)) {
      this.releaseExport(answer.exportId, 1);
      answer.exportId = undefined;
    }
    if (answer.returned) this.answers.delete(questionId);
    else answer.finished = true; // still running: its Return is sent, then forgotten
  }

  private onRelease(body: StructReader): void {
    this.releaseExport(readU32(body, Layout.Release.id), readU32(body, Layout.Release.referenceCount));
  }

  private releaseExport(id: number, count: number): void {
    const exported = this.exports.get(id);
    if (!exported) return;
    exported.refs -= count;
    if (exported.refs <= 0) {
      this.exports.delete(id);
      if (id === this.bootstrapExportId) this.bootstrapExportId = undefined;
    }
  }

  // ---- client half: replies ----

  private onReturn(body: StructReader): void {
    const questionId = readU32(body, Layout.Return.answerId);
    const question = this.questions.get(questionId);
    if (!question) {
      this.log.debug({ peer: this.peer, questionId }, "return for an unknown question");
      return;
    }
    this.questions.delete(questionId);
    const tag = readU16(body, Layout.Return.tag);
    let releaseCaps = true;
    try {
      if (tag === ReturnTag.Results) {
        const payload = readStruct(body, Layout.Return.payload);
        if (question.bootstrap) {
          question.bootstrap.importId = this.importBootstrap(payload);
          releaseCaps = false;
          question.resolve(emptyStruct(body.msg));
        } else {
          const content = payload === null ? null : readStruct(payload, Layout.Payload.content);
          question.resolve(content ?? emptyStruct(body.msg));
        }
      } else if (tag === ReturnTag.Exception) {
        const exception = readException(readStruct(body, Layout.Return.payload));
        if (question.bootstrap) question.bootstrap.failure = exception;
        question.reject(exception);
      } else {
        question.reject(new RpcException("failed", `INTERNAL: unsupported return kind ${tag}`));
      }
    } catch (err) {
      const failure = err instanceof RpcException ? err : new RpcException("failed", `INTERNAL: bad return: ${(err as Error).message}`);
      if (question.bootstrap) question.bootstrap.failure = failure;
      question.reject(failure);
    }
    this.write(finishMessage(questionId, releaseCaps));
    this.freeQuestionIds.push(questionId);
  }

  private importBootstrap(payload: StructReader | null): number {
    if (payload === null) throw new RpcException("failed", "INTERNAL: bootstrap returned no payload");
    const index = readCapabilityIndex(payload, Layout.Payload.content);
    const table = readStructList(payload, Layout.Payload.capTable);
    if (index < 0 || table === null || index >= table.length) {
      throw new RpcException("failed", "INTERNAL: bootstrap returned no capability");
    }
    const descriptor = listStruct(table, index);
    const kind = readU16(descriptor, Layout.CapDescriptor.tag);
    if (kind !== CapDescriptorTag.SenderHosted && kind !== CapDescriptorTag.SenderPromise) {
      throw new RpcException("failed", `INTERNAL: bootstrap capability of unsupported kind ${kind}`);
    }
    return readU32(descriptor, Layout.CapDescriptor.id);
  }

  private onAbort(exception: StructReader | null): void {
    const reason = exception ? readText(exception, Layout.Exception.reason) : "";
    this.log.debug({ peer: this.peer, reason }, "peer aborted the connection");
    this.shutdown(new Error(`peer aborted: ${reason}`));
    this.socket.destroy();
  }

  private onUnimplemented(echoed: StructReader | null): void {
    if (echoed === null) return;
    const tag = readU16(echoed, 0);
    const body = readStruct(echoed, 0);
    if (body === null) return;
    if (tag === MessageTag.Call || tag === MessageTag.Bootstrap) {
      const questionId = readU32(body, 0);
      const question = this.questions.get(questionId);
      if (!question) return;
      this.questions.delete(questionId);
      this.freeQuestionIds.push(questionId);
      question.reject(new RpcException("unimplemented", "peer does not implement this message"));
    }
  }

  /** We never import promises we keep, so a resolved one is released right away. */
  private onResolve(body: StructReader): void {
    if (readU16(body, Layout.Resolve.tag) !== 0) return;
    const descriptor = readStruct(body, 0);
    if (descriptor === null) return;
    const kind = readU16(descriptor, Layout.CapDescriptor.tag);
    if (kind === CapDescriptorTag.SenderHosted || kind === CapDescriptorTag.SenderPromise) {
      this.write(releaseMessage(readU32(descriptor, Layout.CapDescriptor.id), 1));
    }
  }

  /** senderLoopback is reflected back as receiverLoopback; other contexts are level-3 features. */
  private onDisembargo(reader: MessageReader, root: StructReader): void {
    const body = this.body(root);
    if (readU16(body, Layout.Disembargo.tag) !== 0) {
      this.sendUnimplemented(reader);
      return;
    }
    const b = new MessageBuilder(256);
    const message = b.initStruct(b.root, Layout.Message.data, Layout.Message.ptrs);
    b.setU16(message, MessageTag.Disembargo);
    const out = b.initStruct(message + 8, Layout.Disembargo.data, Layout.Disembargo.ptrs);
    b.setU32(out + Layout.Disembargo.value, readU32(body, Layout.Disembargo.value));
    b.setU16(out + Layout.Disembargo.tag, 1);
    const at = pointerOffset(body, Layout.Disembargo.target);
    if (at >= 0) copyPointer(reader, body.segId, at, body.depth, b, out + 8);
    this.write(b.finish());
  }

  private sendUnimplemented(reader: MessageReader): void {
    const b = new MessageBuilder(256);
    const message = b.initStruct(b.root, Layout.Message.data, Layout.Message.ptrs);
    b.setU16(message, MessageTag.Unimplemented);
    copyPointer(reader, 0, 0, 0, b, message + 8);
    this.write(b.finish());
  }

  // ---- output and teardown ----

  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  private write(message: Buffer): void {
    if (this.isClosed || this.socket.destroyed) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    this.socket.write(message);
    if (!this.readPaused && this.socket.writableLength > this.limits.maxWriteBufferBytes) {
      // The peer is not reading its answers: stop reading its questions until it catches up.
      this.readPaused = true;
      this.socket.pause();
      this.socket.once("drain", () => {
        this.readPaused = false;
        if (!this.isClosed) this.socket.resume();
      });
    }
  }

  /** Protocol violation: tell the peer why, then drop this connection only. */
  private abort(reason: string): void {
    if (this.isClosed) return;
    this.log.warn({ peer: this.peer, reason }, "aborting rpc connection");
    this.socket.write(abortMessage(reason));
    this.socket.end();
    const timer = setTimeout(() => this.socket.destroy(), 1000);
    timer.unref();
    this.shutdown(new Error(reason));
  }

  private shutdown(err: Error | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closedError = err;
    clearTimeout(this.frameTimer);
    this.decoder.clear(); // nothing more will be read: hand the bytes back now, not at GC
    this.budget?.give(this.charged);
    this.charged = 0;
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
    const error = this.disconnected();
    const questions = [...this.questions.values()];
    this.questions.clear();
    for (const question of questions) question.reject(error);
    this.answers.clear();
    this.exports.clear();
    for (const waiter of this.closeWaiters.splice(0)) waiter();
    if (err) this.log.debug({ peer: this.peer, err: err.message }, "rpc connection closed");
  }
}

/** What a failed call answers: the exception type and "CODE: message". */
export function callFailure(err: unknown): { type: ExceptionType; reason: string } {
  if (err instanceof RpcException) return { type: err.type, reason: err.reason };
  // Params that do not decode (bad pointers, limits): the caller's fault, not ours.
  if (err instanceof MalformedMessageError) return { type: "failed", reason: `INVALID_ARGUMENT: malformed parameters: ${err.message}` };
  return { type: "failed", reason: asWorkerError(err).reason };
}

/**
 * `work`, or DEADLINE_EXCEEDED once `ms` have passed; a late outcome of `work` is dropped, and
 * `controller` is aborted so the work can undo what the caller will never hear of.
 */
export function withDeadline<T>(work: Promise<T>, ms: number, name: string, controller: AbortController): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new WorkerError("DEADLINE_EXCEEDED", `${name} did not finish within the ${ms} ms call deadline`));
      controller.abort();
    }, ms);
    timer.unref();
  });
  work.catch(() => undefined); // a rejection after the deadline must not go unhandled
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}

function readException(exception: StructReader | null): RpcException {
  if (exception === null) return new RpcException("failed", "INTERNAL: exception without details");
  const type = EXCEPTION_TYPES[readU16(exception, Layout.Exception.type)] ?? "failed";
  return new RpcException(type, readText(exception, Layout.Exception.reason));
}
