// Worker configuration, defined once: every key of `configSchema` carries its validation, its
// default and its help text; the flag (--kebab-case), the environment variable
// (PCR_ + SCREAMING_SNAKE), the JSON file key (camelCase) and --help are all derived from it.
// Precedence: flags > environment > file (--config / PCR_CONFIG) > defaults.
import { readFileSync } from "node:fs";
import { cpus, hostname, totalmem } from "node:os";
import yargs, { type Options as YargsOption } from "yargs";
import { hideBin } from "yargs/helpers";
import { z } from "zod";
import { HOST_ID, LABEL_KEY, LABEL_VALUE } from "./fleet/host-info.js";
import { DEFAULT_DENY_CIDRS } from "./net/allowlist.js";
import { parseCidr, parseIpv4 } from "./net/ipam.js";
import { BACKEND_NAMES, BINARY_SETTINGS, type BinaryKey, EXPLICIT_BACKEND_NAMES } from "./vmm/registry.js";

const MIB = 1024 ** 2;
const GIB = 1024 ** 3;

/** How the text of a flag or environment variable becomes a value; lists are repeatable flags. */
export type ValueKind = "string" | "number" | "boolean" | "string[]" | "number[]";

/** What argv, the environment and --help need to know about a key. */
export interface OptionMeta {
  kind: ValueKind;
  help: string;
  /** The flag's name when it is not the key in kebab-case (repeatable flags are singular). */
  flag?: string;
  alias?: string;
  /** Shown in --help as the default when the schema has none (it is computed at start) or its value alone would mislead. */
  defaultText?: string;
}

/** Each key's schema is registered here with its meta, so reading flags never looks inside zod. */
const optionMeta = z.registry<OptionMeta>();
type Extra = Omit<OptionMeta, "kind" | "help">;

/** Registers a key's meta beside its schema and hands the schema back, unchanged. */
function described<S extends z.ZodType>(schema: S, meta: OptionMeta): S {
  optionMeta.add(schema, meta);
  return schema;
}

// One helper per kind: the type parameter makes sure the schema really produces that kind.
const text = <S extends z.ZodType<string | undefined>>(schema: S, help: string, extra?: Extra) =>
  described(schema, { kind: "string", help, ...extra });
const num = <S extends z.ZodType<number | undefined>>(schema: S, help: string, extra?: Extra) =>
  described(schema, { kind: "number", help, ...extra });
const bool = <S extends z.ZodType<boolean | undefined>>(schema: S, help: string, extra?: Extra) =>
  described(schema, { kind: "boolean", help, ...extra });
const texts = <S extends z.ZodType<string[] | undefined>>(schema: S, help: string, extra?: Extra) =>
  described(schema, { kind: "string[]", help, ...extra });
const nums = <S extends z.ZodType<number[] | undefined>>(schema: S, help: string, extra?: Extra) =>
  described(schema, { kind: "number[]", help, ...extra });
/** A closed set of words; zod checks it (not yargs), so a wrong one is reported with every other problem. */
const oneOf = <const T extends readonly [string, ...string[]]>(values: T, fallback: T[number], help: string) =>
  described(z.enum(values).default(fallback), { kind: "string", help: `${help} (${values.join(", ")})` });

/** `<spec.json>:<hot>[+disk]`; the path may itself hold colons (the last one separates). */
export const POOL_ENTRY = /^(.+):(\d{1,3})(\+disk)?$/;
const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+):\d+$/;
const isIpv4Cidr = (text: string) => parseCidr(text.includes("/") ? text : `${text}/32`) !== undefined;
/** The bridge takes the first address and guests need at least one more. */
const isVmSubnet = (text: string) => (parseCidr(text)?.prefixLength ?? 99) <= 30;
const positiveInt = () => z.number().int().positive();
/** The default host id: the host name's first label, made a valid id. */
const defaultHostId = () =>
  hostname()
    .split(".")[0]!
    .replace(/[^A-Za-z0-9_-]/g, "-")
    .slice(0, 64) || "worker";
