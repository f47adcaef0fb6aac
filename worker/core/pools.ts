// Warm pools: for each configured machine spec, VMs kept booted to agent-ready and paused in memory
// ("hot"), and optionally the machine saved to disk once ("disk"), from which any number of claims
// restore. A create whose machine matches a pool is served from it (claim.ts); the pool refills in
// the background, one VM at a time across all pools, and gives way to creates when the host is full.
import { createHash, randomBytes } from "node:crypto";
import type { Logger } from "pino";
import { discardUnclaimed, launchUnclaimed, type ClaimSource, type UnclaimedVm } from "./claim.js";
import { newVmId, type CreateDeps } from "./create.js";
import { asWorkerError, failedPrecondition } from "./errors.js";
import type { ValidSpec } from "./spec.js";
import type { SnapshotFile, SnapshotId, SnapshotStore } from "../ports/index.js";

export interface PoolConfig {
  /** Names the pool in logs, metrics and views. */
  name: string;
  /** The machine: kernel, initrd, image, cmdline, cpu and memory (the rest is each create's). */
  spec: ValidSpec;
  /** VMs kept booted and paused in memory. */
  hot: number;
  /** Keep the machine saved on disk too: claims past the hot VMs restore it, and refills do. */
  disk: boolean;
}

/** What a create's spec must share with a pool's to be served from it. */
export function machineKey(spec: ValidSpec): string {
  const machine = [spec.kernel, spec.initrd, spec.image, spec.cmdline, spec.cpu, spec.memoryBytes];
  return createHash("sha256").update(JSON.stringify(machine)).digest("hex").slice(0, 16);
}

export type SnapshotState = "none" | "saving" | "ready" | "broken";

export interface PoolStats {
  name: string;
  key: string;
  target: number;
  /** Hot VMs ready to claim. */
  ready: number;
  /** Guest memory the ready VMs hold. */
  memoryBytes: number;
  disk: boolean;
  snapshot: SnapshotState;
  snapshotBytes: number;
  claims: { pool: number; snapshot: number; boot: number };
  /** Snapshots found missing, changed or unloadable, and made again. */
  rebuilds: number;
  /** Why the snapshot was last made again ("" if never). */
  lastRebuild: string;
  /** The last thing that went wrong while filling, if it has not been fixed since. */
  problem: string;
}

interface Pool {
  config: PoolConfig;
  key: string;
  ready: UnclaimedVm[];
  snapshot?: SnapshotFile;
  snapshotState: SnapshotState;
  claims: PoolStats["claims"];
  rebuilds: number;
  lastRebuild: string;
  problem: string;
  /** A broken snapshot's removal, which a new save waits for (it would remove the new draft). */
  removal?: Promise<void>;
}

export interface PoolDeps {
  create: CreateDeps;
  snapshots: SnapshotStore;
  /** Longest wait for a pooled guest's agent to say hello. */
  readyTimeoutMs: number;
  log: Logger;
  /** Wait before filling again after the host was full or a fill failed. */
  retryMs?: number;
}

