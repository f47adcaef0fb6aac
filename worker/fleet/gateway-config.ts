// pcr-gateway's options: where it serves (as a worker does: a unix socket, TCP with mutual TLS)
// and the fleet's NATS (the same --nats-* options as pcr-worker); every option also from its PCR_* variable.
import { hideBin } from "yargs/helpers";
import yargs from "yargs";
import { z } from "zod";
import { checkListeners, checkNatsAuth, configSchema, envName, fromText } from "../config.js";
import { type NatsConnectOptions, natsOptions } from "./connect.js";
import { DEFAULT_FORGET_LOST_AFTER_MS } from "./forget.js";
import { DEFAULT_LOST_AFTER_MS } from "./placement.js";

export interface GatewayConfig {
  socket: string;
  tcp?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsClientCa?: string;
  nats: Omit<NatsConnectOptions, "hostId"> & { replicas: number };
  logLevel: string;
  callTimeoutMs: number;
  lostAfterMs: number;
  /** A host lost this long, with no VM left in pcr_vms, is removed from pcr_hosts; 0: never. */
  forgetLostAfterMs: number;
}

// The same rules as pcr-worker's for what both take (config.ts), plus the gateway's own timeouts.
const schema = configSchema
  .pick({
    socket: true,
    tcp: true,
    tlsCert: true,
    tlsKey: true,
    tlsClientCa: true,
    nats: true,
    natsCreds: true,
    natsUser: true,
    natsPass: true,
    natsToken: true,
    natsCa: true,
    natsCert: true,
    natsKey: true,
    natsReplicas: true,
    logLevel: true,
  })
  .extend({
    callTimeoutMs: z.number().int().min(1_000).max(3_600_000),
    lostAfterMs: z.number().int().min(1_000).max(600_000),
    forgetLostAfterMs: z
      .number()
      .int()
      .min(0)
      .max(365 * 24 * 3600_000),
  });

interface GatewayOption {
  type: "string" | "number";
  default?: string | number;
  describe: string;
}

/** Each option's type, default and help; its flag is the key in kebab-case, its variable PCR_ + the key in SCREAMING_SNAKE (envName). */
const GATEWAY_OPTIONS = {
  socket: { type: "string", default: "/run/procurator/gateway.sock", describe: "Unix socket to serve on" },
  tcp: { type: "string", describe: "Also serve on TCP host:port; beyond loopback only with mutual TLS" },
  tlsCert: { type: "string", describe: "PEM certificate of the TCP listener" },
  tlsKey: { type: "string", describe: "PEM key of the TCP listener" },
  tlsClientCa: { type: "string", describe: "PEM CA that client certificates must chain to" },
  nats: { type: "string", describe: "The fleet's NATS servers, comma separated (required)" },
  natsCreds: { type: "string", describe: "NATS credentials file" },
  natsUser: { type: "string", describe: "NATS user (with --nats-pass)" },
  natsPass: { type: "string", describe: "NATS password (prefer PCR_NATS_PASS to the flag)" },
  natsToken: { type: "string", describe: "NATS token (prefer PCR_NATS_TOKEN to the flag)" },
  natsCa: { type: "string", describe: "PEM CA the NATS servers' certificates chain to" },
  natsCert: { type: "string", describe: "PEM client certificate for NATS (with --nats-key)" },
  natsKey: { type: "string", describe: "PEM client key for NATS" },
  natsReplicas: { type: "number", default: 1, describe: "Replicas of buckets and streams it creates: 1, or 3 on a cluster" },
  logLevel: { type: "string", default: "info", describe: "Log level" },
  callTimeoutMs: { type: "number", default: 300_000, describe: "Longest a call to a host may take" },
  lostAfterMs: { type: "number", default: DEFAULT_LOST_AFTER_MS, describe: "A host silent this long is lost" },
  forgetLostAfterMs: {
    type: "number",
    default: DEFAULT_FORGET_LOST_AFTER_MS,
    describe: "A host lost this long with no VM left in pcr_vms is removed from pcr_hosts (0: never)",
  },
} as const satisfies Record<keyof z.infer<typeof schema>, GatewayOption>;

type GatewayKey = keyof typeof GATEWAY_OPTIONS;
export const gatewayKeys = Object.keys(GATEWAY_OPTIONS) as GatewayKey[];
const kebab = (key: string) => key.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`);

/** Flags win over the environment, which wins over the defaults (as for pcr-worker, without a config file). */
export function loadGatewayConfig(argv: string[] = hideBin(process.argv), env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  const parser = yargs(argv)
    .scriptName("pcr-gateway")
    .usage("$0 --nats <urls> [options]\n\nServes the Procurator Worker RPC in front of a fleet of workers (docs/fleet.md).");
  for (const key of gatewayKeys) {
    const option: GatewayOption = GATEWAY_OPTIONS[key];
    // No yargs default: an absent flag must let the variable through.
    parser.option(kebab(key), {
      type: option.type,
      describe: `${option.describe} [env: ${envName(key)}]`,
      defaultDescription: option.default?.toString(),
    });
  }
  const args = parser
    .strict()
    .fail((message, err) => {
      throw new Error(`invalid arguments: ${err?.message ?? message} (see --help)`);
    })
    .help()
    .version(false)
    .parseSync() as Record<string, unknown>;
  const values: Record<string, unknown> = {};
  for (const key of gatewayKeys) {
    const option: GatewayOption = GATEWAY_OPTIONS[key];
    const fromEnv = env[envName(key)];
    values[key] = args[kebab(key)] ?? (fromEnv ? fromText(option.type, fromEnv) : undefined) ?? option.default;
  }
  const parsed = schema.safeParse(values);
  if (!parsed.success) {
    const problems = parsed.error.issues.map(
      (issue) => `--${String(issue.path[0]).replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}: ${issue.message}`,
    );
    throw new Error(`invalid configuration:\n  ${problems.join("\n  ")}`);
  }
  const c = parsed.data;
  if (!c.nats) throw new Error("invalid configuration:\n  --nats is required: the fleet's NATS servers");
  const problem =
    checkListeners(c) ??
    checkNatsAuth(c) ??
    (c.forgetLostAfterMs !== 0 && c.forgetLostAfterMs <= c.lostAfterMs
      ? `--forget-lost-after-ms (${c.forgetLostAfterMs}) must be 0 (never) or above --lost-after-ms (${c.lostAfterMs}): ` +
        "a host is forgotten only once lost"
      : undefined);
  if (problem) throw new Error(`invalid configuration:\n  ${problem}`);
  return {
    socket: c.socket,
    tcp: c.tcp,
    tlsCert: c.tlsCert,
    tlsKey: c.tlsKey,
    tlsClientCa: c.tlsClientCa,
    nats: { ...natsOptions({ ...c, nats: c.nats }), replicas: c.natsReplicas },
    logLevel: c.logLevel,
    callTimeoutMs: c.callTimeoutMs,
    lostAfterMs: c.lostAfterMs,
    forgetLostAfterMs: c.forgetLostAfterMs,
  };
}
