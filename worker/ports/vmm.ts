// The VMM port: a backend starts, adopts and drives VMM processes. Each backend is a directory
// worker/vmm/<backend>/ whose descriptor worker/vmm/registry.ts lists; the core sees only this port.

/**
 * A backend's name ("qemu", "cloud-hypervisor", "fake" in tests). The registry owns the list, so the
 * port does not: the core only carries the name in records and compares it on recovery.
 */
export type BackendName = string;

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
  /**
   * Host end of the guest agent's channel (agent/, docs/agent-protocol.md): a unix socket the VMM
   * serves, joined to the guest's virtio-serial port named pcr.agent (QEMU) or to its vsock
   * (Cloud Hypervisor). Backends with `agent` only.
   */
  agentSocket?: string;
  /**
   * Resume the guest saved at this path (VmmHandle.saveSnapshot of a VM launched from the same
   * machine spec) instead of booting the kernel; this spec's own TAP, console, agent socket and
   * boot files replace the saved VM's. Backends with `snapshot` only.
   */
  restoreFrom?: string;
  /**
   * Start the VMM in this cage (ports/cage.ts); the backend adds its own devices and TAP handling.
   * Absent: uncaged (--no-cage, or a backend's own tests).
   */
  cage?: import("./cage.js").CageSpec;
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
  /** The guest's state as the VMM reports it now (what the conformance suite checks transitions with). */
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
  /** Delays packets towards the guest inside the VMM (for hosts without sch_netem); with cidrs, only theirs. */
  delayNetwork?(faultId: string, delay: NetworkDelay): Promise<void>;
  clearNetworkDelay?(faultId: string): Promise<void>;
  /** After a restart: removes fault machinery a previous worker left inside the VMM. */
  resetFaults?(): Promise<string[]>;
  /**
   * Pauses the guest and writes its whole state (memory, devices) to `path`, as one file or a
   * directory the backend creates, which a launch with `restoreFrom` resumes. The guest stays
   * paused. Backends with `snapshot` only.
   */
  saveSnapshot?(path: string): Promise<{ bytes: number }>;
}

export type DiskErrorRule = import("../core/fault-model.js").DiskErrorRule;

/** What a backend can serve; the core refuses anything else before a create or fault has any effect. */
export interface BackendCapabilities {
  /** A writable data disk (spec.dataDiskBytes). */
  dataDisk: boolean;
  /** A channel to the guest agent (VmLaunchSpec.agentSocket), and how it reaches the guest. */
  agent: false | AgentTransport;
  /** saveSnapshot and launch's restoreFrom: pools keep machines on disk with it. */
  snapshot: boolean;
}

/**
 * "virtio-serial": the socket is the port itself. "vsock": the socket is the VMM's vsock proxy
 * (Firecracker's and Cloud Hypervisor's hybrid vsock): each connection first says
 * `CONNECT <port>\n` and is answered `OK <host port>\n`.
 */
export type AgentTransport = "virtio-serial" | "vsock";

export interface VmmBackend {
  readonly name: BackendName;
  readonly capabilities: BackendCapabilities;
  /** Guest kernel parameters this backend needs (e.g. tsc_early_khz on TCG microvm). */
  extraCmdline(): string[];
  /** How the guest should mount a share: "9p" (QEMU) or "virtiofs" (Cloud Hypervisor). */
  readonly shareKind: "9p" | "virtiofs";
  launch(spec: VmLaunchSpec): Promise<VmmHandle>;
  /** The VMM's own version ("QEMU emulator version 7.2.0 …"): a snapshot is restored only by the version that saved it. */
  version?(): Promise<string>;
  /** Re-adopts a VMM that survived a worker restart; undefined when it is gone (or the pid was reused). */
  adopt(record: VmmProcessRecord, vmDir: string): Promise<VmmHandle | undefined>;
  /**
   * Kills this backend's processes (VMMs, helpers) that point into `roots` but whose pid is not in
   * `keep`: what a killed worker started and never recorded. Returns a description of each.
   */
  killStrays?(roots: string[], keep: Set<number>): Promise<string[]>;
}

/** A delay of what reaches the guest: all of it, or only what comes from `cidrs`. */
export interface NetworkDelay {
  ms: number;
  jitterMs: number;
  cidrs?: string[];
}
