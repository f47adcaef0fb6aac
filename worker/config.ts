// Worker configuration: defaults < optional JSON file < environment (PCR_*) < flags, validated with zod.
import { readFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { z } from "zod";
import { DEFAULT_DENY_CIDRS } from "./net/allowlist.js";

const GIB = 1024 ** 3;

export const configSchema = z.strictObject({
  socket: z.string().min(1).default("/run/procurator/worker.sock"),
  /** Optional TCP listener, "host:port" ("[::1]:7000" for IPv6). Beyond loopback it must use mutual TLS. */
  tcp: z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):\d+$/, "must be host:port").optional(),
  /** PEM files for mutual TLS on the TCP listener: our certificate, its key, and the CA client certificates must chain to. */
  tlsCert: z.string().optional(),
  tlsKey: z.string().optional(),
  tlsClientCa: z.string().optional(),
  stateDir: z.string().min(1).default("/var/lib/procurator"),
  /** Runtime files that must not outlive the host: secrets tmpfs lives under here. */
  runtimeDir: z.string().min(1).default("/run/procurator"),
  vmm: z.enum(["auto", "qemu", "cloud-hypervisor"]).default("auto"),
  accel: z.enum(["auto", "kvm", "tcg"]).default("auto"),
  qemuBinary: z.string().default("qemu-system-x86_64"),
  cloudHypervisorBinary: z.string().default("cloud-hypervisor"),
  virtiofsdBinary: z.string().default("/usr/lib/qemu/virtiofsd"),
  cacheUrl: z.string().optional(),
  trustedKeys: z.array(z.string()).default([]),
  network: z.boolean().default(true),
  bridge: z.string().max(15).default("pcrbr0"),
  subnet: z.string().default("10.213.0.0/16"),
  /** DNS server the guests may use and the worker resolves allowedDomains with. */
  resolver: z.string().optional(),
  uplink: z.string().optional(),
  /** TCP ports on the host that guests may reach (besides DNS to the resolver); none by default. */
  hostAllowedPorts: z.array(z.number().int().min(1).max(65535)).default([]),
  /** Ranges no VM may reach: literal allowedDomains entries touching them are refused, DNS answers in them dropped. The host's own addresses are always added. */
  denyCidrs: z.array(z.string()).default(DEFAULT_DENY_CIDRS),
  maxVms: z.number().int().positive().default(64),
  maxCpuPerVm: z.number().int().positive().default(cpus().length),
  maxTotalCpu: z.number().int().positive().default(cpus().length * 4),
  maxMemoryPerVmBytes: z.number().int().positive().default(Math.max(GIB, totalmem() - 2 * GIB)),
  maxTotalMemoryBytes: z.number().int().positive().default(Math.max(GIB, totalmem() - 2 * GIB)),
  /** Data disks of all VMs not yet deleted, together; default: the state directory's free space at start. */
  maxTotalDiskBytes: z.number().int().positive().optional(),
  maxTtlSeconds: z.number().int().positive().default(7 * 24 * 3600),
  bootTimeoutMs: z.number().int().positive().default(30_000),
  stopGraceMs: z.number().int().nonnegative().default(2_000),
  /** Serial console bytes kept per VM; older bytes are dropped, read offsets stay monotonic. */
  consoleMaxBytes: z.number().int().min(64 * 1024).default(8 * 1024 * 1024),
  counterIntervalMs: z.number().int().positive().default(2_000),
  maxCallsPerConnection: z.number().int().positive().default(256),
  /** RPC connections open at once, all clients together. */
  maxConnections: z.number().int().positive().default(8192),
  /** RPC connections open at once from one uid (unix socket; root exempt) or one address (TCP). */
  maxConnectionsPerPeer: z.number().int().positive().default(1024),
  /** Largest RPC message accepted; the largest legitimate one is a createVm with 4 MiB of secrets. */
  maxMessageBytes: z.number().int().min(64 * 1024).max(1024 * 1024 * 1024).default(8 * 1024 * 1024),
  /** Bytes of incomplete RPC messages held across all connections. */
  maxPendingBytes: z.number().int().min(1024 * 1024).default(64 * 1024 * 1024),
  /** A message whose first bytes arrived must be whole within this; 0 turns the limit off. */
  frameTimeoutMs: z.number().int().nonnegative().default(30_000),
  /** An RPC connection with no call under way for this long is closed; 0 keeps idle connections. */
  idleTimeoutMs: z.number().int().nonnegative().default(10 * 60_000),
  /** Longest any one RPC call may run before it is answered DEADLINE_EXCEEDED; 0 turns deadlines off. */
  callDeadlineMs: z.number().int().nonnegative().default(300_000),
  stopVmsOnExit: z.boolean().default(false),
  /** Loopback HTTP for /healthz, /readyz and /metrics; "off" disables it. */
  httpListen: z.string().default("127.0.0.1:9464"),
  /** Append-only JSON lines of every mutating call; defaults to <stateDir>/audit.log. */
  auditLog: z.string().optional(),
  logLevel: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info"),
});

