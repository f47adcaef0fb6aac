// Opens an RpcConnection to "unix:/path", "/path" or "tcp://host:port" and bootstraps it.
import net from "node:net";
import pino, { type Logger } from "pino";
import { unavailable } from "../core/errors.js";
import { RemoteCapability, RpcConnection } from "./connection.js";
import type { RpcLimits } from "./limits.js";

export interface ConnectOptions {
  logger?: Logger;
  limits?: Partial<RpcLimits>;
  /** Milliseconds to wait for the socket to connect. */
  connectTimeoutMs?: number;
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
  const socket = net.connect({ ...target, noDelay: true } as net.NetConnectOpts);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(unavailable(`connecting to ${address} timed out`));
    }, options.connectTimeoutMs ?? 10_000);
    socket.once("connect", () => {
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
