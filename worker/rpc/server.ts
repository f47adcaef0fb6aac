// Serves one bootstrap interface on a unix socket (and optionally TCP); every connection is an
// independent RpcConnection, so a bad peer only ever takes its own connection down.
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import net from "node:net";
import type { Logger } from "pino";
import { type InterfaceDispatcher, RpcConnection } from "./connection.js";
import { describeUnixPeer, unixPeerCredentials } from "./peer-cred.js";
import type { WorkerApi } from "../core/api.js";
import type { RpcLimits } from "./limits.js";
import { workerDispatcher } from "./worker-service.js";

export interface RpcServerOptions {
  dispatcher: InterfaceDispatcher;
  logger: Logger;
  /** Unix socket path; created with mode 0660. */
  socketPath?: string;
  /** "host:port"; port 0 picks a free one (see tcpAddress). */
  tcp?: string;
  limits?: Partial<RpcLimits>;
}

export class RpcServer {
  private readonly servers: net.Server[] = [];
  private readonly connections = new Set<RpcConnection>();
  private counter = 0;

  private constructor(private readonly options: RpcServerOptions) {}

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
    await listenOn(server, path);
    chmodSync(path, 0o660);
    this.servers.push(server);
  }

  private async listenTcp(hostPort: string): Promise<void> {
    const colon = hostPort.lastIndexOf(":");
    const host = hostPort.slice(0, colon).replace(/^\[|\]$/g, "");
    const port = Number(hostPort.slice(colon + 1));
    const server = this.createServer("tcp");
    await listenOn(server, { host, port });
    this.servers.push(server);
  }

  private createServer(kind: "unix" | "tcp"): net.Server {
    const server = net.createServer({ noDelay: true }, (socket) => {
      // Unix peers are named by a connection id; audits add the kernel's record of their process and user.
      const peer = kind === "tcp" ? `tcp:${socket.remoteAddress}:${socket.remotePort}#${++this.counter}` : `unix#${++this.counter}`;
      const log = this.options.logger;
      const described = kind === "unix" ? describeUnixPeer(peer, unixPeerCredentials(socket)) : peer;
      const describePeer = () => Promise.resolve(described);
      const connection = new RpcConnection(socket, {
        bootstrap: this.options.dispatcher,
        logger: log,
        peer,
        limits: this.options.limits,
        describePeer: kind === "unix" ? describePeer : undefined,
      });
      this.connections.add(connection);
      log.debug({ peer }, "rpc connection opened");
      void connection.waitClosed().then(() => {
        this.connections.delete(connection);
        log.debug({ peer }, "rpc connection closed");
      });
    });
    server.on("error", (err) => this.options.logger.error({ err }, "rpc listener error"));
    return server;
  }

  /**
   * Stops listening; every connection refuses new calls, lets its running calls answer (for up to
   * `graceMs`), then closes.
   */
  async close(graceMs = 5000): Promise<void> {
    const closing = this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    this.servers.length = 0;
    await Promise.all([...this.connections].map((connection) => connection.drain(graceMs)));
    await Promise.all(closing);
  }
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
