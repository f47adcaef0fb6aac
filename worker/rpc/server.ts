// Serves one bootstrap interface on a unix socket (and optionally TCP); every connection is an
// independent RpcConnection, so a bad peer only ever takes its own connection down.
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import net from "node:net";
import tls from "node:tls";
import type { Logger } from "pino";
import { type InterfaceDispatcher, RpcConnection } from "./connection.js";
import { describeUnixPeer, unixPeerCredentials } from "./peer-cred.js";
import type { WorkerApi } from "../core/api.js";
import { ByteBudget, type RpcLimits } from "./limits.js";
import { abortMessage } from "./protocol.js";
import { releaseFreedMemory } from "../native.js";
import { workerDispatcher } from "./worker-service.js";

/** Connections the kernel queues for us before refusing (capped by net.core.somaxconn). */
const LISTEN_BACKLOG = 4096;
/** Held bytes past which a drop back is worth a GC and a heap trim. */
const RECLAIM_ABOVE_BYTES = 16 * 1024 * 1024;

export interface RpcServerOptions {
  dispatcher: InterfaceDispatcher;
  logger: Logger;
  /** Unix socket path; created with mode 0660. */
  socketPath?: string;
  /** "host:port"; port 0 picks a free one (see tcpAddress). */
  tcp?: string;
  limits?: Partial<RpcLimits>;
  admission?: Partial<AdmissionLimits>;
  /** Mutual TLS on the TCP listener (PEM): clients must present a certificate that chains to clientCa. */
  tls?: ServerTls;
}

export interface ServerTls {
  cert: string | Buffer;
  key: string | Buffer;
  clientCa: string | Buffer;
}

/** How long a TLS client has to finish its handshake. */
const TLS_HANDSHAKE_TIMEOUT_MS = 10_000;

/** What the server admits and keeps, across all its connections. */
export interface AdmissionLimits {
  /** Connections open at once, all peers together. */
  maxConnections: number;
  /** Connections open at once from one user (unix socket; root is exempt: it owns the worker) or one address (TCP). */
  maxConnectionsPerPeer: number;
  /** Bytes of incomplete messages held across all connections (see ByteBudget). */
  maxPendingBytes: number;
  /** A connection with no call under way and no bytes for this long is closed; 0 keeps it. */
  idleTimeoutMs: number;
}

export const DEFAULT_ADMISSION: AdmissionLimits = {
  maxConnections: 8192,
  maxConnectionsPerPeer: 1024,
  maxPendingBytes: 64 * 1024 * 1024,
  idleTimeoutMs: 10 * 60_000,
};

export class RpcServer {
  private readonly servers: net.Server[] = [];
  private readonly connections = new Set<RpcConnection>();
  /** Open connections by peer key (uid or address). */
  private readonly perPeer = new Map<string, number>();
  private readonly admission: AdmissionLimits;
  private readonly budget: ByteBudget;
  private readonly idleSweep: NodeJS.Timeout | undefined;
  private refusedSinceLog = 0;
  /** Pending hand-back of memory after a burst of held bytes (see maybeReclaim). */
  private reclaim: NodeJS.Timeout | undefined;
  private counter = 0;

  private constructor(private readonly options: RpcServerOptions) {
    this.admission = { ...DEFAULT_ADMISSION, ...options.admission };
    this.budget = new ByteBudget(this.admission.maxPendingBytes);
    const idleMs = this.admission.idleTimeoutMs;
    if (idleMs > 0) {
      this.idleSweep = setInterval(() => this.closeIdle(), Math.max(50, Math.min(idleMs / 4, 10_000)));
      this.idleSweep.unref();
    }
  }

  static async listen(options: RpcServerOptions): Promise<RpcServer> {
    const server = new RpcServer(options);
    try {
      if (options.socketPath) await server.listenUnix(options.socketPath);
      if (options.tcp) await server.listenTcp(options.tcp);
    } catch (err) {
      await server.close();
      throw err;
    }
    return server;
  }

