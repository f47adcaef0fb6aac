#!/usr/bin/env node
// pcr-gateway: the fleet behind one Worker interface (docs/fleet.md). Wiring only: NATS -> the
// fleet's directory and events -> FleetGateway -> the same RPC server a worker runs.
import { readFileSync } from "node:fs";
import { chmod, mkdir } from "node:fs/promises";
import { dirname } from "node:path";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { pino } from "pino";
import { startRpcServer } from "../rpc/server.js";
import { openFleetBuckets } from "./buckets.js";
import { connectFleet } from "./connect.js";
import { FleetDirectory } from "./directory.js";
import { startForgettingLostHosts } from "./forget.js";
import { streamEvents } from "./events.js";
import { FleetGateway } from "./gateway.js";
import { loadGatewayConfig } from "./gateway-config.js";

async function main(): Promise<void> {
  let config: ReturnType<typeof loadGatewayConfig>;
  try {
    config = loadGatewayConfig();
  } catch (err) {
    console.error(`pcr-gateway: ${(err as Error).message}`);
    process.exit(2);
  }
  const logger = pino({ level: config.logLevel, base: { service: "pcr-gateway" } }, pino.destination(2));
  const nc = await connectFleet({ ...config.nats, hostId: "gateway", name: `pcr-gateway ${process.pid}` });
  const buckets = await openFleetBuckets(nc, { replicas: config.nats.replicas, logger });
  const directory = new FleetDirectory(buckets, logger, config.lostAfterMs);
  await directory.start();
  const events = streamEvents(nc, jetstream(nc), await jetstreamManager(nc), logger);
  const gateway = new FleetGateway({ nc, directory, buckets, events, logger, callTimeoutMs: config.callTimeoutMs });
  const forgetting = startForgettingLostHosts({ hosts: buckets.hosts, directory, forgetAfterMs: config.forgetLostAfterMs, logger });

  await mkdir(dirname(config.socket), { recursive: true, mode: 0o755 });
  const server = await startRpcServer({
    api: gateway,
    socketPath: config.socket,
    tcp: config.tcp,
    tls:
      config.tlsCert && config.tlsKey && config.tlsClientCa
        ? { cert: readFileSync(config.tlsCert), key: readFileSync(config.tlsKey), clientCa: readFileSync(config.tlsClientCa) }
        : undefined,
    logger,
    limits: { callDeadlineMs: config.callTimeoutMs + 5_000 },
  });
  await chmod(config.socket, 0o660);
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    forgetting.stop();
    await server.close();
    gateway.close();
    events.close();
    directory.stop();
    await nc.drain().catch(() => undefined);
    logger.flush();
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));
  // Said only once a signal would stop it cleanly.
  console.log(
    `pcr-gateway: fleet at ${config.nats.servers.join(",")}; ` +
      `listening on unix:${config.socket}${config.tcp ? ` and tcp:${config.tcp}` : ""}`,
  );
  logger.info({ socket: config.socket, tcp: config.tcp, hosts: directory.hosts().length }, "listening");
}

main().catch((err) => {
  console.error(`pcr-gateway: ${(err as Error).message ?? String(err)}`);
  process.exit(1);
});
