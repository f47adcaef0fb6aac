// The interfaces the core needs from the outside world. The core imports only these;
// each adapter (vmm/, net/, store/, secrets/, state/) implements one.

export type BackendName = "qemu" | "cloud-hypervisor";

/** How a VMM process ended. */
export interface VmmExit {
  code: number | null;
  signal: string | null;
  /** One human-readable line, e.g. "killed by SIGKILL" or "exited with code 1: <last stderr line>". */
  description: string;
  /**
   * The backend's verdict that the VM failed although the status looks clean: Cloud Hypervisor
   * exits 0 on SIGTERM, on a vCPU error and on a thread panic too, not only when the guest ends.
   */
  failed?: true;
}

/** Everything a backend needs to start one VM. Paths are already validated and present. */
export interface VmLaunchSpec {
  id: string;
  /** Private per-VM directory owned by the worker: sockets, console file, logs live here. */
  vmDir: string;
  kernel: string;
  initrd?: string;
  /** Root disk, attached read-only as the first virtio-blk device. */
  image?: string;
  /** Full kernel command line, already including what the worker adds (network, console, tsc). */
  cmdline: string;
  cpu: number;
  memoryBytes: number;
  /** Serial console goes here; the core serves it through `read`. */
  consolePath: string;
  net?: { tap: string; mac: string };
  /** Host directory shared read-only into the guest under the given mount tag. */
  share?: { tag: string; hostDir: string };
  /** Writable data disk (/dev/vdb): the backend creates this sparse raw file in vmDir. */
  dataDisk?: { path: string; bytes: number };
  /**
   * Open descriptors of kernel, initrd and image, checked by the store. A backend hands these to
   * the VMM (as /proc/self/fd/N) instead of the paths, so no file can be swapped between the
   * check and the VMM's own open. The paths above still name them in logs and records.
   */
  bootFds?: { kernel: number; initrd?: number; image?: number };
}

/** Persisted by the core so that a restarted worker can re-adopt the VMM. */
export interface VmmProcessRecord {
  backend: BackendName;
  pid: number;
  /** Process start time (field 22 of /proc/<pid>/stat), to tell a reused pid apart. */
  startTime: string;
  /** The host's boot id when it started: a record from another boot is never adopted. */
  bootId?: string;
  /** Its /proc/<pid>/exe when it started. */
  exe?: string;
  /** Control socket: QMP for QEMU, the API socket for Cloud Hypervisor. */
  controlSocket: string;
  /** Helper processes tied to the VM's life (virtiofsd), with their start times. */
  helpers: { pid: number; startTime: string }[];
}

export interface BlockCounters {
  readBytes: bigint;
  writeBytes: bigint;
  readOps: bigint;
  writeOps: bigint;
}

export type GuestRunState = "running" | "paused" | "shutdown" | "unknown";

/** A live VMM process, started or re-adopted. */
export interface VmmHandle {
  readonly record: VmmProcessRecord;
  /** Resolves once, when the VMM process has exited (or was found gone). */
  readonly exited: Promise<VmmExit>;
  /** Resolves when the VMM reports the guest running; rejects if it exits first or times out. */
  waitRunning(timeoutMs: number): Promise<void>;
  runState(): Promise<GuestRunState>;
  blockCounters(): Promise<BlockCounters>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Asks the guest to power off (ACPI), waits up to graceMs, then kills. Idempotent. */
  stop(graceMs: number): Promise<VmmExit>;
  /** SIGKILL now, helpers too. Idempotent. */
  kill(): Promise<VmmExit>;
  // Fault injection; a backend without one of these does not support that fault.
  /** Hard reset: the guest reboots at once, without shutting down. */
  reset?(): Promise<void>;
  /** Hard power off: the VMM exits cleanly, as if the plug were pulled. */
  powerOff?(): Promise<void>;
  /** Makes I/O on the data disk fail until clearDiskErrors(faultId); throws FAILED_PRECONDITION where unsupported. */
  injectDiskErrors?(faultId: string, rule: DiskErrorRule): Promise<void>;
  clearDiskErrors?(faultId: string): Promise<void>;
  /** Delays packets towards the guest inside the VMM (for hosts without sch_netem). */
  delayNetwork?(faultId: string, delay: { ms: number; jitterMs: number }): Promise<void>;
  clearNetworkDelay?(faultId: string): Promise<void>;
  /** After a restart: removes fault machinery a previous worker left inside the VMM. */
  resetFaults?(): Promise<string[]>;
}

export interface DiskErrorRule {
  op: "readWrite" | "read" | "write";
  errno: number;
  /** Failing starts after this many more operations of that kind (0: at once). */
  afterOps: number;
  /** 0 or 100: every request; else each 4 KiB block fails with this probability (a seeded bad-block map). */
  probabilityPercent: number;
}

/** Network faults on one VM's TAP, each one removable on its own (worker/faults/). */
export type NetFault =
  | { kind: "partition"; cidrs: string[] }
  | { kind: "loss"; percent: number }
  | { kind: "delay"; ms: number; jitterMs: number }
  | { kind: "bandwidth"; kbitPerSecond: number };

