// Where a fleet gateway creates a VM: a pure choice among the hosts the registry knows, by the rules
// of issue 22, in order: live hosts only; the caller's constraints; a group's members on one host;
// room for the VM; hosts already holding its store paths (no `nix copy`); the least loaded; host id.
import { failedPrecondition, invalidArgument, resourceExhausted, unavailable } from "../core/errors.js";
import { type HostInfo, LABEL_KEY, LABEL_VALUE } from "./host-info.js";
import { storeMembership, storePathHash } from "./store-summary.js";

export interface PlacementRequest {
  cpu: number;
  memoryBytes: number;
  /** The VM's data disk; 0: none. */
  diskBytes: number;
  /** The spec's kernel, initrd and image (any paths inside the store: only their hashes count). */
  storePaths: string[];
  group?: string;
  constraints?: { hostId?: string; labels?: Record<string, string> };
}

export interface Placement {
  hostId: string;
  /** Why this host, for logs and the caller ("holds 3/3 store paths, load 0.25"). */
  reason: string;
}

/**
 * A host as a gateway places on it: its last heartbeat, plus the store paths of VMs this gateway
 * placed there since (their hashes), which count as held: the host is fetching them.
 */
export type PlacementHost = HostInfo & { placedStoreHashes?: ReadonlySet<string> };

export const DEFAULT_LOST_AFTER_MS = 10_000;

/** A host is lost once its heartbeat lapses; one from further ahead than that is a broken clock (or a lie). */
export function isLost(host: HostInfo, nowMs: number, lostAfterMs = DEFAULT_LOST_AFTER_MS): boolean {
  return nowMs - host.seenAtMs > lostAfterMs || host.seenAtMs - nowMs > lostAfterMs;
}

/**
 * The host for this VM; throws INVALID_ARGUMENT (a bad request), UNAVAILABLE (no live host at all),
 * FAILED_PRECONDITION (no live host meets the constraints) or RESOURCE_EXHAUSTED (none has room).
 */
export function placeVm(
  request: PlacementRequest,
  hosts: readonly PlacementHost[],
  nowMs: number,
  options: { lostAfterMs?: number } = {},
): Placement {
  checkRequest(request);
  const wanted = [...new Set(request.storePaths.map(storePathHash))];
  const { lostAfterMs = DEFAULT_LOST_AFTER_MS } = options;
  const live = hosts.filter((host) => !isLost(host, nowMs, lostAfterMs));
  // No host at all is not a full fleet: it may be back in a heartbeat, so the caller should retry.
  if (live.length === 0) throw unavailable(`no live host (${hosts.length} known, none heard from within ${lostAfterMs} ms)`);
  let candidates = constrained(request, live);

  const group = request.group?.toLowerCase();
  const groupHosts = group ? live.filter((host) => host.groups.includes(group)).map((host) => host.hostId) : [];
  if (groupHosts.length > 0) {
    // More than one only if two gateways raced; any of them keeps the group off a third host.
    candidates = candidates.filter((host) => groupHosts.includes(host.hostId));
    if (candidates.length === 0) {
      throw failedPrecondition(`group ${group}'s members are on ${groupHosts.join(", ")}, which the constraints exclude`);
    }
  }

  const fitting = candidates.filter((host) => shortOf(host, request) === undefined);
  if (fitting.length === 0) {
    if (groupHosts.length > 0) {
      throw resourceExhausted(`group ${group}'s host ${groupHosts.join(", ")} is full: ${shortages(candidates, request)}`);
    }
    throw resourceExhausted(`no host has room for ${describe(request)}: ${shortages(candidates, request)}`);
  }

  const ranked = fitting
    .map((host) => {
      const has = storeMembership(host.store);
      const held = wanted.filter((hash) => host.placedStoreHashes?.has(hash) || has(hash)).length;
      return { host, held, load: loadAfter(host, request) };
    })
    // Locality first, even over load: a copy of a closure costs more than a busier host.
    .sort((a, b) => b.held - a.held || a.load - b.load || compareIds(a.host.hostId, b.host.hostId));
  const best = ranked[0]!;
  const why = [`holds ${best.held}/${wanted.length} store paths`, `load ${best.load.toFixed(2)} after`];
  if (groupHosts.length > 0) why.unshift(`group ${group}'s host`);
  return { hostId: best.host.hostId, reason: why.join(", ") };
}

