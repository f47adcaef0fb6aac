// A worker as a member of a fleet (docs/fleet.md "Joining"): it serves its Worker interface on its
// host subject, heartbeats its HostInfo into pcr_hosts, keeps pcr_vms true for its VMs, and
// publishes its lifecycle events to PCR_EVENTS. Every loop here outlives NATS outages: a failed
// heartbeat or publish is retried, never fatal; the worker's own sockets never depend on NATS.
import { type JetStreamClient, jetstream } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "pino";
import type { VmView, WorkerApi } from "../core/api.js";
import type { ValidSpec } from "../core/spec.js";
import { isLive } from "../core/lifecycle.js";
import { eventsSubject, openMemberBuckets } from "./buckets.js";
import { encodeHostInfo, type HostInfo, type Resources } from "./host-info.js";
import { hostCallSubject, type NatsWorkerServer, serveWorkerOverNats } from "./nats-rpc.js";
import { encodeFleetEvent, encodeVmLocation, fleetEventOf, parseVmLocation, vmLocationOf } from "./records.js";
import { summarizeStore } from "./store-summary.js";

export interface JoinFleetOptions {
  nc: NatsConnection;
  hostId: string;
  labels: Record<string, string>;
  /** Served on the host's subject, and read for heartbeats and events. */
  api: WorkerApi;
  /** What the host offers (the worker's limits). */
  capacity: Resources;
  backend: string;
  version: string;
  heartbeatMs: number;
  /** Replicas of the buckets and stream if this member creates them. */
  replicas: number;
  logger: Logger;
  /**
   * The specs of the host's VMs not yet deleted: the store paths they boot from and their data
   * disks (VmView carries neither), read once a heartbeat.
   */
  specs: () => readonly Pick<ValidSpec, "kernel" | "initrd" | "image" | "dataDiskBytes">[];
}

export interface FleetMember {
  readonly hostId: string;
  readonly subject: string;
  /** Heartbeats and reconciles pcr_vms now (calls are serialized with the timer's). */
  beat(): Promise<void>;
  /**
   * Stops heartbeats and drains the call subscription; leaves `nc` open. Lifecycle events are
   * still published (the VMs a shutdown stops end after this), until deregister().
   */
  leave(): Promise<void>;
  /**
   * After leave(), once no call can make a VM any more: publishes the lifecycle events not yet
   * published (bounded by the timeout), stops publishing; then, if the worker has no VM left,
   * removes what says this host is in the fleet (its pcr_hosts entry, and pcr_vms entries still
   * naming it), so a host shut down cleanly does not linger as `lost`. With VMs left (they outlive
   * the worker), it removes nothing: they show `lost` until the host is back. Never throws; false:
   * the entry stays.
   */
  deregister(timeoutMs?: number): Promise<boolean>;
}

/** Every this many heartbeats, pcr_vms entries of this host's VMs are read back (a gateway writes them too). */
const VERIFY_EVERY_BEATS = 30;
const EVENTS_BATCH = 256;
const EVENTS_WAIT_MS = 5_000;
const RETRY_MS = { first: 200, max: 5_000 };

