// What the worker offers, independent of transport. The RPC layer translates to and from this.
import type { FaultInput } from "./fault-model.js";
import type {
  DirListing,
  ExecRequest,
  ExecResult,
  FileChunk,
  FileStat,
  OutputStream,
  ProcessOutput,
  ProcessStart,
  ProcessStatus,
} from "../ports/agent.js";

export type {
  DirListing,
  ExecRequest,
  ExecResult,
  FileChunk,
  FileStat,
  FileType,
  OutputStream,
  ProcessOutput,
  ProcessStart,
  ProcessStatus,
} from "../ports/agent.js";

/**
 * In wire order (schema/worker.capnp's ordinals). `lost` is a fleet gateway's word for a VM whose host
 * stopped heartbeating; a worker's own VMs never take it (see WORKER_STATUSES in core/lifecycle.ts).
 */
export type VmStatus = "creating" | "running" | "paused" | "stopping" | "stopped" | "failed" | "lost";
export const VM_STATUSES: readonly VmStatus[] = ["creating", "running", "paused", "stopping", "stopped", "failed", "lost"];

/** A spec as a client sent it; validated by the core (see core/spec.ts). */
export interface VmSpecInput {
  hostname: string;
  kernel: string;
  initrd: string;
  image: string;
  cmdline: string;
  cpu: number;
  memoryBytes: bigint;
  allowedDomains: string[];
  /** A fresh sparse writable disk of this size (/dev/vdb); 0 or absent: none. */
  dataDiskBytes?: bigint;
  /** The group the VM joins: members reach each other and resolve each other's names. ""/absent: none. */
  group?: string;
}

export interface SecretInput {
  name: string;
  value: Uint8Array;
}

export interface CreateVmOptions {
  secrets?: SecretInput[];
  /** 0 or absent: no time-to-live. */
  ttlSeconds?: number;
  /** 0 or absent: answer once the VMM runs; else wait this long for the guest agent's hello. */
  waitReadyMs?: number;
  /**
   * At most 128 bytes of printable ASCII. A create whose key names a VM this worker has, or is
   * making, answers that VM's id and makes none; see docs/fleet.md.
   */
  idempotencyKey?: string;
  /** Where a fleet gateway may place the VM; a single worker ignores it. */
  placement?: PlacementInput;
}

/** Constraints on a create's host: that host id, and hosts carrying every label. */
export interface PlacementInput {
  host?: string;
  labels?: Record<string, string>;
}

/** A write of one piece of a file: at most FILE_LIMITS.maxCallBytes (core/files.ts). */
export interface FileWriteInput {
  path: string;
  offset: number;
  data: Uint8Array;
  /** Permission bits of a file this write creates; 0 or absent: 0644. */
  mode?: number;
  /** Cut the file at offset first: the first write of a whole file. */
  truncate?: boolean;
}

export interface IoCounters {
  blockReadBytes: bigint;
  blockWriteBytes: bigint;
  blockReadOps: bigint;
  blockWriteOps: bigint;
  netRxBytes: bigint;
  netTxBytes: bigint;
  netRxPackets: bigint;
  netTxPackets: bigint;
}

export interface VmView {
  id: string;
  hostname: string;
  status: VmStatus;
  failure: string;
  ip: string;
  mac: string;
  cpu: number;
  memoryBytes: bigint;
  specHash: string;
  createdAtMs: bigint;
  uptimeMs: bigint;
  counters: IoCounters;
  egressDrops: bigint;
  backend: string;
  /** Faults active right now (absent from peers that predate fault injection). */
  faults?: ActiveFault[];
  /** The guest agent's channel: "none" (the VM has none), "connecting", "ready", "broken" or "closed". */
  agentState?: string;
  /** From create to the agent's first hello; 0 until then. */
  agentReadyMs?: bigint;
  /** The VM's group; "" (or absent from peers that predate groups): none. */
  group?: string;
  /** "boot": booted for its create; "pool": a pooled VM, claimed; "snapshot": restored from its pool's snapshot. */
  origin?: VmOrigin;
  /** The fleet host id the VM is on; "" (or absent): a worker outside a fleet. */
  host?: string;
  /** The idempotency key its create carried (the client's own string); "" (or absent): none. */
  idempotencyKey?: string;
}

export const VM_ORIGINS = ["boot", "pool", "snapshot"] as const;
export type VmOrigin = (typeof VM_ORIGINS)[number];

// --- fault injection (docs/faults.md) --------------------------------------------------------

// The fault union is defined once, as the zod schema of fault-model.ts. Its names are here, without
// zod, for the RPC codec and the CLI, whose start-up must not load zod.
export type { FaultInput, FaultKind } from "./fault-model.js";

