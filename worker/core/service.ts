// The worker's application service: the VM lifecycle over the ports. Knows nothing of RPC,
// QEMU, nft or nix; every outside effect goes through an injected port.
import { randomBytes } from "node:crypto";
import type { Logger } from "pino";
import type {
  ActiveFault,
  CallerInfo,
  FaultInput,
  ConsoleChunk,
  CreateVmOptions,
  SecretInput,
  VmEvent,
  VmSpecInput,
  VmStatus,
  VmView,
  WorkerApi,
} from "./api.js";
import { zeroCounters, type IoCounters } from "./api.js";
import { asWorkerError, failedPrecondition, invalidArgument, notFound, resourceExhausted, WorkerError } from "./errors.js";
import { EventLog } from "./events.js";
import { FaultController, type FaultPorts, type FaultTarget } from "./faults.js";
import { assertTransition, isLive } from "./lifecycle.js";
import { Plan } from "./plan.js";
import { validateSecrets } from "./secrets.js";
import { specHash, storePathRoot, validateSpec, type SpecLimits, type ValidSpec } from "./spec.js";
import type { BootFile, ConsoleStore, NetworkPort, RecordRepo, SecretsPort, StorePort, VmmBackend, VmmExit, VmmHandle, VmRecord } from "../ports/index.js";

export interface ServiceLimits extends SpecLimits {
  maxVms: number;
  /** Sums over all live VMs. */
  maxTotalCpu: number;
  maxTotalMemoryBytes: number;
  /** Data disks of every VM not yet deleted, together (they are preallocated). */
  maxTotalDiskBytes: number;
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
}

/** Hooks for metrics; every method optional. */
export interface ServiceObserver {
  storeFetched?(result: { bytes: number; seconds: number; paths: number }): void;
  statusChanged?(vmId: string, from: VmStatus | undefined, to: VmStatus | undefined): void;
}

interface Vm {
  record: VmRecord;
  handle?: VmmHandle;
  /** Last sampled counters: listVms serves these so it never waits on a VMM. */
  counters: IoCounters;
  egressDrops: bigint;
  ttlTimer?: NodeJS.Timeout;
  /** Operations on one VM run one at a time. */
  queue: Promise<unknown>;
}

const CONSOLE_TAIL_LINES = 5;

interface BootFiles {
  kernel: BootFile;
  initrd?: BootFile;
  image?: BootFile;
}

async function closeBootFiles(files: BootFiles): Promise<void> {
  await Promise.all([files.kernel.close(), files.initrd?.close(), files.image?.close()]);
}

export class WorkerService implements WorkerApi {
  private readonly vms = new Map<string, Vm>();
  private readonly log: Logger;
  readonly eventLog = new EventLog();
  /** Resources promised to creates still in flight, counted against the limits. */
  private reserved = { vms: 0, cpu: 0, memory: 0, disk: 0 };
  /** Creates in flight by VM id: the start of each such VM's operation queue. */
  private readonly creates = new Map<string, Promise<void>>();
  private readonly faults: FaultController;

  constructor(private readonly deps: ServiceDeps) {
    this.log = deps.logger;
    this.faults = new FaultController(deps.faults ?? {}, deps.logger, (vmId, faultId) => {
      this.clearFault(vmId, faultId).catch((err) => this.log.warn({ vmId, faultId, err: asWorkerError(err).message }, "expired fault not cleared"));
    });
  }

  // --- queries -------------------------------------------------------------------------

  async listVms(): Promise<VmView[]> {
    return [...this.vms.values()].map((vm) => this.view(vm));
  }

  async getVm(id: string): Promise<VmView> {
    const vm = this.lookup(id);
    await this.sampleCounters(vm);
    return this.view(vm);
  }

  /** Refreshes every live VM's counters; the worker calls this on a timer. */
  async sampleAllCounters(): Promise<void> {
    await Promise.all([...this.vms.values()].map((vm) => this.sampleCounters(vm)));
  }