export type WorkerConfig = z.infer<typeof configSchema>;

/** Environment variable for each key: PCR_ + SCREAMING_SNAKE of the key. */
export function envName(key: string): string {
  return `PCR_${key.replace(/[A-Z]/g, (letter) => `_${letter}`).toUpperCase()}`;
}

const numberKeys = new Set(
  Object.entries(configSchema.shape)
    .filter(([, schema]) => schema.def.type === "default" && (schema as z.ZodDefault<z.ZodTypeAny>).def.innerType.def.type === "number")
    .map(([key]) => key),
);
const booleanKeys = new Set(["network", "stopVmsOnExit"]);

function fromEnv(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(configSchema.shape)) {
    const value = env[envName(key)];
    if (value === undefined || value === "") continue;
    if (key === "trustedKeys" || key === "denyCidrs") out[key] = value.split(/[\s,]+/).filter(Boolean);
    else if (key === "hostAllowedPorts") out[key] = value.split(/[\s,]+/).filter(Boolean).map(Number);
    else if (numberKeys.has(key)) out[key] = Number(value);
    else if (booleanKeys.has(key)) out[key] = /^(1|true|yes|on)$/i.test(value);
    else out[key] = value;
  }
  return out;
}

export interface ParsedArgs {
  config: WorkerConfig;
  check: boolean;
}