export const DISK_OPS = ["readWrite", "read", "write"] as const;
/** Which of a VM's traffic a network fault drops: both ways, only what it sends, or only what it receives. */
export const DIRECTIONS = ["both", "outbound", "inbound"] as const;
export type Direction = (typeof DIRECTIONS)[number];
export type DiskOp = (typeof DISK_OPS)[number];

/**
 * Every fault kind, in the order of schema/worker.capnp's Fault union: a kind's index is its union
 * tag. fault-model.ts does not compile unless its schema has exactly these kinds.
 */
export const FAULT_KINDS = [
  "partition",
  "loss",
  "delay",
  "bandwidth",
  "pause",
  "resume",
  "killVmm",
  "powerOff",
  "reboot",
  "diskErrors",
  "cpuThrottle",
  // In the guest, through its agent.
  "killProcess",
  "freezeProcess",
  "clockShift",
  "clockStrobe",
  "fillDisk",
] as const;
export type FaultName = (typeof FAULT_KINDS)[number];

export interface ActiveFault {
  id: string;
  kind: FaultName;
  description: string;
  injectedAtMs: bigint;
  /** 0: until cleared. */
  expiresAtMs: bigint;
}

export interface VmEvent {
  seq: bigint;
  vmId: string;
  status: VmStatus;
  atMs: bigint;
  reason: string;
}

export interface ConsoleChunk {
  data: Uint8Array;
  nextOffset: bigint;
}

/** Who is calling, as far as the transport can tell; used for the audit log. */
export interface CallerInfo {
  connection: string;
  requestId: string;
  /** Aborted when the call's deadline passed: the caller was already told DEADLINE_EXCEEDED. */
  signal?: AbortSignal;
  /** The caller's process and user where the transport can tell (unix sockets), for the audit log. */
  describe?: () => Promise<string>;
}

export interface WorkerApi {
  listVms(caller?: CallerInfo): Promise<VmView[]>;
  getVm(id: string, caller?: CallerInfo): Promise<VmView>;
  read(id: string, offset: bigint, maxBytes: number, caller?: CallerInfo): Promise<ConsoleChunk>;
  createVm(spec: VmSpecInput, options: CreateVmOptions, caller?: CallerInfo): Promise<string>;
  deleteVm(id: string, caller?: CallerInfo): Promise<void>;
  /** Lifecycle events with seq >= sinceSeq; waits up to waitMs for the first one if none yet. */
  events(sinceSeq: bigint, maxEvents: number, waitMs: number, caller?: CallerInfo): Promise<{ events: VmEvent[]; nextSeq: bigint }>;
  /** Breaks the VM from outside; returns the fault's id (instant faults too, though they never list as active). */
  injectFault(id: string, fault: FaultInput, caller?: CallerInfo): Promise<string>;
  /** Undoes an active fault exactly; NOT_FOUND for an unknown or already cleared fault. */
  clearFault(id: string, faultId: string, caller?: CallerInfo): Promise<void>;
  listFaults(id: string, caller?: CallerInfo): Promise<ActiveFault[]>;
  /** Runs a command in the guest through its agent; the answer holds its exit and (bounded) output. */
  exec(id: string, request: ExecRequest, caller?: CallerInfo): Promise<ExecResult>;
  /** Writes one piece of a file in the guest; answers the file's size after it. */
  writeFile(id: string, write: FileWriteInput, caller?: CallerInfo): Promise<{ size: number }>;
  readFile(id: string, path: string, offset: number, maxBytes: number, caller?: CallerInfo): Promise<FileChunk>;
  statFile(id: string, path: string, caller?: CallerInfo): Promise<FileStat>;
  listDir(id: string, path: string, offset: number, caller?: CallerInfo): Promise<DirListing>;
  startProcess(id: string, request: ProcessStart, caller?: CallerInfo): Promise<number>;
  readProcess(
    id: string,
    pid: number,
    stream: OutputStream,
    offset: number,
    maxBytes: number,
    waitMs: number,
    caller?: CallerInfo,
  ): Promise<ProcessOutput>;
  writeProcess(id: string, pid: number, data: Uint8Array, closeStdin: boolean, caller?: CallerInfo): Promise<void>;
  signalProcess(id: string, pid: number, signal: number, caller?: CallerInfo): Promise<void>;
  waitProcess(id: string, pid: number, waitMs: number, caller?: CallerInfo): Promise<ProcessStatus>;
  resizeProcess(id: string, pid: number, rows: number, cols: number, caller?: CallerInfo): Promise<void>;
}

export const zeroCounters = (): IoCounters => ({
  blockReadBytes: 0n,
  blockWriteBytes: 0n,
  blockReadOps: 0n,
  blockWriteOps: 0n,
  netRxBytes: 0n,
  netTxBytes: 0n,
  netRxPackets: 0n,
  netTxPackets: 0n,
});
