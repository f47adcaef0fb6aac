// The worker's application service: the VM lifecycle over the ports. Knows nothing of RPC,
// QEMU, nft or nix; every outside effect goes through an injected port. The parts: each VM is a
// ManagedVm (vm.ts) that owns its queue and its transitions; the registry holds them and the
// reservations (registry.ts); create.ts is the create plan; recovery.ts the restart.
import type { Logger } from "pino";
import type {
  ActiveFault,
  CallerInfo,
  ConsoleChunk,
  CreateVmOptions,
  FaultInput,
  FileWriteInput,
  VmEvent,
  VmSpecInput,
  VmView,
  WorkerApi,
} from "./api.js";
import { asWorkerError, failedPrecondition, invalidArgument, notFound, unavailable, WorkerError } from "./errors.js";
import { EventLog } from "./events.js";
import { RESTORE_STEP, runClaim, type ClaimSource } from "./claim.js";
import { checkCreate, newVmId, runCreate, type CreateDeps, type CreateRequest } from "./create.js";
import { checkSameRequest, type IdempotencyRecord } from "./idempotency.js";
import { PoolSet, type PoolConfig, type PoolStats } from "./pools.js";
import { FaultController, type FaultPorts } from "./faults.js";
import { hearsPowerButton, isLive } from "./lifecycle.js";
import { recover, type RecoveryResult } from "./recovery.js";
import { VmRegistry, type HostLimits } from "./registry.js";
import { specHash, type SpecLimits, type ValidSpec } from "./spec.js";
import type { ManagedVm, VmContext } from "./vm.js";
import type {
  AgentConnection,
  ConsoleStore,
  DirListing,
  ExecRequest,
  ExecResult,
  FileChunk,
  FileStat,
  CagePort,
  GuestAgentPort,
  OutputStream,
  ProcessOutput,
  ProcessStart,
  ProcessStatus,
  NetworkPort,
  RecordRepo,
  SecretsPort,
  SnapshotStore,
  StorePort,
  VmmBackend,
} from "../ports/index.js";
import { validateExec } from "./exec.js";
import { readInPieces, validateOffset, validatePath, validateWrite, writeInPieces } from "./files.js";
import { PROCESS_LIMITS, validatePid, validateSide, validateSignal, validateStart, validateStream, validateWait } from "./processes.js";

export interface ServiceLimits extends SpecLimits, HostLimits {
  maxTtlSeconds: number;
  maxReadBytes: number;
  /** Console bytes kept per VM; older ones are dropped (offsets stay monotonic). */
  consoleMaxBytes: number;
}

export interface ServiceTimeouts {
  /** From VMM spawn to the VMM reporting the guest running; past it the create fails. */
  bootMs: number;
  /** How long deleteVm lets the guest power off before killing the VMM. */
  stopGraceMs: number;
  /** The wait before a failed save of a VM's record is tried again, doubling each time (default 100). */
  saveRetryMs?: number;
}

export interface ServiceDeps {
  backend: VmmBackend;
  network?: NetworkPort;
  store: StorePort;
  secrets: SecretsPort;
  records: RecordRepo;
  consoles: ConsoleStore;
  logger: Logger;
  limits: ServiceLimits;
  timeouts: ServiceTimeouts;
  observer?: ServiceObserver;
  /** Directories a VMM or helper of ours points into (VM dirs, secrets): recover() kills unrecorded ones. */
  strayRoots?: string[];
  /** Adapters for fault injection; without them only VMM-level faults work. */
  faults?: FaultPorts;
  /** Channels to guest agents; without it, exec is refused. */
  agents?: GuestAgentPort;
  /** Cages for VMMs; absent: uncaged (--no-cage). */
  cage?: CagePort;
  /** Warm pools (pools.ts), where their snapshots live, and how soon a pool that could not fill tries again. */
  pools?: { configs: PoolConfig[]; snapshots: SnapshotStore; retryMs?: number };
  /** The fleet host id (--host-id with --nats), shown in every VmView; absent: outside a fleet. */
  hostId?: string;
}

/** Hooks for metrics; every method optional. */
export interface ServiceObserver {
  storeFetched?(result: { bytes: number; seconds: number; paths: number }): void;
}

/**
 * The one claim error that is the request's own (its group already has that hostname): booting
 * would fail the same way. Every other error of a claim (the guest's agent refusing, timing out,
 * answering nonsense; a snapshot that does not load) is the pool's, and the VM is booted instead.
 */
