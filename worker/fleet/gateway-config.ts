// pcr-gateway's options: where it serves (as a worker does: a unix socket, TCP with mutual TLS)
// and the fleet's NATS (the same --nats-* options as pcr-worker, the same environment for secrets).
import { hideBin } from "yargs/helpers";
import yargs from "yargs";
import { z } from "zod";
import { checkListeners, checkNatsAuth, configSchema } from "../config.js";
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

export function loadGatewayConfig(argv: string[] = hideBin(process.argv), env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  const args = yargs(argv)
    .scriptName("pcr-gateway")
    .usage("$0 --nats <urls> [options]\n\nServes the Procurator Worker RPC in front of a fleet of workers (docs/fleet.md).")
    .option("socket", { type: "string", default: "/run/procurator/gateway.sock", describe: "Unix socket to serve on" })
    .option("tcp", { type: "string", describe: "Also serve on TCP host:port; beyond loopback only with mutual TLS" })
    .option("tls-cert", { type: "string", describe: "PEM certificate of the TCP listener" })
    .option("tls-key", { type: "string", describe: "PEM key of the TCP listener" })
    .option("tls-client-ca", { type: "string", describe: "PEM CA that client certificates must chain to" })
    .option("nats", { type: "string", describe: "The fleet's NATS servers, comma separated (required) [env: PCR_NATS]" })
    .option("nats-creds", { type: "string", describe: "NATS credentials file" })
    .option("nats-user", { type: "string", describe: "NATS user (with --nats-pass)" })
    .option("nats-pass", { type: "string", describe: "NATS password [env: PCR_NATS_PASS]" })
    .option("nats-token", { type: "string", describe: "NATS token [env: PCR_NATS_TOKEN]" })
    .option("nats-ca", { type: "string", describe: "PEM CA the NATS servers' certificates chain to" })
    .option("nats-cert", { type: "string", describe: "PEM client certificate for NATS (with --nats-key)" })
    .option("nats-key", { type: "string", describe: "PEM client key for NATS" })
    .option("nats-replicas", { type: "number", default: 1, describe: "Replicas of buckets and streams it creates: 1, or 3 on a cluster" })
    .option("log-level", { type: "string", default: "info" })
    .option("call-timeout-ms", { type: "number", default: 300_000, describe: "Longest a call to a host may take" })
    .option("lost-after-ms", { type: "number", default: DEFAULT_LOST_AFTER_MS, describe: "A host silent this long is lost" })
    .option("forget-lost-after-ms", {
      type: "number",
      default: DEFAULT_FORGET_LOST_AFTER_MS,
      describe: "A host lost this long with no VM left in pcr_vms is removed from pcr_hosts (0: never)",
    })
    .strict()
    .fail((message, err) => {
      throw new Error(`invalid arguments: ${err?.message ?? message} (see --help)`);
    })
    .help()
    .version(false)
    .parseSync();
  const parsed = schema.safeParse({
    socket: args.socket,
    tcp: args.tcp,
    tlsCert: args.tlsCert,
    tlsKey: args.tlsKey,
    tlsClientCa: args.tlsClientCa,
    nats: args.nats ?? env.PCR_NATS,
    natsCreds: args.natsCreds,
    natsUser: args.natsUser,
    natsPass: args.natsPass ?? env.PCR_NATS_PASS,
    natsToken: args.natsToken ?? env.PCR_NATS_TOKEN,
    natsCa: args.natsCa,
    natsCert: args.natsCert,
    natsKey: args.natsKey,
    natsReplicas: args.natsReplicas,
    logLevel: args.logLevel,
    callTimeoutMs: args.callTimeoutMs,
    lostAfterMs: args.lostAfterMs,
    forgetLostAfterMs: args.forgetLostAfterMs,
  });
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