export async function joinFleet(options: JoinFleetOptions): Promise<FleetMember> {
  const { nc, hostId, api } = options;
  const log = options.logger.child({ component: "fleet", hostId });
  const subject = hostCallSubject(hostId); // validates the id before anything is created
  const buckets = await openMemberBuckets(nc, { replicas: options.replicas, logger: log });
  const js = jetstream(nc);
  const startedAtMs = Date.now();
  const stop = new AbortController();
  /** What this process last put in pcr_vms, by VM id: the encoded value. */
  const published = new Map<string, string>();
  let scanned = false;
  let beats = 0;
  let failing = false;
  let chain: Promise<void> = Promise.resolve();
  /** The revision of this process's last heartbeat: deregister() deletes only that one. */
  let hostRevision: number | undefined;

  const heartbeat = async (): Promise<void> => {
    const views = await api.listVms();
    const specs = options.specs();
    const info: HostInfo = {
      hostId,
      backend: options.backend,
      labels: options.labels,
      capacity: options.capacity,
      used: used(
        views,
        specs.reduce((sum, spec) => sum + (spec.dataDiskBytes ?? 0), 0),
      ),
      groups: [...new Set(views.filter((vm) => isLive(vm.status) && vm.group).map((vm) => vm.group!))].sort(),
      store: summarizeStore(
        specs.flatMap((spec) => [spec.kernel, spec.initrd, spec.image]).filter((path) => path.startsWith("/nix/store/")),
      ),
      version: options.version,
      startedAtMs,
      seenAtMs: Date.now(),
    };
    hostRevision = await buckets.hosts.put(hostId, encodeHostInfo(info));
    if (!scanned) {
      await scanOwn(buckets.vms, hostId, published);
      scanned = true;
    } else if (++beats % VERIFY_EVERY_BEATS === 0) {
      await verifyOwn(buckets.vms, published);
    }
    await reconcile(views);
  };

  const reconcile = async (views: VmView[]): Promise<void> => {
    const ids = new Set<string>();
    for (const view of views) {
      ids.add(view.id);
      await putLocation(view);
    }
    for (const id of [...published.keys()]) if (!ids.has(id)) await deleteLocation(id);
  };

  const putLocation = async (view: VmView): Promise<void> => {
    const value = encodeVmLocation(vmLocationOf(hostId, view));
    const text = Buffer.from(value).toString("utf8");
    if (published.get(view.id) === text) return;
    await buckets.vms.put(view.id, value);
    published.set(view.id, text);
  };

  const deleteLocation = async (id: string): Promise<void> => {
    const entry = await buckets.vms.get(id);
    // Only if it still says here: the VM may have moved, or its id been taken elsewhere.
    if (entry?.operation === "PUT" && ownedBy(entry.value, hostId)) await buckets.vms.delete(id, { previousSeq: entry.revision });
    published.delete(id);
  };

  /** Runs `step` after every step already queued, so heartbeats and hooks never interleave. */
  const serial = (step: () => Promise<void>): Promise<void> => {
    const next = chain.then(step);
    chain = next.catch(() => undefined);
    return next;
  };

  const beat = () =>
    serial(async () => {
      try {
        await heartbeat();
        if (failing) log.info("fleet heartbeats resumed");
        failing = false;
      } catch (err) {
        // One line per outage, not one per beat.
        if (!failing) log.warn({ err: (err as Error).message }, "fleet heartbeat failed; retrying every beat");
        failing = true;
        throw err;
      }
    });

  await beat(); // the host is in the registry before joinFleet resolves
  const server: NatsWorkerServer = serveWorkerOverNats(nc, subject, api, { logger: log });
  // A beat slower than the interval (NATS down: puts wait for their timeout) is not queued behind.
  let beating = false;
  let left = false;
  const tick = () => {
    // After leave(): no heartbeat may land after deregister() read the entry (an event published
    // late calls this too).
    if (beating || left) return;
    beating = true;
    void beat()
      .catch(() => undefined)
      .finally(() => (beating = false));
  };
  const timer = setInterval(tick, options.heartbeatMs);
  const progress = { nextSeq: 0n };
  const publishing = publishEvents({
    api,
    js,
    hostId,
    startedAtMs,
    signal: stop.signal,
    log,
    changed: tick,
    progress,
  });
  /** Until every event the worker has now is published, or the deadline; then publishing stops. */
  const finishPublishing = async (deadlineMs: number): Promise<void> => {
    while (Date.now() < deadlineMs && !stop.signal.aborted) {
      const pending = await api.events(progress.nextSeq, 1, 0).catch(() => undefined);
      if (!pending || pending.events.length === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    stop.abort();
    // The publisher may sit in a long poll of the events; it ends there, unneeded.
    await Promise.race([publishing, new Promise((resolve) => setTimeout(resolve, 1_000).unref())]);
  };
  log.info({ subject, heartbeatMs: options.heartbeatMs }, "joined the fleet");

  return {
    hostId,
    subject,
    beat,
    async leave() {
      left = true;
      clearInterval(timer);
      await server.drain();
      await chain;
      log.info("left the fleet");
    },
    async deregister(timeoutMs = 5_000) {
      const attempt = async (): Promise<boolean> => {
        await finishPublishing(Date.now() + timeoutMs / 2);
        const remaining = (await api.listVms()).length;
        if (remaining > 0) {
          log.info({ vms: remaining }, "staying in pcr_hosts: this host's VMs outlive the worker and show lost until it is back");
          return false;
        }
        for (const id of [...published.keys()]) await deleteLocation(id);
        const entry = await buckets.hosts.get(hostId);
        // Only our own last heartbeat: another process under this host id (a restart racing this
        // shutdown) keeps its entry. The revision check makes the read and the delete one step.
        if (entry?.operation !== "PUT" || entry.revision !== hostRevision) {
          log.warn({ revision: entry?.revision, ours: hostRevision }, "pcr_hosts holds another heartbeat than our last: left as it is");
          return false;
        }
        await buckets.hosts.delete(hostId, { previousSeq: entry.revision });
        log.info("removed this host from pcr_hosts: no VMs left");
        return true;
      };
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), timeoutMs);
      });
      try {
        // Behind any heartbeat still queued, so that none lands between the read and the delete.
        let removed = false;
        const run = serial(async () => {
          removed = await attempt();
        });
        return await Promise.race([run.then(() => removed), deadline]);
      } catch (err) {
        log.warn({ err: (err as Error).message }, "cannot remove this host from pcr_hosts; it will show lost");
        return false;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** What the host's VMs take: only those whose VMM should be alive count, as the core counts them. */
function used(views: VmView[], diskBytes: number): Resources {
  const live = views.filter((vm) => isLive(vm.status));
  return {
    vms: live.length,
    cpu: live.reduce((sum, vm) => sum + vm.cpu, 0),
    memoryBytes: Number(live.reduce((sum, vm) => sum + vm.memoryBytes, 0n)),
    diskBytes,
  };
}

function ownedBy(value: Uint8Array, hostId: string): boolean {
  try {
    return parseVmLocation(value).hostId === hostId;
  } catch {
    return false; // not ours to clean up: a hostile or newer entry stays for its writer
  }
}

/** Every pcr_vms entry that says this host (left by an earlier run of this worker), so stale ones get deleted. */
async function scanOwn(vms: KV, hostId: string, published: Map<string, string>): Promise<void> {
  published.clear();
  for await (const key of await vms.keys()) {
    const entry = await vms.get(key);
    if (entry?.operation === "PUT" && ownedBy(entry.value, hostId)) published.set(key, Buffer.from(entry.value).toString("utf8"));
  }
}

/** Forgets what no longer reads as this process put it, so the reconcile that follows puts it again. */
async function verifyOwn(vms: KV, published: Map<string, string>): Promise<void> {
  for (const [id, text] of [...published]) {
    const entry = await vms.get(id);
    const current = entry?.operation === "PUT" ? Buffer.from(entry.value).toString("utf8") : undefined;
    if (current !== text) published.set(id, "");
  }
}

interface PublishContext {
  api: WorkerApi;
  js: JetStreamClient;
  hostId: string;
  startedAtMs: number;
  signal: AbortSignal;
  log: Logger;
  /** Called after events were published: VMs came or went. */
  changed: () => void;
  /** The worker's sequence up to which its events are published. */
  progress: { nextSeq: bigint };
}

/**
 * Long-polls the worker's events and publishes each, in order, with its ack awaited: one event is
 * retried until JetStream has it before the next is sent, so one VM's events are never reordered.
 * The message id makes a retry whose first ack was lost a duplicate the stream drops.
 */
async function publishEvents(context: PublishContext): Promise<void> {
  const { api, js, hostId, signal, log } = context;
  const subject = eventsSubject(hostId);
  let since = 0n;
  while (!signal.aborted) {
    let batch: Awaited<ReturnType<WorkerApi["events"]>>;
    try {
      batch = await api.events(since, EVENTS_BATCH, EVENTS_WAIT_MS);
    } catch (err) {
      log.warn({ err: (err as Error).message }, "reading lifecycle events failed");
      await pause(RETRY_MS.max, signal);
      continue;
    }
    for (const event of batch.events) {
      const data = encodeFleetEvent(fleetEventOf(hostId, event));
      const msgID = `${hostId}:${context.startedAtMs}:${event.seq}`;
      for (let wait = RETRY_MS.first; !signal.aborted; wait = Math.min(wait * 2, RETRY_MS.max)) {
        try {
          await js.publish(subject, data, { msgID });
          break;
        } catch (err) {
          log.debug({ err: (err as Error).message, seq: String(event.seq) }, "publishing a lifecycle event failed; retrying");
          await pause(wait, signal);
        }
      }
      if (signal.aborted) return; // unpublished events stay unpublished: their VMs' state is in pcr_vms and the host
    }
    since = batch.nextSeq;
    context.progress.nextSeq = since;
    if (batch.events.length > 0) context.changed();
  }
}

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
