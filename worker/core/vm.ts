// One VM as a unit: its record, its VMM, its operation queue, and the one way its status changes —
// transition(), which checks the move (lifecycle.ts), saves the record, tells the event log and
// releases what the new status no longer holds. Nothing else writes a status or emits an event.
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "pino";
import { zeroCounters, type ActiveFault, type IoCounters, type VmStatus, type VmView } from "./api.js";
import { asWorkerError } from "./errors.js";
import type { EventLog } from "./events.js";
import type { FaultController, FaultTarget } from "./faults.js";
import { assertTransition, exitEndsVm, hasCounters, HOLDINGS, holds, isLive, type Holding } from "./lifecycle.js";
import type {
  AgentConnection,
  CagePort,
  ConsoleStore,
  GuestAgentPort,
  NetworkPort,
  RecordRepo,
  SecretsPort,
  VmmExit,
  VmmHandle,
  VmRecord,
} from "../ports/index.js";

/** What every VM shares: the ports it releases through, the event log, the fault controller. */
export interface VmContext {
  records: RecordRepo;
  consoles: ConsoleStore;
  secrets: SecretsPort;
  network?: NetworkPort;
  /** Channels to guest agents; absent: no VM gets one. */
  agents?: GuestAgentPort;
  /** Cages for VMMs; absent: every VMM runs uncaged (--no-cage). */
  cage?: CagePort;
  faults: FaultController;
  events: EventLog;
  log: Logger;
  /** The wait before a failed save is tried again; it doubles with each attempt. */
  saveRetryMs: number;
  /** The VM's time to live ran out: the service deletes it. */
  expire(vm: ManagedVm): void;
}

/**
 * How a transition saves the record. `retry` (the default): a failed save is logged with the VM id
 * and tried again with backoff, then logged as an error; it never fails the transition. `once`: a
 * step of the create plan, whose failure rolls the create back. `none`: the record is already saved
 * in this status (registration) or is being removed.
 */
export type SavePolicy = "retry" | "once" | "none";

export interface TransitionOptions<T> {
  save?: SavePolicy;
  /** Runs at the same time as the release (a delete's VMM stop); the transition ends when both have. */
  alongside?: () => Promise<T>;
}

export const SAVE_ATTEMPTS = 4;
const CONSOLE_TAIL_LINES = 5;

export class ManagedVm {
  handle?: VmmHandle;
  /** The channel to the guest agent, while the VM holds one. */
  agent?: AgentConnection;
  /** Last sampled counters: listVms serves these so it never waits on a VMM. */
  counters: IoCounters = zeroCounters();
  egressDrops = 0n;
  private ttlTimer?: NodeJS.Timeout;
  /** Operations on one VM run one at a time. */
  private queue: Promise<unknown>;
  /** Whether its first event (creating) is out; until then nobody knows the VM. */
  private announced: boolean;
  /** What this VM must release. While creating, the plan owns what it acquires and undoes it itself. */
  private readonly held: Set<Holding>;

  private constructor(
    readonly record: VmRecord,
    private readonly ctx: VmContext,
    options: { queue: Promise<unknown>; announced: boolean; held: readonly Holding[] },
  ) {
    this.queue = options.queue;
    this.announced = options.announced;
    this.held = new Set(options.held);
  }

  /** A VM the create plan is making; its operations wait for `createEnded`. */
  static creating(record: VmRecord, ctx: VmContext, createEnded: Promise<unknown>): ManagedVm {
    return new ManagedVm(record, ctx, { queue: createEnded, announced: false, held: [] });
  }

  /** A VM a previous worker left: a live one may hold anything, as its last operation may not have finished. */
  static recovered(record: VmRecord, ctx: VmContext): ManagedVm {
    return new ManagedVm(record, ctx, { queue: Promise.resolve(), announced: true, held: isLive(record.status) ? HOLDINGS : [] });
  }

  get id(): string {
    return this.record.id;
  }

  get status(): VmStatus {
    return this.record.status;
  }

  /** Runs `operation` after every earlier one on this VM has ended, failed or not. */
  serialized<T>(operation: () => Promise<T>): Promise<T> {
    const run = this.queue.then(operation, operation);
    this.queue = run.catch(() => undefined); // the caller of `operation` gets its error; the queue goes on
    return run;
  }