const NATS_URL = /^(nats|tls|ws|wss):\/\/[^\s,]+$|^[^\s,/]+:\d+$/;
const isNatsUrls = (text: string) => text.split(",").every((url) => NATS_URL.test(url.trim()));
/** `key=value`, as host-info.ts validates labels (the value may be empty, the `=` may not be missing). */
const isLabel = (text: string) => {
  const at = text.indexOf("=");
  return at > 0 && LABEL_KEY.test(text.slice(0, at)) && LABEL_VALUE.test(text.slice(at + 1));
};

/** One key per binary a VMM backend runs (qemuBinary, cloudHypervisorBinary, virtiofsdBinary), from the registry. */
const binaryKeys = Object.fromEntries(
  BINARY_SETTINGS.map((setting) => [setting.configKey, text(z.string().min(1).default(setting.default), setting.help)]),
) as { [Key in BinaryKey]: z.ZodDefault<z.ZodString> };

export const configSchema = z.strictObject({
  socket: text(z.string().min(1).default("/run/procurator/worker.sock"), "Unix socket to serve on"),
  tcp: text(
    z.string().regex(HOST_PORT, "must be host:port").optional(),
    'Also serve on TCP host:port ("[::1]:7000" for IPv6); beyond loopback only with mutual TLS',
    { defaultText: "off" },
  ),
  tlsCert: text(z.string().optional(), "PEM certificate of the TCP listener"),
  tlsKey: text(z.string().optional(), "PEM key of the TCP listener"),
  tlsClientCa: text(z.string().optional(), "PEM CA that client certificates must chain to"),
  stateDir: text(z.string().min(1).default("/var/lib/procurator"), "Per-VM records, console files, leases, audit log"),
  runtimeDir: text(z.string().min(1).default("/run/procurator"), "Runtime files that must not outlive the host (the secrets tmpfs)"),
  vmm: oneOf(["auto", ...BACKEND_NAMES, ...EXPLICIT_BACKEND_NAMES], "auto", "VMM backend; fake: in memory, no VM is real (tests, benches)"),
  accel: oneOf(["auto", "kvm", "tcg"], "auto", "QEMU acceleration; auto uses KVM only when a probe boot runs"),
  ...binaryKeys,
  cacheUrl: text(z.string().optional(), "Binary cache to pull missing store paths from", { alias: "cache" }),
  trustedKeys: texts(z.array(z.string()).default([]), "Public key trusted for the cache (repeatable; env: space or comma separated)", {
    flag: "trusted-key",
  }),
  pools: texts(
    z.array(z.string().regex(POOL_ENTRY, "must be <spec.json>:<hot VMs>, optionally +disk (e.g. guest.json:2+disk)")).max(16).default([]),
    "A warm pool: <spec.json>:<N>[+disk] keeps N VMs of that machine booted and paused, +disk also saves it to disk (repeatable)",
    { flag: "pool" },
  ),
  network: bool(z.boolean().default(true), "Per-VM networking (--no-network to disable)"),
  cage: bool(
    z.boolean().default(true),
    "Each VMM in its own cage: a uid of its own, namespaces, a minimal root, seccomp, a cgroup (--no-cage: for debugging only)",
  ),
  vmmUidRange: text(
    z
      .string()
      .regex(/^\d+-\d+$/, "must be FIRST-LAST")
      .default("40000-49999"),
    "uids (and gids) given to caged VMMs, one per VM",
  ),
  vmmMemoryOverheadBytes: num(positiveInt().default(768 * MIB), "A caged VMM's memory limit is the guest's RAM plus this"),
  vmmPidsMax: num(positiveInt().default(256), "Processes and threads one caged VMM may have"),
  vmmNofile: num(positiveInt().default(4096), "Open files one caged VMM may have (RLIMIT_NOFILE)"),
  bridge: text(
    z
      .string()
      .max(15)
      .regex(/^[A-Za-z0-9_.-]+$/, "must be an interface name (letters, digits, _ . -)")
      .default("pcrbr0"),
    "The worker's bridge",
  ),
  subnet: text(
    z.string().refine(isVmSubnet, "must be an IPv4 CIDR of /30 or larger, e.g. 10.213.0.0/16").default("10.213.0.0/16"),
    "The VMs' subnet; the bridge takes its first address",
  ),
  resolver: text(
    z
      .string()
      .refine((text) => parseIpv4(text) !== undefined, "must be an IPv4 address")
      .optional(),
    "Upstream DNS server for allowedDomains names (guests reach it only through the worker's DNS proxy)",
  ),
  uplink: text(z.string().optional(), "Interface guests' allowed egress is NATed out of"),
  hostAllowedPorts: nums(
    z.array(z.number().int().min(1).max(65535)).default([]),
    "Host TCP port guests may reach on the gateway (repeatable)",
    {
      flag: "host-allowed-port",
    },
  ),
  denyCidrs: texts(
    z.array(z.string().refine(isIpv4Cidr, "must be an IPv4 address or CIDR")).default(DEFAULT_DENY_CIDRS),
    "Range no VM may reach (repeatable; replaces the default; the host's own addresses are always denied)",
    { flag: "deny-cidr" },
  ),
  addressCooldownMs: num(
    z.number().int().nonnegative().default(30_000),
    "How long a released guest address stays unused, so late packets of its last VM reach nobody",
  ),
  secretsTmpfsBytes: num(
    z
      .number()
      .int()
      .min(MIB)
      .default(64 * MIB),
    "Size of the secrets tmpfs: all VMs' secrets together",
  ),
  maxVms: num(positiveInt().default(64), "VMs at once; beyond, RESOURCE_EXHAUSTED"),
  maxCpuPerVm: num(positiveInt().default(cpus().length), "vCPUs one VM may ask for (default: cores)"),
  maxTotalCpu: num(positiveInt().default(cpus().length * 4), "vCPUs of all VMs together (default: 4 x cores)"),
  minMemoryPerVmBytes: num(positiveInt().default(64 * MIB), "Least memory one VM may ask for"),
  maxMemoryPerVmBytes: num(
    positiveInt().default(Math.max(GIB, totalmem() - 2 * GIB)),
    "Most memory one VM may ask for (default: RAM - 2 GiB)",
  ),
  maxTotalMemoryBytes: num(positiveInt().default(Math.max(GIB, totalmem() - 2 * GIB)), "Memory of all VMs together (default: RAM - 2 GiB)"),
  maxTotalDiskBytes: num(positiveInt().optional(), "Data disks of all VMs not yet deleted, together", {
    defaultText: "free space of the state dir at start",
  }),
  maxAllowedDomains: num(positiveInt().default(256), "Entries in one VM's allowedDomains"),
  maxTtlSeconds: num(positiveInt().default(7 * 24 * 3600), "Upper bound of a VM's ttlSeconds"),
  bootTimeoutMs: num(positiveInt().default(30_000), "VMM spawn to guest running; past it the VM fails"),
  stopGraceMs: num(z.number().int().nonnegative().default(2_000), "How long deleteVm lets the guest power off before killing the VMM"),
  consoleMaxBytes: num(
    z
      .number()
      .int()
      .min(64 * 1024)
      .default(8 * MIB),
    "Console bytes kept per VM (oldest dropped, read offsets stay monotonic)",
  ),
  maxConsoleReadBytes: num(positiveInt().default(MIB), "Most console bytes one read call returns"),
  counterIntervalMs: num(positiveInt().default(2_000), "How often I/O counters are sampled"),
  maxCallsPerConnection: num(positiveInt().default(256), "Concurrent calls per RPC connection"),
  maxConnections: num(positiveInt().default(8192), "RPC connections open at once, all clients together"),
  maxConnectionsPerPeer: num(positiveInt().default(1024), "RPC connections from one uid (unix socket; root exempt) or one TCP address"),
  /** The largest legitimate message is a createVm with 4 MiB of secrets. */
  maxMessageBytes: num(
    z
      .number()
      .int()
      .min(64 * 1024)
      .max(GIB)
      .default(8 * MIB),
    "Largest RPC message accepted",
  ),
  maxPendingBytes: num(
    z
      .number()
      .int()
      .min(MIB)
      .default(64 * MIB),
    "Bytes of incomplete RPC messages held, all connections together",
  ),
  frameTimeoutMs: num(z.number().int().nonnegative().default(30_000), "Time a started RPC message has to arrive whole (0: none)"),
  idleTimeoutMs: num(
    z
      .number()
      .int()
      .nonnegative()
      .default(10 * 60_000),
    "Idle RPC connections are closed after this (0: never)",
  ),
  callDeadlineMs: num(z.number().int().nonnegative().default(300_000), "Longest a call may run before DEADLINE_EXCEEDED (0: none)"),
  stopVmsOnExit: bool(z.boolean().default(false), "On SIGTERM stop the VMs instead of leaving them for the next worker"),
  httpListen: text(
    z
      .string()
      .refine((text) => text === "off" || HOST_PORT.test(text), 'must be host:port or "off"')
      .default("127.0.0.1:9464"),
    "host:port for /healthz /readyz /metrics, or off",
  ),
  auditLog: text(z.string().optional(), "Append-only JSON lines of every mutating call", { defaultText: "<state-dir>/audit.log" }),
  // Fleet membership (docs/fleet.md "Joining"): off unless --nats is given.
  nats: text(
    z.string().refine(isNatsUrls, "must be NATS URLs separated by commas, e.g. nats://a:4222,nats://b:4222").optional(),
    "Join a fleet: the NATS servers (comma separated)",
    { defaultText: "off" },
  ),
  hostId: text(
    z.string().regex(HOST_ID, "must be 1-64 of A-Z a-z 0-9 _ - (it is a NATS subject token)").default(defaultHostId()),
    "This host's id in the fleet",
    { defaultText: "the host name's first label" },
  ),
  labels: texts(
    z
      .array(z.string().refine(isLabel, "must be key=value (key: a name of A-Z a-z 0-9 . _ / -; value: A-Z a-z 0-9 . _ : / -)"))
      .max(32)
      .default([]),
    "A label of this host for placement constraints, key=value (repeatable)",
    { flag: "label" },
  ),
  natsCreds: text(z.string().min(1).optional(), "NATS credentials file (JWT and nkey seed)"),
  natsUser: text(z.string().min(1).optional(), "NATS user (with --nats-pass)"),
  natsPass: text(z.string().min(1).optional(), "NATS password (prefer PCR_NATS_PASS or the config file to a flag)"),
  natsToken: text(z.string().min(1).optional(), "NATS token (prefer PCR_NATS_TOKEN or the config file to a flag)"),
  natsCa: text(z.string().min(1).optional(), "PEM CA that the NATS servers' certificates must chain to"),
  natsCert: text(z.string().min(1).optional(), "PEM client certificate for NATS (with --nats-key)"),
  natsKey: text(z.string().min(1).optional(), "PEM client key for NATS"),
  natsReplicas: num(
    z.union([z.literal(1), z.literal(3)], { error: "must be 1 or 3" }).default(1),
    "Replicas of the fleet's KV buckets and stream when this worker creates them",
  ),
  heartbeatMs: num(positiveInt().min(100).max(60_000).default(2_000), "How often the host heartbeats into the fleet registry"),
  logLevel: oneOf(["trace", "debug", "info", "warn", "error", "fatal", "silent"], "info", "Log level"),
});

