// The invariants every chaos test checks after each fault: whatever the worker made for a VM
// (VMM process, TAP, nft objects, lease, VM directory, secrets directory) exists exactly for the
// VMs it still knows, and the worker's own file descriptors are back to their baseline.
import { execa } from "execa";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { VmView } from "../../worker/core/api.js";
import { isLive } from "../../worker/core/lifecycle.js";
import { tapName } from "../../worker/net/ip.js";
import { vmIdOf } from "../../worker/net/layout.js";
import { connectWorker } from "../../worker/rpc/worker-client.js";
import type { WorkerProcess } from "../helpers/worker-process.js";

export interface InvariantOptions {
  /** The worker's fd count when idle; checked only when given. */
  baselineFds?: number;
  /** Allowed fds above the baseline (a keep-alive socket, a log file being rotated). */
  fdSlack?: number;
  /** The worker runs without --no-network: TAPs and nft objects are expected per live VM. */
  network?: boolean;
  /**
   * Pooled VMs expected (a full pool): each a directory whose record is `creating` for a pool, a
   * VMM and a parked TAP, and nothing else (no lease, no nft objects); checked only when given.
   */
  pooled?: number;
}

export interface Snapshot {
  vms: VmView[];
  /** pid -> cmdline of every qemu/virtiofsd process that belongs to this worker's directories. */
  vmmProcesses: Map<number, string>;
  taps: string[];
  nft: NftCounts;
  vmDirs: string[];
  secretsDirs: string[];
  leases: string[];
  fds: number | undefined;
  zombies: number[];
}

export interface NftCounts {
  /** vmId -> objects named after it (chains, sets, counters) in both tables. */
  perVm: Map<string, { chains: number; sets: number; counters: number }>;
  /** Elements of the dispatch maps (inet egress/deny, bridge ports). */
  mapElements: { egress: number; deny: number; ports: number; peers: number };
  /** Groups that have objects. */
  groups: Set<string>;
  /** Objects not named after a VM: the fixed layout. */
  baseChains: number;
  tablesPresent: boolean;
}

/** Per live VM: inet egress+deny chains, allow+nets sets, a drops counter; bridge guard chain and drops counter. */
const PER_VM_EXPECTED = { chains: 3, sets: 2, counters: 2 };
/** inet forward/input/postrouting/output + bridge prerouting/forward. */
const BASE_CHAINS = 6;
/** A group's objects: chain group_<name>, set members_<name>. */
const GROUP_OBJECT = /^(?:group|members)_(.+)$/;

function readCmdline(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  } catch {
    return undefined;
  }
}

function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
  } catch {
    return undefined;
  }
}

/** The parent of `pid`, from /proc. */
function parentOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return undefined;
  }
}

/**
 * qemu and virtiofsd processes whose command line names one of the worker's directories, as the
 * worker supervises them: a caged VMM is its cage helper (cage/pcr-cage.c, the pid its record
 * holds), which names the VMM's argv after `--`; the VMM inside, its child, is not counted twice.
 */
export function vmmProcesses(worker: Pick<WorkerProcess, "stateDir" | "runtimeDir">): { live: Map<number, string>; zombies: number[] } {
  const live = new Map<number, string>();
  const zombies: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const cmdline = readCmdline(pid);
    if (cmdline === undefined) continue;
    if (!/qemu-system|virtiofsd|cloud-hypervisor/.test(cmdline)) continue;
    if (!cmdline.includes(worker.stateDir) && !cmdline.includes(worker.runtimeDir)) continue;
    const parent = parentOf(pid);
    if (parent !== undefined && /pcr-cage /.test(readCmdline(parent) ?? "")) continue;
    if (procState(pid) === "Z") zombies.push(pid);
    else live.set(pid, cmdline);
  }
  return { live, zombies };
}

export function fdCount(pid: number): number | undefined {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return undefined;
  }
}

async function taps(netns: string): Promise<string[]> {
  const result = await execa("ip", ["-n", netns, "-j", "link", "show"], { reject: false });
  if (result.exitCode !== 0) throw new Error(`ip link in ${netns} failed: ${result.stderr}`);
  return (JSON.parse(result.stdout) as { ifname: string }[]).map((link) => link.ifname).filter((name) => name.startsWith("pcr-"));
}