  /** Keeps every VM's console within its bound; the worker calls this on a timer. */
  async trimConsoles(): Promise<void> {
    for (const vm of this.vms.values()) {
      if (!isLive(vm.record.status)) continue;
      await this.deps.consoles.trimConsole(vm.record.id, this.deps.limits.consoleMaxBytes).catch((err: Error) => {
        this.log.warn({ vmId: vm.record.id, err: err.message }, "cannot trim console");
      });
    }
  }

  async read(id: string, offset: bigint, maxBytes: number): Promise<ConsoleChunk> {
    this.lookup(id);
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
    const vm = this.lookup(id);
    return this.serialized(vm, () => this.faults.inject(this.faultTarget(vm), fault));
  }

  async clearFault(id: string, faultId: string): Promise<void> {
    const vm = this.lookup(id);
    await this.serialized(vm, () => this.faults.clear(this.faultTarget(vm), faultId));
  }

  async listFaults(id: string): Promise<ActiveFault[]> {
    this.lookup(id);
    return this.faults.list(id);
  }

  private faultTarget(vm: Vm): FaultTarget {
    const { record } = vm;
    return {
      id: record.id,
      status: record.status,
      backend: record.backend,
      handle: vm.handle,
      tap: record.net?.tap,
      setPaused: async (paused) => {
        await (paused ? vm.handle?.pause() : vm.handle?.resume());
        this.setStatus(vm, paused ? "paused" : "running", paused ? "paused by a fault" : "resumed");
        await this.deps.records.save(record).catch(() => undefined);
      },
    };
  }

  // --- create ----------------------------------------------------------------------------

  async createVm(input: VmSpecInput, options: CreateVmOptions, caller?: CallerInfo): Promise<string> {
    const spec = validateSpec(input, this.deps.limits);
    if (spec.dataDiskBytes && !this.deps.backend.capabilities.dataDisk) {
      throw failedPrecondition(`dataDiskBytes: the ${this.deps.backend.name} backend cannot serve a data disk on this worker`);
    }
    if (spec.allowedDomains.length > 0 && !this.deps.network) {
      throw invalidArgument("allowedDomains given, but networking is disabled on this worker");
    }
    this.deps.network?.validateAllowedDomains(spec.allowedDomains);
    const secrets = options.secrets ?? [];
    validateSecrets(secrets);
    const ttlSeconds = options.ttlSeconds ?? 0;
    if (ttlSeconds > this.deps.limits.maxTtlSeconds) {
      throw invalidArgument(`ttlSeconds ${ttlSeconds} is above the maximum ${this.deps.limits.maxTtlSeconds}`);
    }

    this.reserve(spec);
    const id = `vm-${randomBytes(5).toString("hex")}`;
    const log = this.log.child({ vmId: id, requestId: caller?.requestId });
    const create = this.runCreate(id, spec, secrets, ttlSeconds, log, caller?.signal);
    // Anything else done to this VM meanwhile (a delete, a fault) waits until the create has ended.
    this.creates.set(id, create.then(() => undefined, () => undefined));
    try {
      await create;
    } finally {
      this.creates.delete(id);
      this.release(spec);
    }
    if (caller?.signal?.aborted) {
      // The caller was told DEADLINE_EXCEEDED and will never learn this id: nothing may stay.
      log.warn("create finished after the call's deadline; deleting the VM");
      await this.deleteVm(id, caller).catch(() => undefined);
      throw new WorkerError("DEADLINE_EXCEEDED", "the call's deadline passed");
    }
    return id;
  }

