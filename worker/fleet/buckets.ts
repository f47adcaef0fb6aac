// The fleet's shared state in JetStream (docs/fleet.md): three KV buckets and one stream, opened or
// created by whichever worker or gateway gets there first. Creating is idempotent: the server
// answers an identical create with the existing bucket, and a process that loses a race against a
// different configuration (other replicas) binds to what exists rather than failing.
import { JetStreamApiCodes, JetStreamApiError, type JetStreamManager, jetstreamManager, type StreamConfig } from "@nats-io/jetstream";
import { type KV, type KvOptions, Kvm } from "@nats-io/kv";
import { nanos, type NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "pino";

export const BUCKETS = { hosts: "pcr_hosts", vms: "pcr_vms", intents: "pcr_intents" } as const;
export const EVENTS_STREAM = "PCR_EVENTS";
export const EVENTS_SUBJECTS = "pcr.events.>";

/** The subject a host publishes its lifecycle events on. */
export const eventsSubject = (hostId: string) => `pcr.events.${hostId}`;

const DAY_MS = 24 * 3600_000;
/** An intent outlives any retry of its create; then its key may be used again. */
export const INTENT_TTL_MS = DAY_MS;
export const EVENTS_MAX_AGE_MS = 7 * DAY_MS;
/** Events are small (~200 bytes): 1 GiB holds millions; the oldest go first. */
export const EVENTS_MAX_BYTES = 1024 ** 3;
/** Publishes retried with the same message id within this are stored once. */
export const EVENTS_DUPLICATE_WINDOW_MS = 2 * 60_000;

export interface FleetBuckets {
  hosts: KV;
  vms: KV;
  intents: KV;
  jsm: JetStreamManager;
}

export interface OpenBucketsOptions {
  /** Replicas of what this call creates (1, or 3 on a 3-node cluster); what exists is kept as it is. */
  replicas: number;
  logger: Logger;
}

/** What a worker uses: it never reads or writes intents (docs/fleet.md "Securing NATS"). */
export type MemberBuckets = Omit<FleetBuckets, "intents">;

/** Opens the fleet's buckets and stream, creating what is missing (a gateway). */
export async function openFleetBuckets(nc: NatsConnection, options: OpenBucketsOptions): Promise<FleetBuckets> {
  const [member, intents] = await Promise.all([
    openMemberBuckets(nc, options),
    openBucket(new Kvm(nc), BUCKETS.intents, { replicas: options.replicas, ttl: INTENT_TTL_MS }, options.logger),
  ]);
  return { ...member, intents };
}

/**
 * Opens pcr_hosts, pcr_vms and PCR_EVENTS, creating what is missing (a worker). What exists is
 * only read (STREAM.INFO), never created again: a worker allowed no JetStream create joins a fleet
 * whose gateway made them.
 */
export async function openMemberBuckets(nc: NatsConnection, options: OpenBucketsOptions): Promise<MemberBuckets> {
  const kvm = new Kvm(nc);
  const bucket = (name: string) => openBucket(kvm, name, { replicas: options.replicas }, options.logger);
  const [hosts, vms] = await Promise.all([bucket(BUCKETS.hosts), bucket(BUCKETS.vms)]);
  const jsm = await jetstreamManager(nc);
  await ensureStream(
    jsm,
    {
      name: EVENTS_STREAM,
      subjects: [EVENTS_SUBJECTS],
      num_replicas: options.replicas,
      max_age: nanos(EVENTS_MAX_AGE_MS),
      max_bytes: EVENTS_MAX_BYTES,
      duplicate_window: nanos(EVENTS_DUPLICATE_WINDOW_MS),
    },
    options.logger,
  );
  return { hosts, vms, jsm };
}

async function openBucket(kvm: Kvm, name: string, options: Partial<KvOptions>, logger: Logger): Promise<KV> {
  try {
    return await kvm.create(name, options);
  } catch (err) {
    // Someone created it with another configuration (a race, or an operator's choice): use theirs.
    // open() binds without asking the server: status() shows whether the bucket is there.
    const kv = await kvm.open(name).catch(() => undefined);
    if (
      !kv ||
      !(await kv.status().then(
        () => true,
        () => false,
      ))
    )
      throw err;
    logger.warn({ bucket: name, err: (err as Error).message }, "fleet bucket exists with another configuration; using it as it is");
    return kv;
  }
}

async function ensureStream(jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string }, logger: Logger): Promise<void> {
  // Looked up first, as a KV bucket is (Kvm.create): an existing stream needs no create permission.
  const found = await jsm.streams.info(config.name).then(
    () => true,
    (err: unknown) => {
      if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) return false;
      throw err;
    },
  );
  if (found) return;
  try {
    await jsm.streams.add(config);
  } catch (err) {
    const existing = await jsm.streams.info(config.name).catch(() => undefined);
    if (!existing) throw err;
    logger.warn({ stream: config.name, err: (err as Error).message }, "fleet stream exists with another configuration; using it as it is");
  }
}