export class PoolSet {
  private readonly pools: Pool[];
  private version = "";
  private filling: Promise<void> | undefined;
  private again = false;
  private retryTimer?: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly deps: PoolDeps,
    configs: PoolConfig[],
  ) {
    this.pools = configs.map((config) => ({
      config,
      key: machineKey(config.spec),
      ready: [],
      snapshotState: "none",
      claims: { pool: 0, snapshot: 0, boot: 0 },
      rebuilds: 0,
      lastRebuild: "",
      problem: "",
    }));
  }

  /**
   * Keeps the snapshots of configured disk pools that are intact and of this backend's version;
   * removes every other file (a removed pool's, a killed save's), then starts filling.
   */
  async start(): Promise<string[]> {
    const { backend } = this.deps.create;
    this.version = (await backend.version?.()) ?? "unknown";
    const removed: string[] = [];
    for (const pool of this.pools.filter((each) => each.config.disk)) {
      const found = await this.deps.snapshots.find(this.snapshotId(pool), { verify: true });
      if ("found" in found) {
        pool.snapshot = found.found;
        pool.snapshotState = "ready";
      } else if ("broken" in found) {
        this.rebuild(pool, found.broken);
        removed.push(`snapshot:${pool.config.name}`);
      }
    }
    const keep = this.pools.filter((pool) => pool.snapshot).map((pool) => this.snapshotId(pool));
    removed.push(...(await this.deps.snapshots.removeOthers(keep)));
    this.kick();
    return removed;
  }

  /**
   * Where a create of `spec` comes from, decided at once (no await): a hot VM, taken out of its
   * pool (and its hold on the host released, for the create's reservation), or the pool's
   * snapshot; undefined when no pool serves it now (a cold boot).
   */
  take(spec: ValidSpec): ClaimSource | undefined {
    if (spec.dataDiskBytes || this.closed) return undefined;
    const key = machineKey(spec);
    const pool = this.pools.find((each) => each.key === key);
    if (!pool) return undefined;
    const vm = pool.ready.shift();
    // After the create's reservation, which follows at once: the refill must not take its room.
    setImmediate(() => this.kick());
    if (vm) {
      this.deps.create.registry.release(vm.id);
      return { kind: "pool", pool: pool.config.name, vm };
    }
    if (pool.snapshot && pool.snapshotState === "ready") {
      const { path } = pool.snapshot;
      return { kind: "snapshot", pool: { name: pool.config.name, spec: pool.config.spec }, path, check: () => this.checkSnapshot(pool) };
    }
    return undefined;
  }

  /** A hot VM taken for a create that was then refused before it began: back to the front of its pool. */
  giveBack(source: ClaimSource): void {
    if (source.kind !== "pool") return;
    const pool = this.pools.find((each) => each.config.name === source.pool);
    if (!pool || this.closed) {
      void this.discard(source.vm);
      return;
    }
    this.deps.create.registry.hold(source.vm.id, pool.config.spec);
    pool.ready.unshift(source.vm);
  }

  /** A create counted: which way it was served. */
  claimed(poolName: string, origin: "pool" | "snapshot" | "boot"): void {
    const pool = this.pools.find((each) => each.config.name === poolName);
    if (pool) pool.claims[origin]++;
  }

  /** The pool a spec would be served from, for counting cold boots of pooled machines. */
  poolOf(spec: ValidSpec): string | undefined {
    const key = machineKey(spec);
    return this.pools.find((each) => each.key === key)?.config.name;
  }

  /** A restore from the pool's snapshot failed: it is not used again, and is made anew. */
  snapshotFailed(poolName: string, reason: string): void {
    const pool = this.pools.find((each) => each.config.name === poolName);
    if (pool?.snapshotState !== "ready") return;
    this.rebuild(pool, `restoring it failed: ${reason}`);
    this.kick();
  }

  /**
   * The host is full and a create needs room: one hot VM (of the fullest pool) goes, its hold on
   * the host released now. False when no pool holds any.
   */
  evictOne(): boolean {
    const pool = [...this.pools].sort((a, b) => b.ready.length - a.ready.length)[0];
    const vm = pool?.ready.pop();
    if (!pool || !vm) return false;
    this.deps.create.registry.release(vm.id);
    this.deps.log.info({ pool: pool.config.name, vmId: vm.id }, "pooled vm evicted to make room for a create");
    void this.discard(vm);
    // Refilling waits for room (retrying while the host is full): once the create's VM goes, the pool is whole again.
    setImmediate(() => this.kick());
    return true;
  }

  stats(): PoolStats[] {
    return this.pools.map((pool) => ({
      name: pool.config.name,
      key: pool.key,
      target: pool.config.hot,
      ready: pool.ready.length,
      memoryBytes: pool.ready.length * pool.config.spec.memoryBytes,
      disk: pool.config.disk,
      snapshot: pool.snapshotState,
      snapshotBytes: pool.snapshot?.bytes ?? 0,
      claims: { ...pool.claims },
      rebuilds: pool.rebuilds,
      lastRebuild: pool.lastRebuild,
      problem: pool.problem,
    }));
  }

  /** Stops filling and ends every pooled VM (they are nobody's: a restarted worker would remove them). */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    await this.filling?.catch(() => undefined);
    const vms = this.pools.flatMap((pool) => pool.ready.splice(0));
    for (const vm of vms) this.deps.create.registry.release(vm.id);
    await Promise.all(vms.map((vm) => this.discard(vm)));
  }

  // --- filling -----------------------------------------------------------------------------

  /** Fills every pool in the background; a kick while filling makes it look again once done. */
  private kick(): void {
    if (this.closed) return;
    if (this.filling) {
      this.again = true;
      return;
    }
    clearTimeout(this.retryTimer);
    this.filling = this.fill().finally(() => {
      this.filling = undefined;
      if (this.again) {
        this.again = false;
        this.kick();
      }
    });
  }

  private async fill(): Promise<void> {
    for (;;) {
      const pool = this.pools.find((each) => this.needsWork(each));
      if (!pool || this.closed) return;
      try {
        if (pool.config.disk && pool.snapshotState !== "ready") await this.saveSnapshot(pool);
        else await this.addReady(pool);
        pool.problem = "";
      } catch (err) {
        const error = asWorkerError(err);
        // A full host waits for room; anything else for the retry, so a broken spec does not spin.
        // Said once per problem, not at every retry.
        if (pool.problem !== error.message) {
          this.deps.log[error.code === "RESOURCE_EXHAUSTED" ? "info" : "warn"](
            { pool: pool.config.name, err: error.message },
            "cannot fill the pool now; trying again later",
          );
        }
        pool.problem = error.message;
        this.retryTimer = setTimeout(() => this.kick(), this.deps.retryMs ?? 2000);
        this.retryTimer.unref();
        return;
      }
    }
  }

  private needsWork(pool: Pool): boolean {
    return pool.ready.length < pool.config.hot || (pool.config.disk && pool.snapshotState !== "ready");
  }

  /** One more hot VM: restored from the snapshot where there is one, booted otherwise; then paused. */
  private async addReady(pool: Pool): Promise<void> {
    const restoreFrom = pool.snapshotState === "ready" ? pool.snapshot?.path : undefined;
    let vm: UnclaimedVm;
    try {
      if (restoreFrom) await this.checkSnapshot(pool);
      vm = await this.launch(pool, restoreFrom);
    } catch (err) {
      if (restoreFrom) this.rebuild(pool, `restoring it failed: ${asWorkerError(err).message}`);
      throw err;
    }
    try {
      await vm.agent.whenReady(this.deps.readyTimeoutMs);
      await this.warm(vm);
      await vm.handle.pause();
    } catch (err) {
      await this.release(vm);
      throw err;
    }
    if (this.closed) return this.release(vm);
    pool.ready.push(vm);
    this.watch(pool, vm);
    this.deps.log.info({ pool: pool.config.name, vmId: vm.id, from: restoreFrom ? "snapshot" : "boot" }, "pooled vm ready");
  }

  /** Boots a VM of the pool, saves it to disk once its agent is ready, and ends it. */
  private async saveSnapshot(pool: Pool): Promise<void> {
    pool.snapshotState = "saving";
    await pool.removal;
    const id = this.snapshotId(pool);
    const vm = await this.launch(pool).catch((err) => {
      pool.snapshotState = "none";
      throw err;
    });
    try {
      await vm.agent.whenReady(this.deps.readyTimeoutMs);
      await this.warm(vm);
      const started = Date.now();
      await vm.handle.saveSnapshot!(await this.deps.snapshots.draft(id));
      pool.snapshot = await this.deps.snapshots.commit(id);
      pool.snapshotState = "ready";
      this.deps.log.info(
        { pool: pool.config.name, bytes: pool.snapshot.bytes, ms: Date.now() - started, path: pool.snapshot.path },
        "pool snapshot saved",
      );
    } catch (err) {
      pool.snapshotState = "none";
      await this.deps.snapshots.remove(id).catch(() => undefined);
      throw err;
    } finally {
      await this.release(vm);
    }
  }

  /**
   * Runs the claim's personalisation once with a throwaway identity, and brings the NIC up with
   * no address: what a claim then does costs a few milliseconds, not the first run's tens (under
   * TCG each guest code path is translated on its first run, and an opening NIC fills its rings).
   */
  private async warm(vm: UnclaimedVm): Promise<void> {
    await vm.agent.personalize(
      {
        hostname: "pcr-pooled",
        seed: randomBytes(32),
        machineId: randomBytes(16).toString("hex"),
        nowMs: Date.now(),
        linkUp: vm.record.net !== undefined || this.deps.create.network !== undefined,
      },
      this.deps.readyTimeoutMs,
    );
  }

  /** A VM for the pool, counted against the host first (RESOURCE_EXHAUSTED when full). */
  private async launch(pool: Pool, restoreFrom?: string): Promise<UnclaimedVm> {
    const id = newVmId();
    const { registry } = this.deps.create;
    registry.hold(id, pool.config.spec);
    const log = this.deps.log.child({ vmId: id, pool: pool.config.name });
    try {
      return await launchUnclaimed(this.deps.create, id, pool.config, log, restoreFrom);
    } catch (err) {
      registry.release(id);
      throw err;
    }
  }

  /** A hot VM that dies while pooled leaves its pool (which refills). */
  private watch(pool: Pool, vm: UnclaimedVm): void {
    void vm.handle.exited.then((exit) => {
      const index = pool.ready.indexOf(vm);
      if (index < 0) return; // claimed or evicted: no longer the pool's
      pool.ready.splice(index, 1);
      this.deps.log.warn({ pool: pool.config.name, vmId: vm.id, exit: exit.description }, "pooled vm exited; replacing it");
      void this.release(vm).then(() => this.kick());
    });
  }

  private async release(vm: UnclaimedVm): Promise<void> {
    this.deps.create.registry.release(vm.id);
    await this.discard(vm);
  }

  private async discard(vm: UnclaimedVm): Promise<void> {
    await discardUnclaimed(this.deps.create, vm).catch((err) =>
      this.deps.log.error({ vmId: vm.id, err: asWorkerError(err).message }, "cannot remove a pooled vm"),
    );
  }

  /** Before a restore: the file must be the one saved (same size, inode and mtime). */
  private async checkSnapshot(pool: Pool): Promise<void> {
    const found = await this.deps.snapshots.find(this.snapshotId(pool));
    if (!("found" in found)) throw failedPrecondition(`the snapshot ${"broken" in found ? found.broken : "is missing"}`);
  }

  private rebuild(pool: Pool, reason: string): void {
    this.deps.log.warn({ pool: pool.config.name, reason }, "pool snapshot unusable; removing it and saving a new one");
    const id = this.snapshotId(pool);
    pool.snapshot = undefined;
    pool.snapshotState = "broken";
    pool.rebuilds++;
    pool.lastRebuild = reason;
    pool.removal = this.deps.snapshots
      .remove(id)
      .catch((err) =>
        this.deps.log.error({ pool: pool.config.name, err: asWorkerError(err).message }, "cannot remove the broken snapshot"),
      );
  }

  private snapshotId(pool: Pool): SnapshotId {
    return { key: pool.key, backend: this.deps.create.backend.name, version: this.version };
  }
}
