// Cap'n Proto calls of the Worker interface over NATS request/reply: one request per call, no
// capabilities, no connection state. The envelope (everything else is Cap'n Proto as on a stream):
//   request  headers Pcr-Method: <ordinal, decimal>; Pcr-Interface: <interface id, hex; Worker if absent>;
//                    Pcr-Request-Id: <id> and Pcr-Timeout-Ms: <caller's timeout> (both optional)
//            body    one standard serialized message (segment table, segments); root = params struct
//   reply    ok:     no Pcr-Error header; body = one serialized message, root = results struct
//            error:  Pcr-Error: <Cap'n Proto exception type>; body = the reason, UTF-8 "CODE: message"
// The reason is in the body because reasons may hold newlines, which NATS headers cannot.
import { randomUUID } from "node:crypto";
import {
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  type Subscription,
  ClosedConnectionError,
  DrainingConnectionError,
  headers as natsHeaders,
  RequestError,
  TimeoutError,
} from "@nats-io/transport-node";
import type { Logger } from "pino";
import type { WorkerApi } from "../core/api.js";
import { invalidArgument, WorkerError } from "../core/errors.js";
import { type CallContext, type ContentWriter, callFailure, type MethodEntry, RpcException, withDeadline } from "../rpc/connection.js";
import { FrameDecoder, FramingError } from "../rpc/framing.js";
import { type RpcLimits, withDefaults } from "../rpc/limits.js";
import { EXCEPTION_TYPES, type ExceptionType } from "../rpc/protocol.js";
import { MalformedMessageError, MessageBuilder, MessageReader, type StructReader } from "../rpc/wire.js";
import type { WorkerCaller } from "../rpc/worker-client.js";
import { workerDispatcher } from "../rpc/worker-service.js";
import { HOST_ID } from "./host-info.js";

export const Header = {
  method: "Pcr-Method",
  interface: "Pcr-Interface",
  requestId: "Pcr-Request-Id",
  timeoutMs: "Pcr-Timeout-Ms",
  error: "Pcr-Error",
} as const;

/** Room left for reply headers under the server's max_payload (which counts headers and body). */
const HEADER_ALLOWANCE_BYTES = 1024;
/** An error reason longer than this is cut: it is text for people, not data. */
const MAX_REASON_BYTES = 16 * 1024;
const REQUEST_ID = /^[A-Za-z0-9._:/-]{1,128}$/;

/** The subject a host serves its Worker calls on. */
export function hostCallSubject(hostId: string): string {
  if (!HOST_ID.test(hostId)) throw invalidArgument(`host id ${JSON.stringify(hostId)} is not 1-64 of [A-Za-z0-9_-]`);
  return `pcr.host.${hostId}.call`;
}

type ReadLimits = Pick<RpcLimits, "maxMessageBytes" | "maxSegments" | "traversalLimitWords" | "nestingLimit">;
type ServeLimits = ReadLimits & Pick<RpcLimits, "maxOutstandingCalls">;

export interface NatsServeOptions {
  logger: Logger;
  limits?: Partial<ServeLimits>;
  /** Longest a call may run, whatever the caller's timeout; 0 means only the caller's. */
  callDeadlineMs?: number;
}

export interface NatsWorkerServer {
  readonly subject: string;
  readonly callsInFlight: number;
  /** Stops taking calls and waits for the running ones to be answered. */
  drain(): Promise<void>;
}

