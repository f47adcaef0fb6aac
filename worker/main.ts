#!/usr/bin/env node
// pcr-worker: wiring only. config -> adapters -> service -> RPC server.
import { readFileSync } from "node:fs";
import { chmod, mkdir, statfs } from "node:fs/promises";
import { setTimeout as delay } from "node:timers/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { pino, type Logger } from "pino";
import { createCage, parseUidRange } from "./cage/cage.js";
import { loadConfig, parseLabels, type WorkerConfig } from "./config.js";
import type { WorkerApi } from "./core/api.js";
import { WorkerService } from "./core/service.js";
import type { SpecLimits } from "./core/spec.js";
import type { CagePort } from "./ports/index.js";
import { checkPoolsSupported, describePools, parsePools } from "./pool-config.js";
import { FileSnapshots } from "./state/snapshots.js";
import { createGuestAgents } from "./agent/index.js";
import { createCgroupCpuThrottle } from "./faults/cgroup.js";
import { createNetFaults } from "./faults/net-faults.js";
import { connectFleet, natsOptions } from "./fleet/connect.js";
import { workerInboxPrefix } from "./fleet/nats-authorization.js";
import type { Resources } from "./fleet/host-info.js";
import { type FleetMember, type JoinFleetOptions, joinFleet } from "./fleet/member.js";
import { createNetwork } from "./net/network.js";
import { AuditLog } from "./observability/audit.js";
import { startHttp } from "./observability/http.js";
import { instrument } from "./observability/instrument.js";
import { WorkerMetrics } from "./observability/metrics.js";
import { startRpcServer } from "./rpc/server.js";
import { createTmpfsSecrets } from "./secrets/tmpfs.js";
import { createFileRecords } from "./state/vm-records.js";
import { createNixStore } from "./store/nix.js";
import { checkBackends, selectBackend } from "./vmm/registry.js";