const REQUEST_ERRORS = new Set(["ALREADY_EXISTS"]);

export class WorkerService implements WorkerApi {
  readonly eventLog = new EventLog();
  private readonly log: Logger;
  private readonly registry: VmRegistry;
  private readonly faults: FaultController;
  private readonly vmContext: VmContext;
  private readonly createDeps: CreateDeps;
  private readonly pools?: PoolSet;
  /** Creates under way that carry an idempotency key, by key; a made VM is found in the registry. */
  private readonly createsByKey = new Map<string, { specHash: string; idempotency: IdempotencyRecord; result: Promise<string> }>();

  constructor(private readonly deps: ServiceDeps) {
    this.log = deps.logger;
    this.registry = new VmRegistry(deps.limits);
    this.faults = new FaultController(deps.faults ?? {}, deps.logger, (vmId, faultId) => {
      this.clearFault(vmId, faultId).catch((err) =>
        this.log.warn({ vmId, faultId, err: asWorkerError(err).message }, "expired fault not cleared"),
      );
    });
    this.vmContext = {
      records: deps.records,
      consoles: deps.consoles,
      secrets: deps.secrets,
      network: deps.network,
      agents: deps.agents,
      cage: deps.cage,
      faults: this.faults,
      events: this.eventLog,
      log: deps.logger,
      saveRetryMs: deps.timeouts.saveRetryMs ?? 100,
      expire: (vm) => this.expire(vm),
    };
    this.createDeps = {
      backend: deps.backend,
      network: deps.network,
      store: deps.store,
      secrets: deps.secrets,
      records: deps.records,
      consolePath: (id) => deps.consoles.consolePath(id),
      registry: this.registry,
      vmContext: this.vmContext,
      bootTimeoutMs: deps.timeouts.bootMs,
      storeFetched: (result) => deps.observer?.storeFetched?.(result),
    };
    if (deps.pools && deps.pools.configs.length > 0) {
      this.pools = new PoolSet(
        {
          create: this.createDeps,
          snapshots: deps.pools.snapshots,
          readyTimeoutMs: deps.timeouts.bootMs,
          log: deps.logger.child({ part: "pools" }),
          retryMs: deps.pools.retryMs,
        },
        deps.pools.configs,
      );
    }
  }

  /** Starts filling the pools (after recover(): what a previous worker pooled is gone by then). */
  async startPools(): Promise<string[]> {
    return (await this.pools?.start()) ?? [];
  }

  poolStats(): PoolStats[] {
    return this.pools?.stats() ?? [];
  }

  /** The specs of every VM this worker has, whatever its status (a fleet heartbeat's store paths and disks). */
  specs(): ValidSpec[] {
    return this.registry.all().map((vm) => vm.record.spec);
  }

  // --- queries -------------------------------------------------------------------------

  async listVms(): Promise<VmView[]> {
    return this.registry.all().map((vm) => this.view(vm));
  }

  async getVm(id: string): Promise<VmView> {
    const vm = this.registry.lookup(id);
    await vm.sampleCounters();
    return this.view(vm);
  }

  /** Refreshes every live VM's counters; the worker calls this on a timer. */
  async sampleAllCounters(): Promise<void> {
    await Promise.all(this.registry.all().map((vm) => vm.sampleCounters()));
  }

  /** Keeps every VM's console within its bound; the worker calls this on a timer. */
  async trimConsoles(): Promise<void> {
    for (const vm of this.registry.all()) {
      if (!isLive(vm.status)) continue;
      await this.deps.consoles.trimConsole(vm.id, this.deps.limits.consoleMaxBytes).catch((err) => {
        this.log.warn({ vmId: vm.id, err: asWorkerError(err).message }, "cannot trim console");
      });
    }
  }

  async read(id: string, offset: bigint, maxBytes: number): Promise<ConsoleChunk> {
    this.registry.lookup(id);
    if (offset < 0n) throw invalidArgument("offset must not be negative");
    const max = Math.min(Math.max(maxBytes, 0), this.deps.limits.maxReadBytes);
    if (max === 0) return { data: new Uint8Array(0), nextOffset: offset };
    return this.deps.consoles.readConsole(id, offset, max);
  }

