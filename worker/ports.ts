// The interfaces the core needs from the outside world. The core imports only these;
// each adapter (vmm/, net/, store/, secrets/, state/) implements one.

export type BackendName = "qemu" | "cloud-hypervisor";

/** How a VMM process ended. */
export interface VmmExit {
  code: number | null;
  signal: string | null;
  /** One human-readable line, e.g. "killed by SIGKILL" or "exited with code 1: <last stderr line>". */
  description: string;
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
}

/** Persisted by the core so that a restarted worker can re-adopt the VMM. */
export interface VmmProcessRecord {
  backend: BackendName;
  pid: number;
  /** Process start time (field 22 of /proc/<pid>/stat), to tell a reused pid apart. */
  startTime: string;
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
}

export interface VmmBackend {
  readonly name: BackendName;
  /** Guest kernel parameters this backend needs (e.g. tsc_early_khz on TCG microvm). */
  extraCmdline(): string[];
  /** How the guest should mount a share: "9p" (QEMU) or "virtiofs" (Cloud Hypervisor). */
  readonly shareKind: "9p" | "virtiofs";
  launch(spec: VmLaunchSpec): Promise<VmmHandle>;
  /** Re-adopts a VMM that survived a worker restart; undefined when it is gone (or the pid was reused). */
  adopt(record: VmmProcessRecord, vmDir: string): Promise<VmmHandle | undefined>;
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
}

export interface SecretsPort {
  /** Writes the secrets to a fresh tmpfs directory (0700, files 0400); returns it. */
  write(vmId: string, secrets: { name: string; value: Uint8Array }[]): Promise<string>;
  /** Wipes and removes the directory. Idempotent. */
  wipe(vmId: string): Promise<void>;
  /** Removes directories of VMs not in `known`. */
  removeOrphans(known: Set<string>): Promise<string[]>;
}