async function run(config: WorkerConfig): Promise<void> {
  // Logs are JSON lines on stderr; stdout carries the few lines meant for a person.
  const logger = pino({ level: config.logLevel, base: { service: "pcr-worker" } }, pino.destination(2));
  await mkdir(config.runtimeDir, { recursive: true, mode: 0o755 });

  const backend = await selectBackend(config, logger);
  const pools = parsePools(config.pools, specLimits(config));
  checkPoolsSupported(pools, backend);
  // Every adapter is built by its create<Adapter>(options); those that prepare the host are async.
  const records = await createFileRecords({ stateDir: config.stateDir });
  const secrets = await createTmpfsSecrets({ root: join(config.runtimeDir, "secrets"), logger, sizeBytes: config.secretsTmpfsBytes });
  const store = createNixStore({ cacheUrl: config.cacheUrl, trustedKeys: config.trustedKeys, logger });
  const network = config.network
    ? createNetwork({
        bridge: config.bridge,
        subnet: config.subnet,
        resolver: config.resolver,
        uplink: config.uplink,
        hostAllowedPorts: config.hostAllowedPorts,
        denyCidrs: config.denyCidrs,
        addressCooldownMs: config.addressCooldownMs,
        statePath: join(config.stateDir, "network.json"),
        logger,
      })
    : undefined;

  const maxTotalDiskBytes = config.maxTotalDiskBytes ?? (await freeBytes(config.stateDir));
  let metrics: WorkerMetrics | undefined;
  const service = new WorkerService({
    backend,
    network,
    store,
    secrets,
    records,
    consoles: records,
    logger,
    limits: {
      ...specLimits(config),
      maxVms: config.maxVms,
      maxTotalCpu: config.maxTotalCpu,
      maxTotalMemoryBytes: config.maxTotalMemoryBytes,
      maxTotalDiskBytes,
      maxTtlSeconds: config.maxTtlSeconds,
      maxReadBytes: config.maxConsoleReadBytes,
      consoleMaxBytes: config.consoleMaxBytes,
    },
    timeouts: { bootMs: config.bootTimeoutMs, stopGraceMs: config.stopGraceMs },
    agents: createGuestAgents({ logger }),
    cage: cage(config, logger),
    faults: {
      net: network ? createNetFaults() : undefined,
      cpu: createCgroupCpuThrottle({ mountDir: join(config.runtimeDir, "cgroup-cpu") }),
    },
    strayRoots: [records.vmsDir, join(config.runtimeDir, "secrets")],
    pools: { configs: pools, snapshots: new FileSnapshots(join(config.stateDir, "snapshots")) },
    hostId: config.nats ? config.hostId : undefined,
    observer: {
      storeFetched: ({ bytes, seconds }) => {
        metrics?.nixCopyBytes.inc(bytes);
        metrics?.nixCopySeconds.inc(seconds);
      },
    },
  });
  metrics = new WorkerMetrics(
    () => service.listVms(),
    () => service.poolStats(),
  );
  await service.recover();
  const removedSnapshots = await service.startPools();
  if (removedSnapshots.length) logger.info({ removed: removedSnapshots }, "removed snapshots no pool uses");

  const sampler = setInterval(() => {
    void service.sampleAllCounters().catch((err: unknown) => logger.warn({ err: (err as Error).message }, "sampling counters failed"));
    void service.trimConsoles();
  }, config.counterIntervalMs);
  sampler.unref();

  const audit = new AuditLog(config.auditLog ?? join(config.stateDir, "audit.log"));
  const api = instrument(service, metrics, audit, logger);
  if (config.tcp && !config.tlsCert) {
    logger.warn({ tcp: config.tcp }, "TCP without TLS: any local user can call the worker, bypassing the unix socket's permissions");
  }
  const server = await startRpcServer({
    api,
    socketPath: config.socket,
    tcp: config.tcp,
    tls:
      config.tlsCert && config.tlsKey && config.tlsClientCa
        ? { cert: readFileSync(config.tlsCert), key: readFileSync(config.tlsKey), clientCa: readFileSync(config.tlsClientCa) }
        : undefined,
    logger,
    limits: {
      maxOutstandingCalls: config.maxCallsPerConnection,
      callDeadlineMs: config.callDeadlineMs,
      maxMessageBytes: config.maxMessageBytes,
      frameTimeoutMs: config.frameTimeoutMs,
    },
    admission: {
      maxConnections: config.maxConnections,
      maxConnectionsPerPeer: config.maxConnectionsPerPeer,
      maxPendingBytes: config.maxPendingBytes,
      idleTimeoutMs: config.idleTimeoutMs,
    },
  });
  await chmod(config.socket, 0o660);
  let ready = true;
  const http = config.httpListen === "off" ? undefined : await startHttp(config.httpListen, metrics, () => ready);

  // Signal handlers before anything says the worker is up: a SIGTERM from then on, even during
  // the fleet join, is a clean shutdown.
  let joining: ReturnType<typeof startFleet> | undefined;
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    ready = false;
    logger.info({ signal, stopVms: config.stopVmsOnExit }, "shutting down");
    clearInterval(sampler);
    // A signal during the join waits for it (its first heartbeat is in pcr_hosts and must go too),
    // but not forever: with NATS unreachable the join never ends.
    const fleet = await Promise.race([joining?.catch(() => undefined), delay(JOIN_WAIT_ON_SHUTDOWN_MS).then(() => undefined)]);
    await fleet?.member.leave(); // gateways see no responder at once, and the heartbeat goes stale
    await server.close(); // stops accepting, lets calls in flight finish
    await service.closePools();
    if (config.stopVmsOnExit) await service.stopAll();
    // No call can make a VM now: a host left with none leaves pcr_hosts; one with VMs stays (lost).
    await fleet?.member.deregister();
    await fleet?.nc.close();
    if (!config.stopVmsOnExit) service.detachAll();
    http?.close();
    await network?.close();
    await audit.close();
    logger.flush();
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));

  console.log(`pcr-worker: backend ${backend.name}; listening on unix:${config.socket}${config.tcp ? ` and tcp:${config.tcp}` : ""}`);
  if (http) console.log(`pcr-worker: health and metrics on http://${config.httpListen}/metrics`);
  logger.info({ socket: config.socket, tcp: config.tcp, backend: backend.name, http: config.httpListen }, "listening");

  // Joined after the sockets listen: the worker serves them whatever NATS does. A failed join is fatal.
  const capacity = { vms: config.maxVms, cpu: config.maxTotalCpu, memoryBytes: config.maxTotalMemoryBytes, diskBytes: maxTotalDiskBytes };
  joining = config.nats ? startFleet(config, api, () => service.specs(), capacity, backend.name, logger) : undefined;
  await joining;
}