/** Parses argv and env into a validated config; throws with every problem listed. */
export function loadConfig(argv: string[] = hideBin(process.argv), env: NodeJS.ProcessEnv = process.env): ParsedArgs {
  const args = yargs(argv)
    .scriptName("pcr-worker")
    .usage("$0 [options]\n\nServes the Procurator Worker RPC and runs one VMM process per VM.")
    .option("config", { type: "string", describe: "JSON file with any of the options below (env: PCR_CONFIG)" })
    .option("check", { type: "boolean", describe: "Print which VMM backends can run here and why, then exit" })
    .option("socket", { type: "string", describe: "Unix socket to serve on" })
    .option("tcp", { type: "string", describe: "Also serve on TCP host:port (mutual TLS required beyond loopback)" })
    .option("tls-cert", { type: "string", describe: "PEM certificate of the TCP listener" })
    .option("tls-key", { type: "string", describe: "PEM key of the TCP listener" })
    .option("tls-client-ca", { type: "string", describe: "PEM CA that client certificates must chain to" })
    .option("state-dir", { type: "string" })
    .option("runtime-dir", { type: "string" })
    .option("vmm", { choices: ["auto", "qemu", "cloud-hypervisor"] })
    .option("accel", { choices: ["auto", "kvm", "tcg"] })
    .option("qemu-binary", { type: "string" })
    .option("cloud-hypervisor-binary", { type: "string" })
    .option("virtiofsd-binary", { type: "string" })
    .option("cache-url", { alias: "cache", type: "string", describe: "Binary cache to pull missing store paths from" })
    .option("trusted-key", { type: "string", array: true, describe: "Public key trusted for the cache (repeatable)" })
    .option("network", { type: "boolean", describe: "Per-VM networking (--no-network to disable)" })
    .option("bridge", { type: "string" })
    .option("subnet", { type: "string" })
    .option("resolver", { type: "string" })
    .option("uplink", { type: "string", describe: "Interface guests' allowed egress is NATed out of" })
    .option("host-allowed-port", { type: "number", array: true, describe: "Host TCP port guests may reach (repeatable)" })
    .option("deny-cidr", { type: "string", array: true, describe: `Range no VM may reach (repeatable; replaces the default ${DEFAULT_DENY_CIDRS.join(" ")}; the host's own addresses are always denied)` })
    .option("max-vms", { type: "number" })
    .option("max-cpu-per-vm", { type: "number" })
    .option("max-total-cpu", { type: "number" })
    .option("max-memory-per-vm-bytes", { type: "number" })
    .option("max-total-memory-bytes", { type: "number" })
    .option("max-total-disk-bytes", { type: "number", describe: "Data disks of all VMs not yet deleted, together (default: free space of the state dir at start)" })
    .option("max-ttl-seconds", { type: "number" })
    .option("boot-timeout-ms", { type: "number" })
    .option("stop-grace-ms", { type: "number" })
    .option("counter-interval-ms", { type: "number" })
    .option("console-max-bytes", { type: "number", describe: "Console bytes kept per VM (oldest dropped)" })
    .option("max-calls-per-connection", { type: "number" })
    .option("max-connections", { type: "number", describe: "RPC connections open at once, all clients together" })
    .option("max-connections-per-peer", { type: "number", describe: "RPC connections from one uid (root exempt) or TCP address" })
    .option("max-message-bytes", { type: "number", describe: "Largest RPC message accepted" })
    .option("max-pending-bytes", { type: "number", describe: "Bytes of incomplete RPC messages held, all connections together" })
    .option("frame-timeout-ms", { type: "number", describe: "Time a started RPC message has to arrive whole (0: none)" })
    .option("idle-timeout-ms", { type: "number", describe: "Idle RPC connections are closed after this (0: never)" })
    .option("call-deadline-ms", { type: "number", describe: "Longest a call may run before DEADLINE_EXCEEDED (0: none)" })
    .option("stop-vms-on-exit", { type: "boolean" })
    .option("http-listen", { type: "string", describe: "host:port for /healthz /readyz /metrics, or off" })
    .option("audit-log", { type: "string" })
    .option("log-level", { type: "string" })
    .strict()
    .help()
    .version(false)
    .parseSync();

  const configFile = args.config ?? env.PCR_CONFIG;
  const fromFile = configFile ? (JSON.parse(readFileSync(configFile, "utf8")) as Record<string, unknown>) : {};
  const fromFlags: Record<string, unknown> = {};
  for (const key of Object.keys(configSchema.shape)) {
    const value =
      key === "trustedKeys"
        ? args["trusted-key"]
        : key === "hostAllowedPorts"
          ? args["host-allowed-port"]
          : key === "denyCidrs"
            ? args["deny-cidr"]
            : (args as Record<string, unknown>)[key];
    if (value !== undefined) fromFlags[key] = value;
  }
  const merged = { ...fromFile, ...fromEnv(env), ...fromFlags };
  const parsed = configSchema.safeParse(merged);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join(".") || "config"}: ${issue.message}`);
    throw new Error(`invalid configuration: ${problems.join("; ")}`);
  }
  const listenerProblem = checkListeners(parsed.data);
  if (listenerProblem) throw new Error(`invalid configuration: ${listenerProblem}`);
  return { config: parsed.data, check: Boolean(args.check) };
}

/** True for 127.0.0.0/8, ::1 and localhost. */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, "");
  return bare === "localhost" || bare === "::1" || /^127\.\d+\.\d+\.\d+$/.test(bare);
}

/** TCP beyond loopback only with mutual TLS; TLS options all together and only with TCP. */
export function checkListeners(config: Pick<WorkerConfig, "tcp" | "tlsCert" | "tlsKey" | "tlsClientCa">): string | undefined {
  const given = [config.tlsCert, config.tlsKey, config.tlsClientCa].filter(Boolean).length;
  if (given > 0 && given < 3) return "mutual TLS needs all of --tls-cert, --tls-key and --tls-client-ca";
  if (given === 3 && !config.tcp) return "--tls-* options given without --tcp";
  if (config.tcp && given === 0) {
    const host = config.tcp.slice(0, config.tcp.lastIndexOf(":"));
    if (!isLoopbackHost(host)) {
      return `refusing to serve unauthenticated TCP on ${config.tcp}: give --tls-cert, --tls-key and --tls-client-ca (mutual TLS), or bind to loopback`;
    }
  }
  return undefined;
}