async function nftCounts(netns: string): Promise<NftCounts> {
  const counts: NftCounts = {
    perVm: new Map(),
    mapElements: { egress: 0, deny: 0, ports: 0, peers: 0 },
    groups: new Set(),
    baseChains: 0,
    tablesPresent: true,
  };
  for (const family of ["inet", "bridge"]) {
    const result = await execa("ip", ["netns", "exec", netns, "nft", "-j", "list", "table", family, "procurator"], { reject: false });
    if (result.exitCode !== 0) {
      counts.tablesPresent = false;
      continue;
    }
    const objects = (JSON.parse(result.stdout) as { nftables: Record<string, { name?: string; elem?: unknown[] }>[] }).nftables;
    for (const object of objects) {
      const [kind, body] = Object.entries(object)[0]!;
      if (kind === "map" && body.name) {
        const key = body.name as keyof NftCounts["mapElements"];
        if (key in counts.mapElements) counts.mapElements[key] += body.elem?.length ?? 0;
        continue;
      }
      if (kind !== "chain" && kind !== "set" && kind !== "counter") continue;
      const group = body.name ? GROUP_OBJECT.exec(body.name)?.[1] : undefined;
      if (group) {
        counts.groups.add(group);
        continue;
      }
      const vmId = body.name ? vmIdOf(body.name) : undefined;
      if (!vmId) {
        if (kind === "chain") counts.baseChains++;
        continue;
      }
      const entry = counts.perVm.get(vmId) ?? { chains: 0, sets: 0, counters: 0 };
      if (kind === "chain") entry.chains++;
      else if (kind === "set") entry.sets++;
      else entry.counters++;
      counts.perVm.set(vmId, entry);
    }
  }
  return counts;
}

function list(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}

function leases(stateDir: string): string[] {
  try {
    const parsed = JSON.parse(readFileSync(join(stateDir, "network.json"), "utf8")) as { leases: Record<string, string> };
    return Object.keys(parsed.leases).sort();
  } catch {
    return [];
  }
}

export async function snapshot(worker: WorkerProcess, options: InvariantOptions = {}): Promise<Snapshot> {
  const client = await connectWorker(worker.socket);
  let vms: VmView[];
  try {
    vms = await client.listVms();
  } finally {
    client.close();
  }
  const processes = vmmProcesses(worker);
  const network = options.network ?? true;
  return {
    vms,
    vmmProcesses: processes.live,
    zombies: processes.zombies,
    taps: network ? await taps(worker.netns) : [],
    nft: network
      ? await nftCounts(worker.netns)
      : {
          perVm: new Map(),
          mapElements: { egress: 0, deny: 0, ports: 0, peers: 0 },
          groups: new Set<string>(),
          baseChains: BASE_CHAINS,
          tablesPresent: true,
        },
    vmDirs: list(join(worker.stateDir, "vms")),
    secretsDirs: list(join(worker.runtimeDir, "secrets")),
    leases: leases(worker.stateDir),
    fds: fdCount(worker.pid),
  };
}

/** A VM directory whose record is a pooled VM's (core/claim.ts launchUnclaimed): `creating`, for a pool. */
function isPooled(worker: WorkerProcess, id: string): boolean {
  try {
    const record = JSON.parse(readFileSync(join(worker.stateDir, "vms", id, "vm.json"), "utf8")) as { status: string; pool?: string };
    return record.status === "creating" && typeof record.pool === "string";
  } catch {
    return false;
  }
}