export type WorkerConfig = z.infer<typeof configSchema>;
export type ConfigKey = keyof WorkerConfig;
export const configKeys = Object.keys(configSchema.shape) as ConfigKey[];

export function metaOf(key: ConfigKey): OptionMeta {
  const meta = optionMeta.get(configSchema.shape[key]);
  // Only reachable when someone adds a key without one of the helpers above.
  if (!meta) throw new Error(`config key ${key} has no flag description (wrap its schema in text(), num(), ...)`);
  return meta;
}

/** Environment variable for each key: PCR_ + SCREAMING_SNAKE of the key. */
export function envName(key: string): string {
  return `PCR_${key.replace(/[A-Z]/g, (letter) => `_${letter}`).toUpperCase()}`;
}

/** Flag for each key, without the dashes: the key in kebab-case unless its meta names another. */
export function flagName(key: ConfigKey): string {
  return metaOf(key).flag ?? key.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`);
}

/** Checks that read more than one key; each runs once the keys it reads are valid on their own. */
const crossChecks: { keys: ConfigKey[]; check: (config: WorkerConfig) => string | undefined }[] = [
  { keys: ["tcp", "tlsCert", "tlsKey", "tlsClientCa"], check: checkListeners },
  { keys: ["natsUser", "natsPass", "natsCert", "natsKey"], check: checkNatsAuth },
  {
    keys: ["minMemoryPerVmBytes", "maxMemoryPerVmBytes"],
    check: ({ minMemoryPerVmBytes: min, maxMemoryPerVmBytes: max }) =>
      min > max ? `--min-memory-per-vm-bytes ${min} is above --max-memory-per-vm-bytes ${max}: no VM could be created` : undefined,
  },
];

/** Text from the environment as the kind of value its key holds; text that does not convert is left for the schema to reject. */
export function fromText(kind: ValueKind, raw: string): unknown {
  const toNumber = (word: string) => (word.trim() !== "" && Number.isFinite(Number(word)) ? Number(word) : word);
  const words = () => raw.split(/[\s,]+/).filter(Boolean);
  switch (kind) {
    case "string":
      return raw;
    case "number":
      return toNumber(raw);
    case "boolean":
      return /^(1|true|yes|on)$/i.test(raw) ? true : /^(0|false|no|off)$/i.test(raw) ? false : raw;
    case "string[]":
      return words();
    case "number[]":
      return words().map(toNumber);
  }
}

/** A layer of configuration and how to name where one of its values came from. */
interface Layer {
  values: Record<string, unknown>;
  origin: (key: string) => string;
}

function envLayer(env: NodeJS.ProcessEnv): Layer {
  const values: Record<string, unknown> = {};
  for (const key of configKeys) {
    const raw = env[envName(key)];
    if (raw !== undefined && raw !== "") values[key] = fromText(metaOf(key).kind, raw);
  }
  return { values, origin: envName };
}

function fileLayer(path: string | undefined, problems: string[]): Layer {
  const origin = (key: string) => `${key} in ${path}`;
  if (!path) return { values: {}, origin };
  let values: unknown;
  try {
    values = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    problems.push(`config file ${path}: ${(err as Error).message}`);
    return { values: {}, origin };
  }
  if (typeof values !== "object" || values === null || Array.isArray(values)) {
    problems.push(`config file ${path}: must be a JSON object of camelCase keys`);
    return { values: {}, origin };
  }
  for (const key of Object.keys(values)) {
    if (!(key in configSchema.shape)) problems.push(`config file ${path}: unknown key "${key}"`);
  }
  return { values: values as Record<string, unknown>, origin };
}

function flagLayer(args: Record<string, unknown>): Layer {
  const values: Record<string, unknown> = {};
  for (const key of configKeys) {
    const value = args[flagName(key)];
    if (value !== undefined) values[key] = value;
  }
  return { values, origin: (key) => `--${flagName(key as ConfigKey)}` };
}

const shown = (value: unknown) => (typeof value === "number" ? String(value) : JSON.stringify(value));

/**
 * Merges the layers (later ones win) and validates every key, then the checks across keys.
 * Returns the config, or every problem, each naming the flag, variable or file entry it came from.
 */
export function resolveConfig(layers: Layer[], problems: string[] = []): { config: WorkerConfig } | { problems: string[] } {
  const merged: Record<string, unknown> = {};
  const originOf: Record<string, string> = {};
  for (const layer of layers) {
    for (const [key, value] of Object.entries(layer.values)) {
      merged[key] = value;
      originOf[key] = layer.origin(key);
    }
  }
  // Key by key rather than the whole object at once, so the checks across keys can run on the
  // keys that are valid even while others are not: one start names every problem.
  const parsed: Record<string, unknown> = {};
  for (const key of configKeys) {
    const result = configSchema.shape[key].safeParse(merged[key]);
    if (result.success) {
      parsed[key] = result.data;
      continue;
    }
    for (const issue of result.error.issues) {
      const item = issue.path.length > 0 ? ` item ${issue.path.join(".")}` : "";
      const value = issue.path.reduce<unknown>((at, step) => (at as Record<PropertyKey, unknown>)?.[step], merged[key]);
      problems.push(`${originOf[key] ?? key}${item}: ${issue.message} (got ${shown(value)})`);
    }
  }
  // Every key went through its own schema and the object schema adds no rule of its own.
  const config = parsed as WorkerConfig;
  for (const { keys, check } of crossChecks) {
    if (!keys.every((key) => key in parsed)) continue;
    const problem = check(config);
    if (problem) problems.push(problem);
  }
  return problems.length > 0 ? { problems } : { config };
}

export interface ParsedArgs {
  config: WorkerConfig;
  check: boolean;
}

/** yargs' option for a key: the flag's type and help; no default, so an absent flag lets env and file through. */
function yargsOption(key: ConfigKey): YargsOption {
  const meta = metaOf(key);
  const fallback = configSchema.shape[key].safeParse(undefined);
  const defaultText =
    meta.defaultText ??
    (fallback.success && fallback.data !== undefined
      ? Array.isArray(fallback.data)
        ? fallback.data.join(" ") || "none"
        : String(fallback.data)
      : undefined);
  return {
    type: meta.kind === "string[]" ? "string" : meta.kind === "number[]" ? "number" : meta.kind,
    array: meta.kind.endsWith("[]") || undefined,
    alias: meta.alias,
    describe: `${meta.help} [env: ${envName(key)}]`,
    defaultDescription: defaultText,
  };
}

/** The argv parser, with one option per config key plus --config and --check, which are not config. */
export function argvParser(argv: string[]) {
  const parser = yargs(argv)
    .scriptName("pcr-worker")
    .usage("$0 [options]\n\nServes the Procurator Worker RPC and runs one VMM process per VM.")
    .option("config", { type: "string", describe: "JSON file with any of the options below, keys in camelCase [env: PCR_CONFIG]" })
    .option("check", { type: "boolean", describe: "Print which VMM backends can run here and why, then exit" });
  for (const key of configKeys) parser.option(flagName(key), yargsOption(key));
  return parser
    .strict()
    .fail((message, err) => {
      throw new Error(`invalid arguments: ${err?.message ?? message} (see --help)`);
    })
    .help()
    .version(false)
    .wrap(Math.min(120, process.stdout.columns || 120));
}

/** Parses argv and env (and the JSON file they name) into a validated config; throws with every problem listed. */
export function loadConfig(argv: string[] = hideBin(process.argv), env: NodeJS.ProcessEnv = process.env): ParsedArgs {
  const args = argvParser(argv).parseSync() as Record<string, unknown>;
  const problems: string[] = [];
  const configFile = (args.config as string | undefined) ?? (env.PCR_CONFIG || undefined);
  const result = resolveConfig([fileLayer(configFile, problems), envLayer(env), flagLayer(args)], problems);
  if ("problems" in result) throw new Error(`invalid configuration:\n  ${result.problems.join("\n  ")}`);
  return { config: result.config, check: Boolean(args.check) };
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
      return (
        `refusing to serve unauthenticated TCP on ${config.tcp}: ` +
        "give --tls-cert, --tls-key and --tls-client-ca (mutual TLS), or bind to loopback"
      );
    }
  }
  return undefined;
}

/** NATS credentials that only work in pairs. */
export function checkNatsAuth(config: Pick<WorkerConfig, "natsUser" | "natsPass" | "natsCert" | "natsKey">): string | undefined {
  if (Boolean(config.natsUser) !== Boolean(config.natsPass)) return "--nats-user and --nats-pass go together";
  if (Boolean(config.natsCert) !== Boolean(config.natsKey)) return "--nats-cert and --nats-key go together";
  return undefined;
}

/** The labels of --label key=value, as an object. */
export function parseLabels(entries: readonly string[]): Record<string, string> {
  return Object.fromEntries(entries.map((entry) => [entry.slice(0, entry.indexOf("=")), entry.slice(entry.indexOf("=") + 1)]));
}
