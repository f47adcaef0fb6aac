// The snapshot port: saved machines on disk, from which a pool restores VMs (worker/state/snapshots.ts).

/** One saved machine: a pool's machine spec, saved by one backend at one version. */
export interface SnapshotId {
  /** The pool's machine key (core/pools.ts machineKey). */
  key: string;
  backend: string;
  /** The VMM's version text: a snapshot is restored only by the version that saved it. */
  version: string;
}

export interface SnapshotFile extends SnapshotId {
  /** What a backend restores from: one file (QEMU) or a directory of files (Cloud Hypervisor). */
  path: string;
  bytes: number;
  sha256: string;
  createdAtMs: number;
}

export type SnapshotLookup = { found: SnapshotFile } | { missing: true } | { broken: string };

export interface SnapshotStore {
  /**
   * Where a new snapshot of `id` is written, as one file or as a directory of files (a draft until
   * commit; a later draft replaces it); its parent directory exists.
   */
  draft(id: SnapshotId): Promise<string>;
  /** Hashes the draft and publishes it as `id`'s snapshot, read-only. */
  commit(id: SnapshotId): Promise<SnapshotFile>;
  /**
   * `id`'s snapshot if its file is the one committed (same size, inode and mtime); with `verify`,
   * its bytes are hashed again too. A broken one is reported, not removed.
   */
  find(id: SnapshotId, options?: { verify?: boolean }): Promise<SnapshotLookup>;
  /** Every snapshot on disk (for --check and metrics), with what is wrong with it, if anything. */
  list(): Promise<{ name: string; file?: SnapshotFile; problem?: string }[]>;
  /** Removes `id`'s snapshot and draft. Idempotent. */
  remove(id: SnapshotId): Promise<void>;
  /** Removes drafts, leftovers and every snapshot not of `keep`: what a killed or reconfigured worker left. */
  removeOthers(keep: SnapshotId[]): Promise<string[]>;
}