/**
 * The host as it will be once these VMs are on it: for a gateway placing many VMs between two
 * heartbeats, so it neither overfills a host nor forgets where a group or a closure went. One pass
 * over them, and the heartbeat's store summary is shared, not copied: a gateway does this on every
 * placement, for every VM it placed since the host's last heartbeat.
 */
export function reserve(host: PlacementHost, requests: PlacementRequest | readonly PlacementRequest[]): PlacementHost {
  const used = { ...host.used };
  const groups = new Set(host.groups);
  const placedStoreHashes = new Set(host.placedStoreHashes);
  for (const request of Array.isArray(requests) ? requests : [requests]) {
    used.vms += 1;
    used.cpu += request.cpu;
    used.memoryBytes += request.memoryBytes;
    used.diskBytes += request.diskBytes;
    if (request.group) groups.add(request.group.toLowerCase());
    for (const path of request.storePaths) placedStoreHashes.add(storePathHash(path));
  }
  return { ...host, used, groups: [...groups], placedStoreHashes };
}

function checkRequest(request: PlacementRequest): void {
  const whole = (value: number, min: number) => Number.isSafeInteger(value) && value >= min;
  if (!whole(request.cpu, 1) || !whole(request.memoryBytes, 1) || !whole(request.diskBytes, 0)) {
    throw invalidArgument(`cannot place ${describe(request)}: cpu and memory must be positive integers, disk a whole number`);
  }
  for (const [key, value] of Object.entries(request.constraints?.labels ?? {})) {
    if (!LABEL_KEY.test(key) || !LABEL_VALUE.test(value))
      throw invalidArgument(`bad label constraint ${JSON.stringify(`${key}=${value}`)}`);
  }
}

/** The live hosts the constraints allow; FAILED_PRECONDITION naming the first constraint none meets. */
function constrained(request: PlacementRequest, live: PlacementHost[]): PlacementHost[] {
  const { hostId, labels = {} } = request.constraints ?? {};
  let hosts = live;
  if (hostId !== undefined) {
    hosts = hosts.filter((host) => host.hostId === hostId);
    if (hosts.length === 0) throw failedPrecondition(`constraint host ${hostId}: no such live host`);
  }
  for (const [key, value] of Object.entries(labels).sort(([a], [b]) => compareIds(a, b))) {
    // Own properties only: a label "constructor" must not match what every object inherits.
    hosts = hosts.filter((host) => Object.hasOwn(host.labels, key) && host.labels[key] === value);
    if (hosts.length === 0) throw failedPrecondition(`constraint label ${key}=${value}: no live host${hostId ? ` ${hostId}` : ""} has it`);
  }
  return hosts;
}

/** What the host lacks for this VM (the first of vms, cpu, memory, disk), or undefined if it fits. */
function shortOf(host: HostInfo, request: PlacementRequest): string | undefined {
  const { capacity: cap, used } = host;
  if (used.vms + 1 > cap.vms) return "vms";
  if (used.cpu + request.cpu > cap.cpu) return "cpu";
  if (used.memoryBytes + request.memoryBytes > cap.memoryBytes) return "memory";
  if (used.diskBytes + request.diskBytes > cap.diskBytes) return "disk";
  return undefined;
}

/** The busier of cpu and memory, as a fraction of capacity, with this VM on the host (it fits: no zero capacity). */
function loadAfter(host: HostInfo, request: PlacementRequest): number {
  return Math.max(
    (host.used.cpu + request.cpu) / host.capacity.cpu,
    (host.used.memoryBytes + request.memoryBytes) / host.capacity.memoryBytes,
  );
}

function shortages(hosts: HostInfo[], request: PlacementRequest): string {
  const listed = hosts.slice(0, 8).map((host) => `${host.hostId} lacks ${shortOf(host, request)}`);
  return listed.join(", ") + (hosts.length > listed.length ? ` and ${hosts.length - listed.length} more` : "");
}

function describe(request: PlacementRequest): string {
  return `${request.cpu} vCPU, ${request.memoryBytes} bytes of memory, ${request.diskBytes} bytes of disk`;
}

/** Code-unit order, not the locale's: every gateway ranks alike. */
function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