/** Serves `api` on `subject` until drained (or the connection closes). */
export function serveWorkerOverNats(nc: NatsConnection, subject: string, api: WorkerApi, options: NatsServeOptions): NatsWorkerServer {
  const dispatcher = workerDispatcher(api);
  const limits = withDefaults(options.limits);
  const log = options.logger.child({ subject });
  const connection = `nats:${subject}`;
  let running = 0;
  let counter = 0;
  let draining = false;
  const idleWaiters: Array<() => void> = [];

  const send = (msg: Msg, reply: Reply, method: string): void => {
    try {
      msg.respond(reply.data, { headers: reply.hdrs });
    } catch (err) {
      // The connection closed under us: the caller times out, as with any lost reply.
      log.debug({ err, method }, "answering a nats rpc call failed");
    }
  };

  /** The reply to a finished call: its results, or its failure. */
  const answer = (method: string, outcome: { results: ContentWriter } | { error: unknown }): Reply => {
    if ("error" in outcome) {
      const failure = callFailure(outcome.error);
      return errorReply(failure.type, failure.reason);
    }
    let data: Uint8Array;
    try {
      data = encodeMessage(outcome.results, outcome.results.sizeHint);
    } catch (err) {
      log.error({ err, method }, "encoding nats rpc results failed");
      return errorReply("failed", callFailure(err).reason);
    }
    const limit = Math.min(limits.maxMessageBytes, nc.info ? nc.info.max_payload - HEADER_ALLOWANCE_BYTES : Infinity);
    if (data.length <= limit) return { data, hdrs: undefined };
    return errorReply("failed", `RESOURCE_EXHAUSTED: results of ${data.length} bytes exceed the ${limit}-byte message limit`);
  };

  /** The method a request may run, or why it may not. */
  const admit = (msg: Msg): MethodEntry | { type: ExceptionType; reason: string } => {
    const method = parseOrdinal(msg.headers?.get(Header.method));
    if (method === undefined) return { type: "failed", reason: `INVALID_ARGUMENT: missing or malformed ${Header.method} header` };
    const iface = msg.headers?.get(Header.interface) || dispatcher.interfaceId.toString(16);
    const known = /^[0-9a-f]{1,16}$/i.test(iface) && BigInt(`0x${iface}`) === dispatcher.interfaceId;
    const entry = known ? dispatcher.methods[method] : undefined;
    if (entry === undefined) {
      const which = `interface 0x${iface.slice(0, 16)} method ${method}`;
      return { type: "unimplemented", reason: `Method not implemented: ${which} (this subject serves ${dispatcher.name})` };
    }
    if (draining) return { type: "disconnected", reason: "UNAVAILABLE: the worker is shutting down" };
    if (running >= limits.maxOutstandingCalls) {
      return { type: "overloaded", reason: `RESOURCE_EXHAUSTED: more than ${limits.maxOutstandingCalls} calls in flight on this host` };
    }
    return entry;
  };

  const onRequest = (msg: Msg): void => {
    if (!msg.reply) return; // a publish, not a request: nobody to answer
    const entry = admit(msg);
    if (!("handle" in entry)) {
      log.debug({ reason: entry.reason }, "refused a nats rpc call");
      send(msg, errorReply(entry.type, entry.reason), "");
      return;
    }

    const timeoutMs = parseTimeout(msg.headers?.get(Header.timeoutMs));
    const deadlineMs = Math.min(timeoutMs ?? Infinity, options.callDeadlineMs || Infinity);
    const deadline = deadlineMs < Infinity ? new AbortController() : undefined;
    const requestId = msg.headers?.get(Header.requestId) ?? "";
    const context: CallContext = {
      connection,
      requestId: REQUEST_ID.test(requestId) ? requestId : `${connection}/${++counter}`,
      signal: deadline?.signal,
    };
    let pending: Promise<ContentWriter>;
    try {
      // Decoded before any await: the params borrow the message's buffer.
      pending = entry.handle(readMessage(msg.data, limits), context);
    } catch (err) {
      pending = Promise.reject(err);
    }
    if (deadline) pending = withDeadline(pending, deadlineMs, entry.name, deadline);
    running++;
    pending
      .then(
        (results) => send(msg, answer(entry.name, { results }), entry.name),
        (error: unknown) => send(msg, answer(entry.name, { error }), entry.name),
      )
      .catch((err: unknown) => log.error({ err, method: entry.name }, "completing a nats rpc call failed"))
      .finally(() => {
        running--;
        if (running === 0) for (const wake of idleWaiters.splice(0)) wake();
      });
  };

  const subscription: Subscription = nc.subscribe(subject, {
    callback: (err, msg) => {
      if (err) {
        log.warn({ err }, "nats rpc subscription failed");
        return;
      }
      try {
        onRequest(msg);
      } catch (caught) {
        // Only a bug gets here; one request must not take the host's calls down.
        log.error({ err: caught }, "handling a nats rpc request failed");
      }
    },
  });

  return {
    subject,
    get callsInFlight() {
      return running;
    },
    async drain() {
      draining = true;
      await subscription.drain().catch(() => undefined); // a closed connection has nothing to drain
      if (running > 0) await new Promise<void>((resolve) => idleWaiters.push(resolve));
    },
  };
}

export interface NatsCallerOptions {
  /** How long a call may take before it fails with DEADLINE_EXCEEDED; the host is told too. */
  timeoutMs: number;
  /** Who answers on the subject, for error messages (default: the subject). */
  host?: string;
  limits?: Partial<ReadLimits>;
}

/**
 * Calls of a WorkerClient as NATS requests to `subject`. close() leaves `nc` open: the
 * connection is shared by the callers of every host.
 */