  private async runCreate(id: string, spec: ValidSpec, secrets: SecretInput[], ttlSeconds: number, log: Logger, signal?: AbortSignal): Promise<string> {
    const { backend, network, records, store } = this.deps;
    const plan = new Plan((step, err) => log.error({ step, err: asWorkerError(err).message }, "undo failed"), signal);
    const started = Date.now();

    const fetched = await plan.step("fetch store paths", () =>
      store.ensurePaths(unique([spec.kernel, spec.initrd, spec.image].filter(Boolean).map(storePathRoot))),
    );
    if (fetched.fetched.length > 0) {
      log.info({ paths: fetched.fetched, bytes: fetched.bytes, seconds: fetched.seconds }, "fetched store paths");
      this.deps.observer?.storeFetched?.({ bytes: fetched.bytes, seconds: fetched.seconds, paths: fetched.fetched.length });
    }

    // Opened now and handed to the VMM as descriptors: what was checked is what it boots.
    const bootFiles = await plan.step("check boot files", () => this.openBootFiles(spec), (files) => closeBootFiles(files));
    const vmDir = await plan.step("create vm directory", () => records.createDir(id), () => records.remove(id));
    const record: VmRecord = {
      id,
      spec,
      specHash: specHash(spec),
      backend: backend.name,
      status: "creating",
      failure: "",
      createdAtMs: started,
      expiresAtMs: ttlSeconds > 0 ? started + ttlSeconds * 1000 : undefined,
      secretNames: secrets.map((secret) => secret.name),
    };
    const vm: Vm = { record, queue: this.creates.get(id) ?? Promise.resolve(), counters: zeroCounters(), egressDrops: 0n };
    await plan.step("save state", () => records.save(record));
    await plan.step(
      "register",
      async () => {
        this.vms.set(id, vm);
        this.emit(vm, undefined, "creating");
      },
      async () => {
        this.vms.delete(id);
        this.emit(vm, "creating", "failed", "create rolled back");
      },
    );

    const secretsDir = secrets.length
      ? await plan.step("write secrets", () => this.deps.secrets.write(id, secrets), () => this.deps.secrets.wipe(id))
      : undefined;
    if (network) {
      record.net = await plan.step("attach network", () => network.attach(id, spec.allowedDomains), () => network.detach(id));
    }
    const cmdline = [
      spec.cmdline,
      `pcr.hostname=${spec.hostname}`,
      ...(record.net && network ? network.guestCmdline(record.net) : []),
      ...(secretsDir ? [`pcr.share=${backend.shareKind}`] : []),
      ...backend.extraCmdline(),
    ]
      .filter(Boolean)
      .join(" ");
    const handle = await plan.step(
      "start vmm",
      () =>
        backend.launch({
          id,
          vmDir,
          kernel: spec.kernel,
          initrd: spec.initrd || undefined,
          image: spec.image || undefined,
          cmdline,
          cpu: spec.cpu,
          memoryBytes: spec.memoryBytes,
          consolePath: this.deps.consoles.consolePath(id),
          net: record.net ? { tap: record.net.tap, mac: record.net.mac } : undefined,
          share: secretsDir ? { tag: "secrets", hostDir: secretsDir } : undefined,
          dataDisk: spec.dataDiskBytes ? { path: `${vmDir}/data.img`, bytes: spec.dataDiskBytes } : undefined,
          bootFds: { kernel: bootFiles.kernel.fd, initrd: bootFiles.initrd?.fd, image: bootFiles.image?.fd },
        }),
      async (started) => {
        await started.kill();
      },
    );
    await closeBootFiles(bootFiles); // the VMM holds its own copies
    vm.handle = handle;
    record.vmm = handle.record;
    await plan.step("save state", () => records.save(record));
    await plan.step("wait for vmm running", () => handle.waitRunning(this.deps.timeouts.bootMs));

    await plan.step("save state", async () => {
      record.runningSinceMs = Date.now();
      this.setStatus(vm, "running");
      await records.save(record);
    });
    this.watch(vm, handle);
    this.armTtl(vm);
    log.info({ ms: Date.now() - started, stepMs: plan.stepMs, backend: backend.name, cpu: spec.cpu, memoryBytes: spec.memoryBytes }, "vm running");
    return id;
  }

  private async openBootFiles(spec: ValidSpec): Promise<BootFiles> {
    const { store } = this.deps;
    const files: BootFiles = { kernel: await store.openBootFile("kernel", spec.kernel) };
    try {
      if (spec.initrd) files.initrd = await store.openBootFile("initrd", spec.initrd);
      if (spec.image) files.image = await store.openBootFile("image", spec.image);
    } catch (err) {
      await closeBootFiles(files);
      throw err;
    }
    return files;
  }

