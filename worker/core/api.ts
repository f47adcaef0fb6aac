// What the worker offers, independent of transport. The RPC layer translates to and from this.
export type VmStatus = "creating" | "running" | "paused" | "stopping" | "stopped" | "failed";
export const VM_STATUSES: readonly VmStatus[] = ["creating", "running", "paused", "stopping", "stopped", "failed"];

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
}

export interface SecretInput {
  name: string;
  value: Uint8Array;
}

export interface CreateVmOptions {
  secrets?: SecretInput[];
  /** 0 or absent: no time-to-live. */
  ttlSeconds?: number;
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
}

export interface WorkerApi {
  listVms(caller?: CallerInfo): Promise<VmView[]>;
  getVm(id: string, caller?: CallerInfo): Promise<VmView>;
  read(id: string, offset: bigint, maxBytes: number, caller?: CallerInfo): Promise<ConsoleChunk>;
  createVm(spec: VmSpecInput, options: CreateVmOptions, caller?: CallerInfo): Promise<string>;
  deleteVm(id: string, caller?: CallerInfo): Promise<void>;
  /** Lifecycle events with seq >= sinceSeq; waits up to waitMs for the first one if none yet. */
  events(sinceSeq: bigint, maxEvents: number, waitMs: number, caller?: CallerInfo): Promise<{ events: VmEvent[]; nextSeq: bigint }>;
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