/** Every invariant violated by the snapshot, as sentences; empty when all hold. */
export function violations(snap: Snapshot, worker: WorkerProcess, options: InvariantOptions = {}): string[] {
  const problems: string[] = [];
  const network = options.network ?? true;
  const known = new Set(snap.vms.map((vm) => vm.id));
  const live = snap.vms.filter((vm) => isLive(vm.status));
  const liveIds = new Set(live.map((vm) => vm.id));

  // Records: one directory per VM the worker knows, each with a readable record, no temp files.
  // A pooled VM's is nobody's yet: its record says `creating` for its pool.
  const pooled = new Set(snap.vmDirs.filter((id) => !known.has(id) && options.pooled !== undefined && isPooled(worker, id)));
  if (options.pooled !== undefined && pooled.size !== options.pooled) {
    problems.push(`${pooled.size} pooled VMs, expected ${options.pooled}`);
  }
  const dirs = new Set(snap.vmDirs);
  for (const dir of dirs) {
    if (!known.has(dir) && !pooled.has(dir)) problems.push(`VM directory ${dir} has no VM in listVms (stale record)`);
  }
  for (const id of known) if (!dirs.has(id)) problems.push(`VM ${id} is listed but has no directory`);
  const recordPids = new Map<number, string>();
  for (const id of snap.vmDirs) {
    const dir = join(worker.stateDir, "vms", id);
    for (const name of existsSync(dir) ? readdirSync(dir) : []) {
      if (name.endsWith(".tmp")) problems.push(`VM ${id} has a leftover ${name}`);
    }
    try {
      const record = JSON.parse(readFileSync(join(dir, "vm.json"), "utf8")) as { status: string; vmm?: { pid: number } };
      const view = snap.vms.find((vm) => vm.id === id);
      if (view && view.status !== record.status && !(isLive(view.status) && isLive(record.status as VmView["status"]))) {
        problems.push(`VM ${id} is ${view.status} in listVms but ${record.status} on disk`);
      }
      if (record.vmm && (liveIds.has(id) || pooled.has(id))) recordPids.set(record.vmm.pid, id);
    } catch (err) {
      problems.push(`VM ${id}: record unreadable: ${(err as Error).message}`);
    }
  }

  // Processes: every VMM of ours belongs to a live record; every running VM has its VMM.
  for (const [pid, cmdline] of snap.vmmProcesses) {
    if (!recordPids.has(pid)) problems.push(`leaked VMM process ${pid}: ${cmdline.slice(0, 160)}`);
  }
  for (const vm of live) {
    if (vm.status !== "running" && vm.status !== "paused") continue;
    const pid = [...recordPids].find(([, id]) => id === vm.id)?.[0];
    if (pid === undefined || !snap.vmmProcesses.has(pid)) problems.push(`VM ${vm.id} is ${vm.status} but its VMM process is gone`);
  }

  if (network) {
    const expectedTaps = new Set([...live.map((vm) => tapName(vm.id)), ...[...pooled].map(tapName)]);
    for (const tap of snap.taps) if (!expectedTaps.has(tap)) problems.push(`leaked TAP ${tap}`);
    for (const vm of live)
      if (vm.status === "running" && !snap.taps.includes(tapName(vm.id))) problems.push(`VM ${vm.id} is running without its TAP`);
    if (!snap.nft.tablesPresent) problems.push("nft table procurator is missing");
    if (snap.nft.baseChains !== BASE_CHAINS) problems.push(`nft has ${snap.nft.baseChains} base chains, expected ${BASE_CHAINS}`);
    for (const [vmId, counts] of snap.nft.perVm) {
      if (!liveIds.has(vmId)) problems.push(`leaked nft objects of ${vmId}: ${JSON.stringify(counts)}`);
      else if (
        counts.chains !== PER_VM_EXPECTED.chains ||
        counts.sets !== PER_VM_EXPECTED.sets ||
        counts.counters !== PER_VM_EXPECTED.counters
      ) {
        problems.push(`nft objects of ${vmId} are ${JSON.stringify(counts)}, expected ${JSON.stringify(PER_VM_EXPECTED)}`);
      }
    }
    const running = live.filter((vm) => vm.status === "running");
    for (const vm of running) if (!snap.nft.perVm.has(vm.id)) problems.push(`VM ${vm.id} is running without its nft objects`);
    const liveGroups = new Set(live.flatMap((vm) => (vm.group ? [vm.group] : [])));
    for (const group of snap.nft.groups) if (!liveGroups.has(group)) problems.push(`leaked nft objects of group ${group}`);
    const { egress, deny, ports, peers } = snap.nft.mapElements;
    if (peers > live.filter((vm) => vm.group).length) problems.push(`nft peers map has ${peers} elements for fewer live members`);
    if (egress > live.length || deny > live.length || ports > live.length || egress < running.length || ports < running.length) {
      problems.push(`nft map elements egress=${egress} deny=${deny} ports=${ports} for ${live.length} live VMs`);
    }
    for (const lease of snap.leases) if (!liveIds.has(lease)) problems.push(`leaked address lease of ${lease}`);
  }

  for (const dir of snap.secretsDirs) if (!liveIds.has(dir)) problems.push(`leaked secrets directory ${dir}`);
  if (snap.zombies.length) problems.push(`zombie VMM processes ${snap.zombies.join(", ")}`);

  if (options.baselineFds !== undefined) {
    const slack = options.fdSlack ?? 4;
    if (snap.fds === undefined) problems.push(`worker ${worker.pid} is gone`);
    else if (snap.fds > options.baselineFds + slack)
      problems.push(`worker holds ${snap.fds} fds, baseline ${options.baselineFds} (+${slack} slack)`);
  }
  return problems;
}

/** Snapshots and checks, retrying for a short while: a VM mid-transition settles within milliseconds. */
export async function checkInvariants(
  worker: WorkerProcess,
  options: InvariantOptions = {},
  settleMs = 3000,
): Promise<{ problems: string[]; snap: Snapshot }> {
  const deadline = Date.now() + settleMs;
  for (;;) {
    const snap = await snapshot(worker, options);
    const problems = violations(snap, worker, options);
    if (problems.length === 0 || Date.now() > deadline) return { problems, snap };
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}