export interface NetFaultPort {
  /** Throws FAILED_PRECONDITION with the reason when this host cannot do it (e.g. no sch_netem). */
  apply(faultId: string, tap: string, fault: NetFault): Promise<void>;
  /** Removes exactly what apply added. Idempotent. */
  clear(faultId: string, tap: string, fault: NetFault): Promise<void>;
  /** After a restart: removes every fault rule and shaping qdisc (on these TAPs) a worker left. */
  reset(taps: string[]): Promise<string[]>;
}

/** CPU limits on a VMM process. */
export interface CpuThrottlePort {
  /** Throws FAILED_PRECONDITION with the reason when the host has no usable cgroup v2 cpu controller. */
  throttle(faultId: string, pid: number, percent: number): Promise<void>;
  /** Lifts the limit and puts the process back where it was. Idempotent. */
  clear(faultId: string, pid: number): Promise<void>;
  /** After a restart: lifts every limit a worker left (processes back to the root, cgroups removed). */
  reset(): Promise<string[]>;
}

/** What a backend can serve; the core refuses anything else before a create or fault has any effect. */
export interface BackendCapabilities {
  /** A writable data disk (spec.dataDiskBytes). */
  dataDisk: boolean;
}

export interface VmmBackend {
  readonly name: BackendName;
  readonly capabilities: BackendCapabilities;
  /** Guest kernel parameters this backend needs (e.g. tsc_early_khz on TCG microvm). */
  extraCmdline(): string[];
  /** How the guest should mount a share: "9p" (QEMU) or "virtiofs" (Cloud Hypervisor). */
  readonly shareKind: "9p" | "virtiofs";
  launch(spec: VmLaunchSpec): Promise<VmmHandle>;
  /** Re-adopts a VMM that survived a worker restart; undefined when it is gone (or the pid was reused). */
  adopt(record: VmmProcessRecord, vmDir: string): Promise<VmmHandle | undefined>;
  /**
   * Kills this backend's processes (VMMs, helpers) that point into `roots` but whose pid is not in
   * `keep`: what a killed worker started and never recorded. Returns a description of each.
   */
  killStrays?(roots: string[], keep: Set<number>): Promise<string[]>;
}

/** What the network adapter set up for one VM. Persisted in the VM record. */
export interface VmNetwork {
  tap: string;
  mac: string;
  ip: string;
  prefixLength: number;
  gateway: string;
  dns: string;
}

export interface NetCounters {
  rxBytes: bigint;
  txBytes: bigint;
  rxPackets: bigint;
  txPackets: bigint;
}

export interface NetworkPort {
  /** Bridge, table, NAT: idempotent, run at start. `existing` are the VMs to keep (rebuilt without duplicates). */
  init(existing: { vmId: string; net: VmNetwork; allowedDomains: string[] }[]): Promise<void>;
  /** Throws INVALID_ARGUMENT for a bad allowedDomains entry, before anything is made. */
  validateAllowedDomains(allowedDomains: string[]): void;
  /** Allocates address and MAC, creates the TAP, the chain and the set. */
  attach(vmId: string, allowedDomains: string[]): Promise<VmNetwork>;
  /** Removes TAP, chain, set and lease. Idempotent: missing pieces are fine. */
  detach(vmId: string): Promise<void>;
  /** Guest kernel parameters that tell the test guest its address. */
  guestCmdline(net: VmNetwork): string[];
  counters(vmId: string): Promise<{ net: NetCounters; egressDrops: bigint }>;
  /** Removes TAPs and chains of VMs not in `known`. Returns what was removed. */
  removeOrphans(known: Set<string>): Promise<string[]>;
  close(): Promise<void>;
}

export interface StorePort {
  /** Makes sure each path is in the local store: a cheap local check, then `nix copy --from` for what is missing. */
  ensurePaths(paths: string[]): Promise<{ fetched: string[]; bytes: number; seconds: number }>;
  /**
   * Opens a file the VMM will read (kernel, initrd, image) after checking it: through any symlinks
   * it must reach a regular file inside the store and inside the closure of its top-level path;
   * the last open follows no link. INVALID_ARGUMENT (naming `field`) otherwise.
   */
  openBootFile(field: string, path: string): Promise<BootFile>;
}

/** A checked boot file, held open until the VMM has its own descriptor. */
export interface BootFile {
  fd: number;
  /** The file itself, every symlink resolved. */
  realPath: string;
  /** Idempotent. */
  close(): Promise<void>;
}

export interface SecretsPort {
  /** Writes the secrets to a fresh tmpfs directory (0700, files 0400); returns it. */
  write(vmId: string, secrets: { name: string; value: Uint8Array }[]): Promise<string>;
  /** Wipes and removes the directory. Idempotent. */
  wipe(vmId: string): Promise<void>;
  /** Removes directories of VMs not in `known`. */
  removeOrphans(known: Set<string>): Promise<string[]>;
}