  // --- delete ----------------------------------------------------------------------------

  async deleteVm(id: string, caller?: CallerInfo): Promise<void> {
    const vm = this.lookup(id);
    const log = this.log.child({ vmId: id, requestId: caller?.requestId });
    await this.serialized(vm, async () => {
      if (!this.vms.has(id)) throw notFound(`vm ${id} not found`);
      const wasLive = isLive(vm.record.status);
      if (wasLive) {
        const wasPaused = vm.record.status === "paused";
        this.setStatus(vm, "stopping");
        await this.deps.records.save(vm.record).catch(() => undefined);
        // While the guest powers off, free what does not need the VMM gone (TAP, rules, secrets):
        // the guest is going away, and this halves the time a delete takes. A paused guest cannot
        // see the power button, so it is killed at once.
        const [exit] = await Promise.all([
          wasPaused ? vm.handle?.kill() : vm.handle?.stop(this.deps.timeouts.stopGraceMs),
          this.releaseResources(vm),
        ]);
        log.info({ exit: exit?.description }, "vmm stopped");
      } else {
        await this.releaseResources(vm);
      }
      await this.deps.records.remove(id);
      this.vms.delete(id);
      if (wasLive) this.setStatus(vm, "stopped", "deleted");
      this.deps.observer?.statusChanged?.(id, vm.record.status, undefined);
    });
  }

  // --- restart -----------------------------------------------------------------------------

  /**
   * Re-adopts VMMs that survived a worker restart, marks dead ones failed, finishes interrupted
   * creates and deletes, and removes what no record accounts for.
   */
  async recover(): Promise<{ adopted: string[]; failed: string[]; removed: string[]; orphans: string[] }> {
    const { records, backend, network } = this.deps;
    const { records: saved, unreadable } = await records.loadAll();
    const result = { adopted: [] as string[], failed: [] as string[], removed: [...unreadable], orphans: [] as string[] };
    for (const id of unreadable) await records.remove(id);
    for (const record of saved) {
      const vm: Vm = { record, queue: Promise.resolve(), counters: zeroCounters(), egressDrops: 0n };
      const handle = record.vmm && isLive(record.status) && record.backend === backend.name
        ? await backend.adopt(record.vmm, records.vmDir(record.id)).catch(() => undefined)
        : undefined;
      if (record.status === "creating" || record.status === "stopping") {
        // Interrupted create or delete: finish it by tearing everything down.
        await handle?.kill();
        await this.releaseResources(vm);
        await records.remove(record.id);
        result.removed.push(record.id);
        continue;
      }
      this.vms.set(record.id, vm);
      if (handle) {
        vm.handle = handle;
        this.watch(vm, handle);
        this.armTtl(vm);
        result.adopted.push(record.id);
      } else if (isLive(record.status)) {
        await this.fail(vm, "the VMM exited while the worker was down");
        result.failed.push(record.id);
      }
    }
    // VMMs and helpers that no record accounts for (a worker killed between spawning a VMM and
    // saving its pid): everything adopted is kept, the rest pointing into our directories dies.
    const adopted = [...this.vms.values()].filter((vm) => vm.handle);
    const keepPids = new Set(adopted.flatMap((vm) => [vm.handle!.record.pid, ...vm.handle!.record.helpers.map((helper) => helper.pid)]));
    result.orphans.push(...((await backend.killStrays?.(this.deps.strayRoots ?? [], keepPids)) ?? []));
    const known = new Set(this.vms.keys());
    const keep = [...this.vms.values()]
      .filter((vm) => vm.record.net && isLive(vm.record.status))
      .map((vm) => ({ vmId: vm.record.id, net: vm.record.net!, allowedDomains: vm.record.spec.allowedDomains }));
    if (network) {
      await network.init(keep);
      result.orphans.push(...(await network.removeOrphans(new Set(keep.map((entry) => entry.vmId)))));
    }
    result.orphans.push(
      ...(await this.faults.resetAfterRestart(
        adopted.map((vm) => vm.handle!),
        adopted.flatMap((vm) => (vm.record.net ? [vm.record.net.tap] : [])),
      )),
    );
    const liveWithSecrets = new Set([...this.vms.values()].filter((vm) => isLive(vm.record.status)).map((vm) => vm.record.id));
    result.orphans.push(...(await this.deps.secrets.removeOrphans(liveWithSecrets)));
    this.log.info({ ...result, known: known.size }, "recovered state");
    return result;
  }

