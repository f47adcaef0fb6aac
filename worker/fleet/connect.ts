// The worker's one NATS connection to its fleet, from the --nats-* options. It never gives up
// reconnecting: a fleet member outlives any NATS outage and resumes once a server is back.
import { readFileSync } from "node:fs";
import { type ConnectionOptions, connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";

export interface NatsConnectOptions {
  /** Server URLs, several of one cluster for failover. */
  servers: string[];
  hostId: string;
  /** How the servers list this client (default `pcr-worker <hostId>`). */
  name?: string;
  creds?: string;
  user?: string;
  pass?: string;
  token?: string;
  /** TLS files as the NATS client defines them: a CA, and a client certificate and key. */
  ca?: string;
  cert?: string;
  key?: string;
  /** Where its reply subjects live (a worker's own, so NATS can keep them from other hosts); `_INBOX` if absent. */
  inboxPrefix?: string;
}

/** The --nats-* options (pcr-worker's and pcr-gateway's alike) as the connection takes them. */
export function natsOptions(config: {
  nats: string;
  natsCreds?: string;
  natsUser?: string;
  natsPass?: string;
  natsToken?: string;
  natsCa?: string;
  natsCert?: string;
  natsKey?: string;
}): Omit<NatsConnectOptions, "hostId"> {
  return {
    servers: config.nats.split(",").map((url) => url.trim()),
    creds: config.natsCreds,
    user: config.natsUser,
    pass: config.natsPass,
    token: config.natsToken,
    ca: config.natsCa,
    cert: config.natsCert,
    key: config.natsKey,
  };
}

/** Between attempts to reach a server again; the client adds jitter. */
const RECONNECT_WAIT_MS = 1_000;

export function connectFleet(options: NatsConnectOptions): Promise<NatsConnection> {
  const tls = options.ca || options.cert ? { caFile: options.ca, certFile: options.cert, keyFile: options.key } : undefined;
  const connection: ConnectionOptions = {
    servers: options.servers,
    name: options.name ?? `pcr-worker ${options.hostId}`,
    maxReconnectAttempts: -1,
    reconnectTimeWait: RECONNECT_WAIT_MS,
    // Start even if no server answers yet: the member retries as it does after an outage.
    waitOnFirstConnect: true,
    // No stack captured per request for a timeout it may never have: ~0.1 ms of CPU on every call
    // (measured in the gateway's profile); a failed call still names its subject in our own error.
    noAsyncTraces: true,
    user: options.user,
    pass: options.pass,
    token: options.token,
    authenticator: options.creds ? credsAuthenticator(new Uint8Array(readFileSync(options.creds))) : undefined,
    tls,
    inboxPrefix: options.inboxPrefix,
  };
  return connect(connection);
}
