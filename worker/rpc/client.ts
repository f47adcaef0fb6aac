// Opens an RpcConnection to "unix:/path", "/path" or "tcp://host:port" (optionally over mutual
// TLS) and bootstraps it.
import net from "node:net";
import tls from "node:tls";
import pino, { type Logger } from "pino";
import { unavailable } from "../core/errors.js";
import { type RemoteCapability, RpcConnection } from "./connection.js";
import type { RpcLimits } from "./limits.js";

export interface ConnectOptions {
  logger?: Logger;
  limits?: Partial<RpcLimits>;
  /** Milliseconds to wait for the socket to connect. */
  connectTimeoutMs?: number;
  /** Mutual TLS for a tcp:// address: our certificate and key, and the CA the server's must chain to (PEM). */
  tls?: ClientTls;
}

export interface ClientTls {
  cert: string | Buffer;
  key: string | Buffer;
  ca: string | Buffer;
  /** Name to check the server's certificate against; defaults to the host of the address. */
  servername?: string;
}

export interface RpcClient {
  connection: RpcConnection;
  /** The peer's bootstrap capability; usable at once (calls are pipelined). */
  bootstrap: RemoteCapability;
}

export function parseAddress(address: string): net.NetConnectOpts {
  if (address.startsWith("tcp://")) {
    const url = new URL(address);
    return { host: url.hostname.replace(/^\[|\]$/g, ""), port: Number(url.port) };
  }
  return { path: address.startsWith("unix:") ? address.slice("unix:".length) : address };
}

export async function connectRpc(address: string, options: ConnectOptions = {}): Promise<RpcClient> {
  const target = parseAddress(address);
  if (options.tls && !("host" in target)) throw unavailable(`TLS options given for ${address}, which is not a tcp:// address`);
  const socket = options.tls
    ? tls.connect({ ...(target as net.TcpNetConnectOpts), ...options.tls, minVersion: "TLSv1.2" }).setNoDelay(true)
    : net.connect({ ...target, noDelay: true } as net.NetConnectOpts);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(unavailable(`connecting to ${address} timed out`));
    }, options.connectTimeoutMs ?? 10_000);
    socket.once(options.tls ? "secureConnect" : "connect", () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once("error", (err) => {
      clearTimeout(timer);
      reject(unavailable(`cannot connect to ${address}: ${err.message}`));
    });
  });
  const connection = new RpcConnection(socket, {
    logger: options.logger ?? pino({ level: "silent" }),
    peer: address,
    limits: options.limits,
  });
  return { connection, bootstrap: connection.bootstrap() };
}