/** How long a shutdown waits for a fleet join still under way. */
const JOIN_WAIT_ON_SHUTDOWN_MS = 5_000;

/** Connects to NATS and joins the fleet as --host-id. */
async function startFleet(
  config: WorkerConfig,
  api: WorkerApi,
  specs: JoinFleetOptions["specs"],
  capacity: Resources,
  backend: string,
  logger: Logger,
): Promise<{ member: FleetMember; nc: Awaited<ReturnType<typeof connectFleet>> }> {
  const nats = natsOptions({ ...config, nats: config.nats! });
  const nc = await connectFleet({ ...nats, hostId: config.hostId, inboxPrefix: workerInboxPrefix(config.hostId) });
  const member = await joinFleet({
    nc,
    hostId: config.hostId,
    labels: parseLabels(config.labels),
    api,
    capacity,
    backend,
    version: workerVersion(),
    heartbeatMs: config.heartbeatMs,
    replicas: config.natsReplicas,
    logger,
    specs,
  });
  // URLs may hold user:password@: never printed.
  const shown = nats.servers.map((url) => url.replace(/\/\/[^@/]*@/, "//")).join(",");
  console.log(`pcr-worker: joined fleet at ${shown} as ${config.hostId}`);
  return { member, nc };
}

/** The package's version, as the fleet registry shows it. */
function workerVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), "..", "..", "package.json"), "utf8"));
    return /^[A-Za-z0-9._+-]{1,64}$/.test(pkg.version) ? pkg.version : "unknown";
  } catch {
    return "unknown";
  }
}

/** The VMMs' cage, unless --no-cage (then every create logs that its VMM runs uncaged). */
function cage(config: WorkerConfig, logger: Logger): CagePort | undefined {
  if (!config.cage) {
    logger.warn("--no-cage: every VMM runs as root, sees the host's files, has no seccomp filter and no limits");
    return undefined;
  }
  return createCage({
    uidRange: parseUidRange(config.vmmUidRange),
    memoryOverheadBytes: config.vmmMemoryOverheadBytes,
    pidsMax: config.vmmPidsMax,
    nofile: config.vmmNofile,
    runtimeDir: config.runtimeDir,
    logger,
  });
}

function specLimits(config: WorkerConfig): SpecLimits {
  return {
    maxCpu: config.maxCpuPerVm,
    minMemoryBytes: config.minMemoryPerVmBytes,
    maxMemoryBytes: config.maxMemoryPerVmBytes,
    maxAllowedDomains: config.maxAllowedDomains,
  };
}

/** Bytes an unprivileged writer could still put on the filesystem holding `dir`. */
async function freeBytes(dir: string): Promise<number> {
  const stats = await statfs(dir);
  return stats.bavail * stats.bsize;
}

async function main(): Promise<void> {
  let parsed: ReturnType<typeof loadConfig>;
  try {
    parsed = loadConfig();
  } catch (err) {
    console.error(`pcr-worker: ${(err as Error).message}`);
    process.exit(2);
  }
  if (parsed.check) {
    const { text, ok } = await checkBackends(parsed.config);
    console.log(text);
    try {
      const pools = parsePools(parsed.config.pools, specLimits(parsed.config));
      console.log(await describePools(pools, new FileSnapshots(join(parsed.config.stateDir, "snapshots"))));
      const caged = cage(parsed.config, pino({ level: "silent" }));
      console.log(`cage: ${caged ? await caged.describe() : "off (--no-cage): VMMs run as root, uncaged"}`);
    } catch (err) {
      console.log(`pools: ${(err as Error).message}`);
      process.exit(1);
    }
    process.exit(ok ? 0 : 1);
  }
  await run(parsed.config);
}

main().catch((err) => {
  console.error(`pcr-worker: ${(err as Error).message ?? String(err)}`);
  process.exit(1);
});