export function natsWorkerCaller(nc: NatsConnection, subject: string, options: NatsCallerOptions): WorkerCaller {
  const limits = withDefaults(options.limits);
  const host = options.host ?? subject;
  return {
    async call(interfaceId, method, write, sizeHint) {
      const body = encodeMessage(write, sizeHint);
      const maxPayload = nc.info ? nc.info.max_payload - HEADER_ALLOWANCE_BYTES : Infinity;
      if (body.length > Math.min(maxPayload, limits.maxMessageBytes)) {
        const limit = Math.min(maxPayload, limits.maxMessageBytes);
        throw new WorkerError("RESOURCE_EXHAUSTED", `request of ${body.length} bytes exceeds the ${limit}-byte message limit`);
      }
      const hdrs = natsHeaders();
      hdrs.set(Header.method, String(method));
      hdrs.set(Header.interface, interfaceId.toString(16));
      hdrs.set(Header.requestId, randomUUID());
      hdrs.set(Header.timeoutMs, String(options.timeoutMs));
      let answer: Msg;
      const dropped = onDisconnect(nc);
      try {
        const request = nc.request(subject, body, { timeout: options.timeoutMs, headers: hdrs });
        request.catch(() => undefined); // when the connection dropped first, its end no longer matters
        answer = await Promise.race([request, dropped.promise]);
      } catch (err) {
        throw requestFailure(err, host, options.timeoutMs);
      } finally {
        dropped.done();
      }
      const type = answer.headers?.get(Header.error);
      if (type) {
        const reason = Buffer.from(answer.data.subarray(0, MAX_REASON_BYTES)).toString("utf8");
        throw new RpcException((EXCEPTION_TYPES as readonly string[]).includes(type) ? (type as ExceptionType) : "failed", reason);
      }
      try {
        return readMessage(answer.data, limits);
      } catch (err) {
        throw new WorkerError("INTERNAL", `malformed reply from host ${host}: ${(err as Error).message}`, { cause: err });
      }
    },
    close() {},
  };
}

/** Calls in flight on each connection, failed at once when it drops. */
const inFlight = new WeakMap<NatsConnection, Set<(err: WorkerError) => void>>();

/**
 * Rejects when `nc` disconnects. A reply the host sent meanwhile is lost with the old connection,
 * so the call would wait out its whole timeout (minutes, for a create): its caller learns at once
 * that the outcome is unknown instead, and may retry (a create with its idempotency key).
 */
function onDisconnect(nc: NatsConnection): { promise: Promise<never>; done: () => void } {
  let waiters = inFlight.get(nc);
  if (!waiters) {
    const all = new Set<(err: WorkerError) => void>();
    waiters = all;
    inFlight.set(nc, all);
    void (async () => {
      for await (const status of nc.status()) {
        if (status.type !== "disconnect") continue;
        const error = new WorkerError("UNAVAILABLE", "the NATS connection dropped during the call: its outcome is unknown");
        for (const fail of all) fail(error);
        all.clear();
      }
    })().catch(() => undefined);
  }
  let fail!: (err: WorkerError) => void;
  const promise = new Promise<never>((_, reject) => (fail = reject));
  promise.catch(() => undefined);
  waiters.add(fail);
  return { promise, done: () => waiters.delete(fail) };
}

function requestFailure(err: unknown, host: string, timeoutMs: number): WorkerError {
  if (err instanceof RequestError && err.isNoResponders())
    return new WorkerError("UNAVAILABLE", `host ${host} is not serving calls (no responder)`);
  // The call may have reached the host and taken effect: not UNAVAILABLE, which says it did not.
  if (err instanceof TimeoutError) return new WorkerError("DEADLINE_EXCEEDED", `host ${host} did not answer within ${timeoutMs} ms`);
  if (err instanceof ClosedConnectionError || err instanceof DrainingConnectionError) {
    return new WorkerError("UNAVAILABLE", `calling host ${host}: the NATS connection is closed`);
  }
  if (err instanceof WorkerError) return err;
  return new WorkerError("UNAVAILABLE", `calling host ${host}: ${(err as Error).message}`, { cause: err });
}

/** One serialized message whose root `write` fills (an empty struct without one). */
function encodeMessage(write: ContentWriter | undefined, sizeHint?: number): Uint8Array {
  const b = new MessageBuilder(sizeHint ?? 256);
  if (write) write(b, b.root);
  else b.initStruct(b.root, 0, 0);
  return b.finish();
}

/** The root struct of exactly one serialized message; anything else is MalformedMessageError. */
function readMessage(bytes: Uint8Array, limits: ReadLimits): StructReader {
  const decoder = new FrameDecoder(limits);
  let frames: Buffer[][];
  try {
    frames = decoder.push(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (err) {
    if (err instanceof FramingError) throw new MalformedMessageError(err.message);
    throw err;
  }
  if (frames.length !== 1 || decoder.pendingBytes !== 0) {
    throw new MalformedMessageError(frames.length === 0 ? "truncated message" : "bytes after the message");
  }
  return new MessageReader(frames[0]!, limits).root();
}

interface Reply {
  data: Uint8Array;
  hdrs: MsgHdrs | undefined;
}

function errorReply(type: ExceptionType, reason: string): Reply {
  const hdrs = natsHeaders();
  hdrs.set(Header.error, type);
  return { data: Buffer.from(reason.length > MAX_REASON_BYTES ? reason.slice(0, MAX_REASON_BYTES) : reason, "utf8"), hdrs };
}

function parseOrdinal(text: string | undefined): number | undefined {
  if (text === undefined || !/^\d{1,5}$/.test(text)) return undefined;
  const value = Number(text);
  return value <= 0xffff ? value : undefined;
}

/** A caller's timeout in ms (at most a day); undefined when absent or nonsense. */
function parseTimeout(text: string | undefined): number | undefined {
  if (text === undefined || !/^\d{1,8}$/.test(text)) return undefined;
  const value = Number(text);
  return value > 0 && value <= 86_400_000 ? value : undefined;
}