  /** Stops every live VM (for --stop-vms-on-exit) and forgets nothing else. */
  async stopAll(): Promise<void> {
    await Promise.all([...this.vms.keys()].map((id) => this.deleteVm(id).catch(() => undefined)));
  }

  /** Detaches from running VMMs without stopping them (worker shutdown). */
  detachAll(): void {
    for (const vm of this.vms.values()) clearTimeout(vm.ttlTimer);
  }

  // --- internals -------------------------------------------------------------------------

  private lookup(id: string): Vm {
    const vm = this.vms.get(id);
    if (!vm) throw notFound(`vm ${JSON.stringify(id)} not found`);
    return vm;
  }

  private serialized<T>(vm: Vm, operation: () => Promise<T>): Promise<T> {
    const run = vm.queue.then(operation, operation);
    vm.queue = run.catch(() => undefined);
    return run;
  }

  private watch(vm: Vm, handle: VmmHandle): void {
    void handle.exited.then((exit) =>
      this.serialized(vm, async () => {
        if (vm.handle !== handle || !isLive(vm.record.status) || vm.record.status === "stopping") return;
        await this.onVmmExit(vm, exit);
      }),
    );
  }

  private async onVmmExit(vm: Vm, exit: VmmExit): Promise<void> {
    const tail = await this.consoleTail(vm.record.id);
    // Status 0 is the guest's own end unless the backend knows better (Cloud Hypervisor exits 0 for more).
    if (exit.code === 0 && !exit.signal && !exit.failed) {
      this.setStatus(vm, "stopped", "the guest powered off");
      await this.releaseResources(vm);
      await this.deps.records.save(vm.record).catch(() => undefined);
    } else {
      await this.fail(vm, `${exit.description}${tail ? `; last console lines: ${tail}` : ""}`);
    }
  }

  private async fail(vm: Vm, reason: string): Promise<void> {
    this.log.warn({ vmId: vm.record.id, reason }, "vm failed");
    this.setStatus(vm, "failed", reason);
    await this.releaseResources(vm);
    await this.deps.records.save(vm.record).catch(() => undefined);
  }

  /** Frees what a VM holds besides its record and console: secrets, network, timers. Idempotent. */
  private async releaseResources(vm: Vm): Promise<void> {
    clearTimeout(vm.ttlTimer);
    const id = vm.record.id;
    const steps: [string, () => Promise<unknown>][] = [
      // First: tc and nft faults hang on the TAP the network detach removes.
      ["clear faults", () => this.faults.clearAll(this.faultTarget(vm))],
      ["wipe secrets", () => this.deps.secrets.wipe(id)],
      ["detach network", async () => this.deps.network?.detach(id)],
    ];
    for (const [step, run] of steps) {
      await run().catch((err) => this.log.error({ vmId: id, step, err: asWorkerError(err).message }, "release failed"));
    }
  }

  private setStatus(vm: Vm, to: VmStatus, reason = ""): void {
    const from = vm.record.status;
    if (from !== to) assertTransition(vm.record.id, from, to);
    vm.record.status = to;
    if (to === "failed") vm.record.failure = reason;
    this.emit(vm, from, to, reason);
  }

  private emit(vm: Vm, from: VmStatus | undefined, to: VmStatus, reason = ""): void {
    this.eventLog.append(vm.record.id, to, reason);
    this.deps.observer?.statusChanged?.(vm.record.id, from, to);
  }