  async events(sinceSeq: bigint, maxEvents: number, waitMs: number): Promise<{ events: VmEvent[]; nextSeq: bigint }> {
    return this.eventLog.since(sinceSeq, Math.min(Math.max(maxEvents, 1), 1000), Math.min(waitMs, 60_000));
  }

  // --- faults ----------------------------------------------------------------------------

  async injectFault(id: string, fault: FaultInput): Promise<string> {
    const vm = this.registry.lookup(id);
    return vm.serialized(() => this.faults.inject(vm.faultTarget(), fault));
  }

  async clearFault(id: string, faultId: string): Promise<void> {
    const vm = this.registry.lookup(id);
    await vm.serialized(() => this.faults.clear(vm.faultTarget(), faultId));
  }

  async listFaults(id: string): Promise<ActiveFault[]> {
    this.registry.lookup(id);
    return this.faults.list(id);
  }

  // --- the guest agent -------------------------------------------------------------------

  /** Runs a command in the guest. Not queued behind the VM's operations: many run at once. */
  async exec(id: string, request: ExecRequest): Promise<ExecResult> {
    const agent = this.agentOf(id);
    return agent.exec(validateExec(request));
  }

  async writeFile(id: string, write: FileWriteInput): Promise<{ size: number }> {
    const agent = this.agentOf(id);
    return writeInPieces(agent, validateWrite(write));
  }

  async readFile(id: string, path: string, offset: number, maxBytes: number): Promise<FileChunk> {
    const agent = this.agentOf(id);
    return readInPieces(agent, validatePath(path), validateOffset(offset), maxBytes);
  }

  async statFile(id: string, path: string): Promise<FileStat> {
    return this.agentOf(id).stat(validatePath(path));
  }

  async listDir(id: string, path: string, offset: number): Promise<DirListing> {
    const agent = this.agentOf(id);
    return agent.list(validatePath(path), validateOffset(offset));
  }

  async startProcess(id: string, request: ProcessStart): Promise<number> {
    const agent = this.agentOf(id);
    return (await agent.startProcess(validateStart(request))).pid;
  }

  async readProcess(
    id: string,
    pid: number,
    stream: OutputStream,
    offset: number,
    maxBytes: number,
    waitMs: number,
  ): Promise<ProcessOutput> {
    const agent = this.agentOf(id);
    const bytes = Math.min(Math.max(1, maxBytes), PROCESS_LIMITS.maxReadBytes);
    return agent.readProcess(validatePid(pid), validateStream(stream), validateOffset(offset), bytes, validateWait(waitMs));
  }

  async writeProcess(id: string, pid: number, data: Uint8Array, closeStdin: boolean): Promise<void> {
    const agent = this.agentOf(id);
    if (data.length > PROCESS_LIMITS.maxWriteBytes) {
      throw invalidArgument(`a write holds ${data.length} bytes (at most ${PROCESS_LIMITS.maxWriteBytes})`);
    }
    await agent.writeProcess(validatePid(pid), data, closeStdin);
  }

  async signalProcess(id: string, pid: number, signal: number): Promise<void> {
    await this.agentOf(id).signalProcess(validatePid(pid), validateSignal(signal));
  }

  async waitProcess(id: string, pid: number, waitMs: number): Promise<ProcessStatus> {
    return this.agentOf(id).waitProcess(validatePid(pid), validateWait(waitMs));
  }

  async resizeProcess(id: string, pid: number, rows: number, cols: number): Promise<void> {
    await this.agentOf(id).resizeProcess(validatePid(pid), validateSide(rows, "rows"), validateSide(cols, "cols"));
  }

  /** The VM's agent channel; NOT_FOUND for an unknown VM, FAILED_PRECONDITION when it has none. */
  private agentOf(id: string): AgentConnection {
    const vm = this.registry.lookup(id);
    if (!vm.agent) {
      throw failedPrecondition(
        !this.deps.backend.capabilities.agent || !this.deps.agents
          ? `VM ${id}: the ${this.deps.backend.name} backend on this worker has no guest agent channel`
          : `VM ${id} is ${vm.status}: no guest agent channel`,
      );
    }
    return vm.agent;
  }

  // --- create ----------------------------------------------------------------------------