  /** The bound TCP address, if listening on TCP. */
  get tcpAddress(): { host: string; port: number } | undefined {
    for (const s of this.servers) {
      const address = s.address();
      if (address && typeof address === "object") return { host: address.address, port: address.port };
    }
    return undefined;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  private async listenUnix(path: string): Promise<void> {
    await removeStaleSocket(path);
    const server = this.createServer("unix");
    await listenOn(server, { path, backlog: LISTEN_BACKLOG });
    chmodSync(path, 0o660);
    this.servers.push(server);
  }

  private async listenTcp(hostPort: string): Promise<void> {
    const colon = hostPort.lastIndexOf(":");
    const host = hostPort.slice(0, colon).replace(/^\[|\]$/g, "");
    const port = Number(hostPort.slice(colon + 1));
    const server = this.createServer(this.options.tls ? "tls" : "tcp");
    await listenOn(server, { host, port, backlog: LISTEN_BACKLOG });
    this.servers.push(server);
  }

  private createServer(kind: "unix" | "tcp" | "tls"): net.Server {
    const onConnection = (socket: net.Socket) => {
      // Unix peers are named by a connection id; audits add the kernel's record of their process and user.
      const peer =
        kind === "unix"
          ? `unix#${++this.counter}`
          : `${kind}:${socket.remoteAddress}:${socket.remotePort}#${++this.counter}${clientName(socket)}`;
      const log = this.options.logger;
      const cred = kind === "unix" ? unixPeerCredentials(socket) : undefined;
      const peerKey = kind === "unix" ? `uid ${cred?.uid ?? "unknown"}` : `address ${socket.remoteAddress}`;
      const refusal = this.admit(peerKey, cred?.uid === 0);
      if (refusal) return this.refuse(socket, peer, refusal);
      const described = kind === "unix" ? describeUnixPeer(peer, cred) : peer;
      const describePeer = () => Promise.resolve(described);
      const connection = new RpcConnection(socket, {
        bootstrap: this.options.dispatcher,
        logger: log,
        peer,
        limits: this.options.limits,
        describePeer: kind === "unix" ? describePeer : undefined,
        budget: this.budget,
      });
      this.connections.add(connection);
      this.perPeer.set(peerKey, (this.perPeer.get(peerKey) ?? 0) + 1);
      log.debug({ peer }, "rpc connection opened");
      void connection.waitClosed().then(() => {
        this.connections.delete(connection);
        this.maybeReclaim();
        const left = (this.perPeer.get(peerKey) ?? 1) - 1;
        if (left > 0) this.perPeer.set(peerKey, left);
        else this.perPeer.delete(peerKey);
        log.debug({ peer }, "rpc connection closed");
      });
    };
    let server: net.Server;
    if (kind === "tls") {
      const { cert, key, clientCa } = this.options.tls!;
      // A client without a certificate from clientCa fails the handshake: no Cap'n Proto byte of it is read.
      server = tls.createServer(
        {
          cert,
          key,
          ca: clientCa,
          requestCert: true,
          rejectUnauthorized: true,
          minVersion: "TLSv1.2",
          handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS,
          noDelay: true,
        },
        onConnection,
      );
      server.on("tlsClientError", (err, socket) =>
        this.options.logger.warn({ peer: `tls:${socket.remoteAddress}`, err: err.message }, "tls client refused"),
      );
    } else {
      server = net.createServer({ noDelay: true }, onConnection);
    }
    server.on("error", (err) => this.options.logger.error({ err }, "rpc listener error"));
    return server;
  }

  /** Why a new connection from `peerKey` may not be served, or undefined when it may. */
  private admit(peerKey: string, exempt: boolean): string | undefined {
    const { maxConnections, maxConnectionsPerPeer } = this.admission;
    if (this.connections.size >= maxConnections)
      return `RESOURCE_EXHAUSTED: the worker serves at most ${maxConnections} connections at once`;
    if (!exempt && (this.perPeer.get(peerKey) ?? 0) >= maxConnectionsPerPeer) {
      return `RESOURCE_EXHAUSTED: at most ${maxConnectionsPerPeer} connections at once from one ${peerKey.split(" ")[0]}; close idle ones`;
    }
    return undefined;
  }

  /** Answers with an Abort that says why, then closes; logged at most once a second. */
  private refuse(socket: net.Socket, peer: string, reason: string): void {
    socket.on("error", () => undefined);
    socket.end(abortMessage(reason));
    setTimeout(() => socket.destroy(), 1000).unref();
    if (this.refusedSinceLog++ === 0) {
      this.options.logger.warn({ peer, reason }, "rpc connection refused");
      setTimeout(() => {
        if (this.refusedSinceLog > 1) this.options.logger.warn({ refused: this.refusedSinceLog - 1 }, "more rpc connections refused");
        this.refusedSinceLog = 0;
      }, 1000).unref();
    }
  }

  /**
   * Once many bytes were held and the connections holding them are gone, hand the memory back
   * (a second later, so that one GC serves a whole burst of closes).
   */
  private maybeReclaim(): void {
    if (this.reclaim || this.budget.highWaterBytes < RECLAIM_ABOVE_BYTES || this.budget.usedBytes > RECLAIM_ABOVE_BYTES / 4) return;
    this.reclaim = setTimeout(() => {
      this.reclaim = undefined;
      if (this.budget.usedBytes > RECLAIM_ABOVE_BYTES / 4) return;
      this.budget.resetHighWater();
      try {
        releaseFreedMemory();
      } catch (err) {
        this.options.logger.warn({ err: (err as Error).message }, "could not hand memory back");
      }
    }, 1000);
    this.reclaim.unref();
  }

  private closeIdle(): void {
    const now = Date.now();
    for (const connection of this.connections) {
      if (connection.idleForMs(now) >= this.admission.idleTimeoutMs) connection.close();
    }
  }

  /**
   * Stops listening; every connection refuses new calls, lets its running calls answer (for up to
   * `graceMs`), then closes.
   */
  async close(graceMs = 5000): Promise<void> {
    clearInterval(this.idleSweep);
    clearTimeout(this.reclaim);
    const closing = this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    this.servers.length = 0;
    await Promise.all([...this.connections].map((connection) => connection.drain(graceMs)));
    await Promise.all(closing);
  }
}

/** " CN=<name>" of a TLS client's certificate, for logs and audits; "" on plain sockets. */
function clientName(socket: net.Socket): string {
  if (!(socket instanceof tls.TLSSocket)) return "";
  const cn = socket.getPeerCertificate()?.subject?.CN;
  return cn ? ` CN=${String(cn).replace(/[^\x20-\x7e]/g, "?")}` : "";
}

function listenOn(server: net.Server, target: string | net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    const done = () => {
      server.off("error", reject);
      resolve();
    };
    if (typeof target === "string") server.listen(target, done);
    else server.listen(target, done);
  });
}

/** Removes a socket file nobody listens on; refuses to touch a live one or a non-socket. */
async function removeStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return; // absent
  }
  if (!isSocket) throw new Error(`${path} exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path);
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => resolve(false));
  });
  if (live) throw new Error(`another process is already listening on ${path}`);
  unlinkSync(path);
}

export interface WorkerRpcOptions extends Omit<RpcServerOptions, "dispatcher"> {
  api: WorkerApi;
}

/** The worker's RPC endpoint: the Worker interface of schema/worker.capnp served from `api`. */
export function startRpcServer(options: WorkerRpcOptions): Promise<RpcServer> {
  const { api, ...rest } = options;
  return RpcServer.listen({ ...rest, dispatcher: workerDispatcher(api) });
}