  private armTtl(vm: Vm): void {
    if (!vm.record.expiresAtMs) return;
    const delay = Math.max(0, vm.record.expiresAtMs - Date.now());
    vm.ttlTimer = setTimeout(() => {
      this.log.info({ vmId: vm.record.id }, "ttl expired; deleting vm");
      this.deleteVm(vm.record.id).catch((err) => {
        // A client's delete that got there first is no failure.
        if (asWorkerError(err).code === "NOT_FOUND") return;
        this.log.error({ vmId: vm.record.id, err: asWorkerError(err).message }, "ttl delete failed");
      });
    }, Math.min(delay, 2 ** 31 - 1));
    vm.ttlTimer.unref();
  }

  private reserve(spec: ValidSpec): void {
    const { limits } = this.deps;
    const live = [...this.vms.values()].filter((vm) => isLive(vm.record.status));
    const vms = live.length + this.reserved.vms + 1;
    const cpu = sum(live.map((vm) => vm.record.spec.cpu)) + this.reserved.cpu + spec.cpu;
    const memory = sum(live.map((vm) => vm.record.spec.memoryBytes)) + this.reserved.memory + spec.memoryBytes;
    if (vms > limits.maxVms) throw resourceExhausted(`host limit of ${limits.maxVms} VMs reached`);
    if (cpu > limits.maxTotalCpu) throw resourceExhausted(`host vCPU limit ${limits.maxTotalCpu} would be exceeded (${cpu} requested in all)`);
    if (memory > limits.maxTotalMemoryBytes) {
      throw resourceExhausted(`host memory limit ${limits.maxTotalMemoryBytes} bytes would be exceeded (${memory} requested in all)`);
    }
    // A data disk holds its blocks until its VM is deleted, whatever the VM's status.
    const diskBytes = spec.dataDiskBytes ?? 0;
    const disk = sum([...this.vms.values()].map((vm) => vm.record.spec.dataDiskBytes ?? 0)) + this.reserved.disk + diskBytes;
    if (diskBytes > 0 && disk > limits.maxTotalDiskBytes) {
      throw resourceExhausted(`host data-disk limit ${limits.maxTotalDiskBytes} bytes would be exceeded (${disk} held or requested in all)`);
    }
    this.reserved = {
      vms: this.reserved.vms + 1,
      cpu: this.reserved.cpu + spec.cpu,
      memory: this.reserved.memory + spec.memoryBytes,
      disk: this.reserved.disk + diskBytes,
    };
  }

  private release(spec: ValidSpec): void {
    this.reserved = {
      vms: this.reserved.vms - 1,
      cpu: this.reserved.cpu - spec.cpu,
      memory: this.reserved.memory - spec.memoryBytes,
      disk: this.reserved.disk - (spec.dataDiskBytes ?? 0),
    };
  }

  private async consoleTail(id: string): Promise<string> {
    const tail = await this.deps.consoles.readConsoleTail(id, 4096).catch(() => new Uint8Array(0));
    const lines = Buffer.from(tail).toString("utf8").split(/\r?\n/).map((line) => line.trim()).filter(Boolean);
    return lines.slice(-CONSOLE_TAIL_LINES).join(" | ");
  }

  private async sampleCounters(vm: Vm): Promise<void> {
    const { record } = vm;
    if (!vm.handle || (record.status !== "running" && record.status !== "paused")) return;
    const [block, net] = await Promise.all([
      vm.handle.blockCounters().catch(() => undefined),
      this.deps.network?.counters(record.id).catch(() => undefined),
    ]);
    const counters = vm.counters;
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
      vm.egressDrops = net.egressDrops;
    }
  }

  private view(vm: Vm): VmView {
    const { record } = vm;
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
      counters: { ...vm.counters },
      egressDrops: vm.egressDrops,
      backend: record.backend,
      faults: this.faults.list(record.id),
    };
  }
}

function sum(values: number[]): number {
  return values.reduce((total, value) => total + value, 0);
}

function unique<T>(values: T[]): T[] {
  return [...new Set(values)];
}