  /**
   * A create with an idempotency key answers the VM its key already names, or waits for the create
   * under way with it and answers that one's result (its id or its error): never a second VM. The
   * check and the claim of the key happen in one synchronous stretch, so two creates racing with
   * one key cannot both miss.
   */
  async createVm(input: VmSpecInput, options: CreateVmOptions, caller?: CallerInfo): Promise<string> {
    const request = checkCreate(input, options, this.deps.backend, this.deps.network, this.deps.limits, this.deps.agents !== undefined);
    const { idempotency } = request;
    if (!idempotency) return this.create(request, caller);
    const print = { specHash: specHash(request.spec), requestHash: idempotency.requestHash };
    const key = idempotency.key;
    const underWay = this.createsByKey.get(key);
    if (underWay) {
      checkSameRequest(underWay, print, request.secrets);
      this.log.info({ requestId: caller?.requestId }, "create under way with this idempotency key; answering its result");
      return underWay.result;
    }
    const known = this.registry.byIdempotencyKey(key);
    if (known?.record.idempotency) {
      checkSameRequest({ specHash: known.record.specHash, idempotency: known.record.idempotency }, print, request.secrets);
      this.log.info({ vmId: known.id, requestId: caller?.requestId }, "create repeated with its idempotency key; answering its VM");
      return known.id;
    }
    const result = this.create(request, caller);
    this.createsByKey.set(key, { specHash: print.specHash, idempotency, result });
    try {
      return await result;
    } finally {
      // Made: its registry entry names it from now on. Failed: the key is free for a retry.
      this.createsByKey.delete(key);
    }
  }

  private async create(request: CreateRequest, caller?: CallerInfo): Promise<string> {
    const source = this.pools?.take(request.spec);
    const id = source?.kind === "pool" ? source.vm.id : newVmId();
    try {
      this.reserveRoom(id, request);
    } catch (err) {
      if (source) this.pools?.giveBack(source);
      throw err;
    }
    const log = this.log.child({ vmId: id, requestId: caller?.requestId });
    // Anything else done to this VM meanwhile (a delete, a fault) waits until the create has ended.
    let ended!: () => void;
    const createEnded = new Promise<void>((resolve) => (ended = resolve));
    try {
      await this.make(id, request, source, createEnded, log, caller?.signal);
    } finally {
      ended();
      this.registry.unreserve(id);
    }
    if (request.waitReadyMs > 0 && !caller?.signal?.aborted) await this.waitReady(id, request.waitReadyMs, log);
    if (caller?.signal?.aborted) {
      // The caller was told DEADLINE_EXCEEDED and will never learn this id: nothing may stay.
      log.warn("create finished after the call's deadline; deleting the VM");
      await this.deleteVm(id, caller).catch((err) => {
        log.error({ err: asWorkerError(err).message }, "cannot delete the VM whose create outlived its call");
      });
      throw new WorkerError("DEADLINE_EXCEEDED", "the call's deadline passed");
    }
    return id;
  }

  /** Reserves the create's share of the host; a full host first gives up pooled VMs, which wait their turn. */
  private reserveRoom(id: string, request: CreateRequest): void {
    for (;;) {
      try {
        this.registry.reserve(id, request.spec);
        return;
      } catch (err) {
        // Pooled VMs are ended for a create only when that makes room; never all of them in vain.
        if (asWorkerError(err).code !== "RESOURCE_EXHAUSTED" || !this.registry.fitsWithoutPools(request.spec)) throw err;
        if (!this.pools?.evictOne()) throw err;
      }
    }
  }

  /**
   * A claim from a pool when one serves the spec, else a boot. A claim that fails for a reason of
   * the pool's (not the request's) is undone and the VM booted instead: an empty or broken pool
   * costs time, never an error.
   */
  private async make(
    id: string,
    request: CreateRequest,
    source: ClaimSource | undefined,
    createEnded: Promise<unknown>,
    log: Logger,
    signal?: AbortSignal,
  ): Promise<void> {
    const pools = this.pools;
    if (source && pools) {
      const pool = source.kind === "pool" ? source.pool : source.pool.name;
      try {
        await runClaim(this.createDeps, id, request, source, createEnded, log, this.deps.timeouts.bootMs, signal);
        pools.claimed(pool, source.kind);
        return;
      } catch (err) {
        const error = asWorkerError(err);
        if (signal?.aborted || REQUEST_ERRORS.has(error.code)) throw err;
        if (source.kind === "snapshot" && error.message.startsWith(RESTORE_STEP)) pools.snapshotFailed(pool, error.message);
        log.warn({ pool, origin: source.kind, err: error.message }, "claim from the pool failed; booting the vm instead");
      }
    }
    await runCreate(this.createDeps, id, request, createEnded, log, signal);
    const pool = pools?.poolOf(request.spec);
    if (pool && !request.spec.dataDiskBytes) pools?.claimed(pool, "boot");
  }