  /**
   * Moves the VM to `to`: checks the move, releases what `to` does not hold (while `alongside` runs),
   * then shows the new status and emits its event at once, and saves the record (per `save`).
   * Returns what `alongside` returned. Releasing first means no one sees a status whose promise the
   * VM does not keep yet (a stopped VM with its TAP); the event and the status in memory change
   * together, so a poller and an event reader never disagree.
   */
  async transition<T = undefined>(to: VmStatus, reason = "", options: TransitionOptions<T> = {}): Promise<T | undefined> {
    assertTransition(this.id, this.announced ? this.status : undefined, to);
    const [result] = await Promise.all([
      options.alongside?.(),
      this.release((what) => !holds(to, what), to).then(async () => {
        this.record.status = to;
        if (to === "failed") this.record.failure = reason;
        this.announced = true;
        this.ctx.events.append(this.id, to, reason);
        await this.save(options.save ?? "retry");
      }),
    ]);
    return result;
  }

  /** The create is done, or the VMM was adopted: the VM owns what its status holds, watches its VMM and keeps its TTL. */
  own(handle: VmmHandle, agent?: AgentConnection): void {
    this.handle = handle;
    // A claimed pooled VM brings the channel it was made ready on: a new one would wait for a new hello.
    if (agent) this.agent = agent;
    else if (this.record.agentSocket && this.ctx.agents && holds(this.status, "agent")) {
      this.agent = this.ctx.agents.connect(this.id, this.record.agentSocket, this.record.agentTransport ?? "virtio-serial");
    }
    for (const what of HOLDINGS) if (holds(this.status, what)) this.held.add(what);
    this.watch(handle);
    this.armTtl();
  }

  /** From create to the agent's first hello; a claimed VM's agent said hello in its pool, so its claim's end. */
  private agentReadyMs(): bigint {
    const { record } = this;
    const readyAt = record.origin ? record.runningSinceMs : this.agent?.readyAtMs;
    return readyAt ? BigInt(Math.max(0, readyAt - record.createdAtMs)) : 0n;
  }

  /** Frees whatever the VM still holds (a release that failed earlier); the delete of an ended VM calls it. */
  async releaseAll(): Promise<void> {
    await this.release(() => true, this.status);
  }

  /** The worker shuts down and leaves the VMM running: its timer stops (the next worker re-arms it). */
  detach(): void {
    clearTimeout(this.ttlTimer);
  }

  /** The VM as the fault controller sees it; `status` is the one it is moving to while a transition releases its faults. */
  faultTarget(status = this.status): FaultTarget {
    const { record } = this;
    return {
      id: record.id,
      status,
      backend: record.backend,
      handle: this.handle,
      tap: record.net?.tap,
      agent: this.agent,
      setPaused: async (paused) => {
        await (paused ? this.handle?.pause() : this.handle?.resume());
        await this.transition(paused ? "paused" : "running", paused ? "paused by a fault" : "resumed");
      },
      ...(record.cage && this.ctx.cage ? { limitCpu: (percent) => this.ctx.cage!.limitCpu(record.id, percent) } : {}),
    };
  }

  async sampleCounters(): Promise<void> {
    if (!this.handle || !hasCounters(this.status)) return;
    // A VMM that cannot answer now is asked again at the next sample; the last values stand meanwhile.
    const unread = (what: string) => (err: unknown) => {
      this.ctx.log.debug({ vmId: this.id, err: asWorkerError(err).message }, `cannot read ${what} counters`);
      return undefined;
    };
    const [block, net] = await Promise.all([
      this.handle.blockCounters().catch(unread("block")),
      this.ctx.network?.counters(this.id).catch(unread("network")),
    ]);
    const counters = this.counters;
    if (block) {
      counters.blockReadBytes = block.readBytes;
      counters.blockWriteBytes = block.writeBytes;
      counters.blockReadOps = block.readOps;
      counters.blockWriteOps = block.writeOps;
    }
    if (net) {
      counters.netRxBytes = net.net.rxBytes;
      counters.netTxBytes = net.net.txBytes;
      counters.netRxPackets = net.net.rxPackets;
      counters.netTxPackets = net.net.txPackets;
      this.egressDrops = net.egressDrops;
    }
  }

  view(faults: ActiveFault[]): VmView {
    const { record } = this;
    return {
      id: record.id,
      hostname: record.spec.hostname,
      status: record.status,
      failure: record.failure,
      ip: record.net?.ip ?? "",
      mac: record.net?.mac ?? "",
      cpu: record.spec.cpu,
      memoryBytes: BigInt(record.spec.memoryBytes),
      specHash: record.specHash,
      createdAtMs: BigInt(record.createdAtMs),
      uptimeMs: record.runningSinceMs && isLive(record.status) ? BigInt(Date.now() - record.runningSinceMs) : 0n,
      counters: { ...this.counters },
      egressDrops: this.egressDrops,
      backend: record.backend,
      faults,
      agentState: this.agent?.state ?? "none",
      agentReadyMs: this.agentReadyMs(),
      group: record.spec.group ?? "",
      origin: record.origin ?? "boot",
      // The client's own string: never the salted hash of its secrets kept beside it.
      idempotencyKey: record.idempotency?.key ?? "",
    };
  }

