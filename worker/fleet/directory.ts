// A gateway's view of the fleet, kept from NATS: every host's last heartbeat (KV pcr_hosts) and
// where every VM is (KV pcr_vms), each loaded once and then followed by a KV watch. It is a cache
// of NATS, never a source of truth: a gateway restarted empty rebuilds it in one read.
import type { KV, KvEntry } from "@nats-io/kv";
import type { Logger } from "pino";
import { invalidArgument } from "../core/errors.js";
import { type HostInfo, parseHostInfo } from "./host-info.js";
import { type VmLocation, parseVmLocation } from "./records.js";
import { DEFAULT_LOST_AFTER_MS } from "./placement.js";

export interface KnownHost {
  info: HostInfo;
  /** When NATS stored its last heartbeat (the server's clock, not the host's). */
  heardAtMs: number;
  revision: number;
}

/** Follows a bucket: its entries parsed, kept by key; entries that do not parse are skipped and logged. */
class BucketCache<T> {
  readonly entries = new Map<string, { value: T; atMs: number; revision: number }>();
  private stopped = false;
  private stopWatch?: () => void;

  constructor(
    private readonly kv: KV,
    private readonly parse: (bytes: Uint8Array, key: string) => T,
    private readonly logger: Logger,
    private readonly onChange?: (key: string) => void,
  ) {}

  async start(): Promise<void> {
    // Watch first (updates only), then read what is there: an update racing the read wins by revision.
    const watch = await this.kv.watch({ include: "updates" });
    this.stopWatch = () => watch.stop();
    void (async () => {
      for await (const entry of watch) this.apply(entry);
    })().catch((err: Error) => {
      if (!this.stopped) this.logger.error({ err: err.message }, "fleet watch ended");
    });
    const keys = await this.kv.keys();
    const names: string[] = [];
    for await (const key of keys) names.push(key);
    await Promise.all(
      names.map(async (key) => {
        const entry = await this.kv.get(key);
        if (entry) this.apply(entry);
      }),
    );
  }

  /** Reads one key now (a VM a watch has not brought yet). */
  async fetch(key: string): Promise<T | undefined> {
    const entry = await this.kv.get(key);
    if (entry) this.apply(entry);
    return this.entries.get(key)?.value;
  }

  remember(key: string, value: T): void {
    if (!this.entries.has(key)) this.entries.set(key, { value, atMs: Date.now(), revision: 0 });
  }

  private apply(entry: KvEntry): void {
    const known = this.entries.get(entry.key);
    if (known && known.revision >= entry.revision) return;
    if (entry.operation !== "PUT") {
      this.entries.delete(entry.key);
    } else {
      try {
        this.entries.set(entry.key, { value: this.parse(entry.value, entry.key), atMs: entry.created.getTime(), revision: entry.revision });
      } catch (err) {
        this.logger.warn({ bucket: entry.bucket, key: entry.key, err: (err as Error).message }, "ignoring an entry that does not parse");
        return;
      }
    }
    this.onChange?.(entry.key);
  }

  stop(): void {
    this.stopped = true;
    this.stopWatch?.();
  }
}

export class FleetDirectory {
  private readonly hostCache: BucketCache<HostInfo>;
  private readonly vmCache: BucketCache<VmLocation>;
  private readonly heartbeatListeners = new Set<(hostId: string) => void>();

  constructor(
    buckets: { hosts: KV; vms: KV },
    logger: Logger,
    readonly lostAfterMs = DEFAULT_LOST_AFTER_MS,
  ) {
    this.hostCache = new BucketCache(buckets.hosts, parseHostEntry, logger, (hostId) => {
      for (const listener of this.heartbeatListeners) listener(hostId);
    });
    this.vmCache = new BucketCache(buckets.vms, parseVmLocation, logger);
  }

  async start(): Promise<void> {
    await Promise.all([this.hostCache.start(), this.vmCache.start()]);
  }

  stop(): void {
    this.hostCache.stop();
    this.vmCache.stop();
  }

  /** Every host that ever heartbeat and was not removed, live or lost. */
  hosts(): KnownHost[] {
    return [...this.hostCache.entries.values()].map(({ value, atMs, revision }) => ({ info: value, heardAtMs: atMs, revision }));
  }

  host(hostId: string): KnownHost | undefined {
    const entry = this.hostCache.entries.get(hostId);
    return entry && { info: entry.value, heardAtMs: entry.atMs, revision: entry.revision };
  }

  isLost(hostId: string, nowMs = Date.now()): boolean {
    const host = this.hostCache.entries.get(hostId);
    return !host || nowMs - host.atMs > this.lostAfterMs;
  }

  /** Hosts as placement sees them: their HostInfo with `seenAtMs` by NATS's clock. */
  placementHosts(): HostInfo[] {
    return this.hosts().map(({ info, heardAtMs }) => ({ ...info, seenAtMs: heardAtMs }));
  }

  onHeartbeat(listener: (hostId: string) => void): void {
    this.heartbeatListeners.add(listener);
  }

  /** Where a VM is: the cache, else NATS itself (a VM made through another gateway a moment ago). */
  async locate(vmId: string): Promise<VmLocation | undefined> {
    return this.vmCache.entries.get(vmId)?.value ?? (await this.vmCache.fetch(vmId));
  }

  /** A VM this gateway placed: routable at once; pcr_vms's own entry (any revision) replaces it. */
  remember(location: VmLocation): void {
    this.vmCache.remember(location.view.id, location);
  }

  forget(vmId: string): void {
    this.vmCache.entries.delete(vmId);
  }

  vmsOn(hostId: string): VmLocation[] {
    return [...this.vmCache.entries.values()].map((entry) => entry.value).filter((location) => location.hostId === hostId);
  }
}

/**
 * A pcr_hosts entry, which must name the host its key does: a gateway keys hosts by the entry's
 * key, where a host may write only its own (docs/fleet.md), but places and calls by the id inside.
 */
function parseHostEntry(bytes: Uint8Array, key: string): HostInfo {
  const info = parseHostInfo(bytes);
  if (info.hostId !== key) throw invalidArgument(`the pcr_hosts entry ${JSON.stringify(key)} names host ${JSON.stringify(info.hostId)}`);
  return info;
}