  /** createVm's waitReady: a VM whose agent does not say hello in time is deleted, not handed out. */
  private async waitReady(id: string, waitMs: number, log: Logger): Promise<void> {
    try {
      await this.agentOf(id).whenReady(waitMs);
    } catch (err) {
      const reason = asWorkerError(err).message;
      log.warn({ reason }, "the guest agent was not ready in time; deleting the VM");
      await this.deleteVm(id).catch((deleteErr) => {
        log.error({ err: asWorkerError(deleteErr).message }, "cannot delete the VM whose agent never became ready");
      });
      throw unavailable(`VM ${id} was deleted: its guest agent was not ready within ${waitMs} ms (${reason})`);
    }
  }

  // --- delete ----------------------------------------------------------------------------

  async deleteVm(id: string, caller?: CallerInfo): Promise<void> {
    const vm = this.registry.lookup(id);
    const log = this.log.child({ vmId: id, requestId: caller?.requestId });
    await vm.serialized(async () => {
      if (!this.registry.has(id)) throw notFound(`vm ${id} not found`);
      if (isLive(vm.status)) {
        // The move to stopping frees what does not need the VMM gone (TAP, rules, secrets) while
        // the guest powers off: the guest is going away, and this halves the time a delete takes.
        // A guest that cannot see the power button (paused) is killed at once.
        const { handle } = vm;
        const byButton = hearsPowerButton(vm.status);
        const exit = await vm.transition("stopping", "", {
          alongside: async () => (byButton ? handle?.stop(this.deps.timeouts.stopGraceMs) : handle?.kill()),
        });
        log.info({ exit: exit?.description }, "vmm stopped");
        await this.deps.records.remove(id);
        this.registry.remove(id);
        await vm.transition("stopped", "deleted", { save: "none" });
      } else {
        await vm.releaseAll();
        await this.deps.records.remove(id);
        this.registry.remove(id);
      }
    });
  }

  // --- restart -----------------------------------------------------------------------------

  /**
   * Re-adopts VMMs that survived a worker restart, marks dead ones failed, finishes interrupted
   * creates and deletes, and removes what no record accounts for.
   */
  async recover(): Promise<RecoveryResult> {
    return recover({
      backend: this.deps.backend,
      network: this.deps.network,
      records: this.deps.records,
      secrets: this.deps.secrets,
      faults: this.faults,
      registry: this.registry,
      vmContext: this.vmContext,
      strayRoots: this.deps.strayRoots ?? [],
      log: this.log,
    });
  }

  /** Stops every live VM (for --stop-vms-on-exit) and forgets nothing else. */
  async stopAll(): Promise<void> {
    await Promise.all(
      this.registry.all().map((vm) =>
        this.deleteVm(vm.id).catch((err) => {
          if (asWorkerError(err).code !== "NOT_FOUND") this.log.error({ vmId: vm.id, err: asWorkerError(err).message }, "cannot stop vm");
        }),
      ),
    );
  }

  /** Ends the pooled VMs (nobody's: a restarted worker would remove them anyway). */
  async closePools(): Promise<void> {
    await this.pools?.close();
  }

  /** Detaches from running VMMs without stopping them (worker shutdown). */
  detachAll(): void {
    for (const vm of this.registry.all()) vm.detach();
  }

  // --- internals -------------------------------------------------------------------------

  private expire(vm: ManagedVm): void {
    this.log.info({ vmId: vm.id }, "ttl expired; deleting vm");
    this.deleteVm(vm.id).catch((err) => {
      // A client's delete that got there first is no failure.
      if (asWorkerError(err).code === "NOT_FOUND") return;
      this.log.error({ vmId: vm.id, err: asWorkerError(err).message }, "ttl delete failed");
    });
  }

  private view(vm: ManagedVm): VmView {
    return { ...vm.view(this.faults.list(vm.id)), host: this.deps.hostId ?? "" };
  }
}