  /** Marks the VM failed (the reason is its `failure`). */
  async fail(reason: string): Promise<void> {
    this.ctx.log.warn({ vmId: this.id, reason }, "vm failed");
    await this.transition("failed", reason);
  }

  // --- internals -------------------------------------------------------------------------

  private watch(handle: VmmHandle): void {
    void handle.exited.then((exit) =>
      this.serialized(async () => {
        if (this.handle !== handle || !exitEndsVm(this.status)) return;
        await this.ended(exit);
      }).catch((err) => this.ctx.log.error({ vmId: this.id, err: asWorkerError(err).message }, "cannot record the VMM's exit")),
    );
  }

  private async ended(exit: VmmExit): Promise<void> {
    // Status 0 is the guest's own end unless the backend knows better (Cloud Hypervisor exits 0 for more).
    if (exit.code === 0 && !exit.signal && !exit.failed) {
      await this.transition("stopped", "the guest powered off");
    } else {
      const tail = await this.consoleTail();
      await this.fail(`${exit.description}${tail ? `; last console lines: ${tail}` : ""}`);
    }
  }

  private armTtl(): void {
    if (!this.record.expiresAtMs) return;
    const delay = Math.max(0, this.record.expiresAtMs - Date.now());
    this.ttlTimer = setTimeout(() => this.ctx.expire(this), Math.min(delay, 2 ** 31 - 1));
    this.ttlTimer.unref();
  }

  /**
   * Releases what the VM holds and `which` picks, in HOLDINGS order, for a VM going to `status`;
   * what fails to go is logged and stays held, to be tried again by the delete.
   */
  private async release(which: (what: Holding) => boolean, status: VmStatus): Promise<void> {
    for (const what of HOLDINGS) {
      if (!this.held.has(what) || !which(what)) continue;
      try {
        await this.releaseOne(what, status);
        this.held.delete(what);
      } catch (err) {
        this.ctx.log.error({ vmId: this.id, release: what, err: asWorkerError(err).message }, "release failed");
      }
    }
  }

  private async releaseOne(what: Holding, status: VmStatus): Promise<void> {
    switch (what) {
      case "ttl":
        return clearTimeout(this.ttlTimer);
      case "agent":
        this.agent?.close();
        this.agent = undefined;
        return;
      case "faults":
        // Before the network: tc and nft faults hang on the TAP the detach removes.
        return this.ctx.faults.clearAll(this.faultTarget(status));
      case "secrets":
        return this.ctx.secrets.wipe(this.id);
      case "network":
        return this.ctx.network?.detach(this.id);
      case "cage":
        return this.ctx.cage?.release(this.id);
    }
  }

  private async save(policy: SavePolicy): Promise<void> {
    if (policy === "none") return;
    if (policy === "once") return this.ctx.records.save(this.record);
    const log = this.ctx.log;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.ctx.records.save(this.record);
        if (attempt > 1) log.info({ vmId: this.id, status: this.status, attempt }, "vm record saved after a retry");
        return;
      } catch (err) {
        const details = { vmId: this.id, status: this.status, attempt, err: asWorkerError(err).message };
        if (attempt >= SAVE_ATTEMPTS) {
          // The worker goes on with the status in memory; a restart before the next good save sees the old one.
          log.error(details, "cannot save the vm record; giving up until its next change");
          return;
        }
        log.warn(details, "cannot save the vm record; retrying");
        await sleep(this.ctx.saveRetryMs * 2 ** (attempt - 1));
      }
    }
  }

  private async consoleTail(): Promise<string> {
    const tail = await this.ctx.consoles.readConsoleTail(this.id, 4096).catch((err) => {
      this.ctx.log.warn({ vmId: this.id, err: asWorkerError(err).message }, "cannot read the console's last lines");
      return new Uint8Array(0);
    });
    const lines = Buffer.from(tail)
      .toString("utf8")
      .split(/\r?\n/)
      .map((line) => line.trim())
      .filter(Boolean);
    return lines.slice(-CONSOLE_TAIL_LINES).join(" | ");
  }
}
