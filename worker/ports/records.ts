// The records port: what the core persists about each VM, and the console it keeps (worker/state/).
import type { VmStatus } from "../core/api.js";
import type { IdempotencyRecord } from "../core/idempotency.js";
import type { ValidSpec } from "../core/spec.js";
import type { BackendName, VmmProcessRecord } from "./vmm.js";
import type { VmNetwork } from "./network.js";

export interface VmRecord {
  id: string;
  spec: ValidSpec;
  specHash: string;
  backend: BackendName;
  /** Written only by the VM's transition (core/vm.ts), which saves the record with it. */
  status: VmStatus;
  /** Why the VM failed (set with the failed status). */
  failure: string;
  createdAtMs: number;
  runningSinceMs?: number;
  expiresAtMs?: number;
  vmm?: VmmProcessRecord;
  net?: VmNetwork;
  /** The host end of the guest agent's channel, when the backend gave the VM one. */
  agentSocket?: string;
  /** How that socket reaches the guest; absent in records of workers before vsock: virtio-serial. */
  agentTransport?: import("./vmm.js").AgentTransport;
  /** Names only; the values live on tmpfs and nowhere else. */
  secretNames: string[];
  /** The pool the VM was made for (core/pools.ts); while it is still `creating`, it is nobody's yet. */
  pool?: string;
  /**
   * How a claimed VM started: kept booted in its pool, or restored from the pool's snapshot at its
   * claim. Absent: booted for its create.
   */
  origin?: "pool" | "snapshot";
  /** The create's idempotency key (core/idempotency.ts): a create with it answers this VM. Absent: none. */
  idempotency?: IdempotencyRecord;
  /** The VMM's cage (ports/cage.ts): its uid stays taken while the VM lives, across restarts. Absent: uncaged. */
  cage?: { uid: number };
}

/** Each VM's record and private directory. */
export interface RecordRepo {
  /** Per-VM private directory: sockets, console and the record itself. */
  vmDir(id: string): string;
  createDir(id: string): Promise<string>;
  save(record: VmRecord): Promise<void>;
  /** Removes the record and the VM's directory (its console with it). Idempotent. */
  remove(id: string): Promise<void>;
  loadAll(): Promise<{ records: VmRecord[]; unreadable: string[] }>;
}

/** Each VM's serial console, kept in its directory and bounded. */
export interface ConsoleStore {
  /** Where the VMM writes the console. */
  consolePath(id: string): string;
  /**
   * Up to maxBytes of the console from offset, and the offset after them. Offsets are positions
   * in everything the guest ever printed: an offset before the oldest kept byte reads from there.
   */
  readConsole(id: string, offset: bigint, maxBytes: number): Promise<{ data: Uint8Array; nextOffset: bigint }>;
  /** The last maxBytes of the console. */
  readConsoleTail(id: string, maxBytes: number): Promise<Uint8Array>;
  /** Drops the oldest console bytes so that at most about keepBytes remain; offsets do not move. */
  trimConsole(id: string, keepBytes: number): Promise<void>;
}
