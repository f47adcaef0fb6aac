// In-memory fakes of the ports WorkerService needs besides the VMM (worker/vmm/fake/ is that one),
// each able to fail on demand, and a world that wires them into a real WorkerService.
import assert from "node:assert/strict";
import pino, { type Logger } from "pino";
import type { VmSpecInput } from "../../worker/core/api.js";
import { failedPrecondition, invalidArgument, WorkerError } from "../../worker/core/errors.js";
import type { FaultPorts } from "../../worker/core/faults.js";
import type {
  AgentConnection,
  AgentTransport,
  DirListing,
  FileChunk,
  FileStat,
  FileWrite,
  GuestFault,
  GuestFaultResult,
  OutputStream,
  Personalization,
  ProcessOutput,
  ProcessStart,
  ProcessStatus,
  AgentState,
  CagePort,
  CageRequest,
  CageSpec,
  ConsoleStore,
  ExecRequest,
  ExecResult,
  GuestAgentPort,
  RecordRepo,
  VmRecord,
} from "../../worker/ports/index.js";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { PoolConfig } from "../../worker/core/pools.js";
import { WorkerService, type ServiceLimits, type ServiceTimeouts } from "../../worker/core/service.js";
import { FileSnapshots } from "../../worker/state/snapshots.js";
import { MIB } from "../../worker/core/spec.js";
import type {
  BootFile,
  CpuThrottlePort,
  NetCounters,
  NetFault,
  NetFaultPort,
  NetworkPort,
  SecretsPort,
  StorePort,
  VmNetwork,
  GroupMembership,
} from "../../worker/ports/index.js";
import { createFakeBackend, type FakeBackend, FakeVmmHost, type FakeBackendOptions } from "../../worker/vmm/fake/index.js";

/** Makes a port's next calls of one method fail; every fake below has one. */
export class Failures {
  private readonly pending = new Map<string, { error: Error; skip: number }[]>();
  /** Calls made, by method, for assertions. */
  readonly calls = new Map<string, number>();

  /** The call of `method` after `skip` more successful ones throws `error`. */
  failNext(method: string, error: Error = new Error(`injected ${method} failure`), skip = 0): void {
    const list = this.pending.get(method) ?? [];
    list.push({ error, skip });
    this.pending.set(method, list);
  }

  /** Called first by each faked method. */
  check(method: string): void {
    this.calls.set(method, (this.calls.get(method) ?? 0) + 1);
    const next = this.pending.get(method)?.[0];
    if (!next) return;
    if (next.skip > 0) {
      next.skip--;
      return;
    }
    this.pending.get(method)!.shift();
    throw next.error;
  }

  count(method: string): number {
    return this.calls.get(method) ?? 0;
  }
}

// --- records -----------------------------------------------------------------------------------

export class MemoryRecordRepo implements RecordRepo, ConsoleStore {
  readonly failures = new Failures();
  /** What a restarted worker would find: JSON copies, as a file would hold them. */
  readonly saved = new Map<string, string>();
  readonly dirs = new Set<string>();
  readonly consoles = new Map<string, Buffer>();
  /** Called after each successful save with the record as saved (tests use it to act at a status). */
  onSave: ((record: VmRecord) => void) | undefined;

  vmDir(id: string): string {
    return `/fake/vms/${id}`;
  }

  consolePath(id: string): string {
    return `${this.vmDir(id)}/console.log`;
  }

  /** The fake backend's console hook: what a guest prints lands in its VM's console. */
  readonly appendConsole = (path: string, data: Uint8Array): void => {
    const id = path.split("/").at(-2)!;
    if (!this.dirs.has(id)) return; // the directory is gone: so is the file
    this.consoles.set(id, Buffer.concat([this.consoles.get(id) ?? Buffer.alloc(0), data]));
  };

  async createDir(id: string): Promise<string> {
    this.failures.check("createDir");
    if (this.dirs.has(id)) throw Object.assign(new Error(`EEXIST: ${id}`), { code: "EEXIST" });
    this.dirs.add(id);
    return this.vmDir(id);
  }

  async save(record: VmRecord): Promise<void> {
    this.failures.check("save");
    if (!this.dirs.has(record.id)) throw Object.assign(new Error(`ENOENT: no directory for ${record.id}`), { code: "ENOENT" });
    this.saved.set(record.id, JSON.stringify(record));
    this.onSave?.(JSON.parse(this.saved.get(record.id)!) as VmRecord);
  }

  async remove(id: string): Promise<void> {
    this.failures.check("remove");
    this.saved.delete(id);
    this.dirs.delete(id);
    this.consoles.delete(id);
  }

  async loadAll(): Promise<{ records: VmRecord[]; unreadable: string[] }> {
    const records: VmRecord[] = [];
    const unreadable: string[] = [];
    for (const id of this.dirs) {
      const text = this.saved.get(id);
      if (text === undefined) unreadable.push(id);
      else records.push(JSON.parse(text) as VmRecord);
    }
    return { records, unreadable };
  }

  /** A record as stored now. */
  record(id: string): VmRecord | undefined {
    const text = this.saved.get(id);
    return text === undefined ? undefined : (JSON.parse(text) as VmRecord);
  }

  async readConsole(id: string, offset: bigint, maxBytes: number): Promise<{ data: Uint8Array; nextOffset: bigint }> {
    const data = this.consoles.get(id) ?? Buffer.alloc(0);
    const from = Math.min(Number(offset), data.length);
    const chunk = data.subarray(from, from + maxBytes);
    return { data: chunk, nextOffset: BigInt(from + chunk.length) };
  }

  async readConsoleTail(id: string, maxBytes: number): Promise<Uint8Array> {
    const data = this.consoles.get(id) ?? Buffer.alloc(0);
    return data.subarray(Math.max(0, data.length - maxBytes));
  }

  async trimConsole(): Promise<void> {}
}

// --- network -----------------------------------------------------------------------------------

export class FakeNetwork implements NetworkPort {
  readonly failures = new Failures();
  readonly attached = new Map<string, { net: VmNetwork; allowedDomains: string[]; member?: GroupMembership }>();
  readonly counterValues = new Map<string, { net: NetCounters; egressDrops: bigint }>();
  inits = 0;
  private nextHost = 2;

  async init(existing: { vmId: string; net: VmNetwork; allowedDomains: string[] }[]): Promise<void> {
    this.failures.check("init");
    this.inits++;
    for (const entry of existing) this.attached.set(entry.vmId, { net: entry.net, allowedDomains: entry.allowedDomains });
  }

  validateAllowedDomains(allowedDomains: string[]): void {
    const bad = allowedDomains.find((domain) => !/^[a-z0-9.-]+$/i.test(domain));
    if (bad) throw invalidArgument(`allowedDomains: ${JSON.stringify(bad)} is not a domain`);
  }

  async attach(vmId: string, allowedDomains: string[], member?: GroupMembership): Promise<VmNetwork> {
    this.failures.check("attach");
    this.parked.delete(vmId);
    const host = this.nextHost++;
    const net: VmNetwork = {
      tap: `pcr-t${host}`,
      mac: `52:54:00:00:00:${(host % 256).toString(16).padStart(2, "0")}`,
      ip: `10.99.0.${host}`,
      prefixLength: 24,
      gateway: "10.99.0.1",
      dns: "10.99.0.1",
    };
    this.attached.set(vmId, { net, allowedDomains: [...allowedDomains], member });
    return net;
  }

  async detach(vmId: string): Promise<void> {
    this.failures.check("detach");
    this.attached.delete(vmId);
    this.parked.delete(vmId);
  }

  /** Pooled VMs' TAPs, not attached yet. */
  readonly parked = new Set<string>();

  async park(vmId: string): Promise<{ tap: string; mac: string }> {
    this.failures.check("park");
    this.parked.add(vmId);
    return { tap: `pcr-p${vmId.slice(-6)}`, mac: "02:70:63:72:00:00" };
  }

  async unpark(vmId: string): Promise<void> {
    this.parked.delete(vmId);
    this.attached.delete(vmId);
  }

  guestCmdline(net: VmNetwork): string[] {
    return [`pcr.ip=${net.ip}/${net.prefixLength}`, `pcr.gw=${net.gateway}`, `pcr.dns=${net.dns}`];
  }

  async counters(vmId: string): Promise<{ net: NetCounters; egressDrops: bigint }> {
    this.failures.check("counters");
    return this.counterValues.get(vmId) ?? { net: { rxBytes: 0n, txBytes: 0n, rxPackets: 0n, txPackets: 0n }, egressDrops: 0n };
  }

  async removeOrphans(known: Set<string>): Promise<string[]> {
    const removed = [...this.attached.keys(), ...this.parked].filter((id) => !known.has(id));
    for (const id of removed) {
      this.attached.delete(id);
      this.parked.delete(id);
    }
    return removed.map((id) => `tap:${id}`);
  }

  async close(): Promise<void> {}
}

// --- store -------------------------------------------------------------------------------------

export class FakeStore implements StorePort {
  readonly failures = new Failures();
  /** Paths "fetched" so far, and the boot files open now (fd -> path). */
  readonly fetched: string[] = [];
  readonly open = new Map<number, string>();
  /** Paths ensurePaths reports as fetched (the rest are already local). */
  readonly missing = new Set<string>();
  private nextFd = 100;

  async ensurePaths(paths: string[]): Promise<{ fetched: string[]; bytes: number; seconds: number }> {
    this.failures.check("ensurePaths");
    const fetched = paths.filter((path) => this.missing.delete(path));
    this.fetched.push(...fetched);
    return { fetched, bytes: fetched.length * 1000, seconds: 0.001 };
  }

  async openBootFile(_field: string, path: string): Promise<BootFile> {
    this.failures.check("openBootFile");
    const fd = this.nextFd++;
    this.open.set(fd, path);
    return { fd, realPath: path, close: async () => void this.open.delete(fd) };
  }
}

// --- secrets -----------------------------------------------------------------------------------

export class FakeSecrets implements SecretsPort {
  readonly failures = new Failures();
  readonly dirs = new Map<string, Map<string, string>>();

  async write(vmId: string, secrets: { name: string; value: Uint8Array }[]): Promise<string> {
    this.failures.check("write");
    this.dirs.set(vmId, new Map(secrets.map((secret) => [secret.name, Buffer.from(secret.value).toString("utf8")])));
    return `/fake/secrets/${vmId}`;
  }

  async wipe(vmId: string): Promise<void> {
    this.failures.check("wipe");
    this.dirs.delete(vmId);
  }

  async removeOrphans(known: Set<string>): Promise<string[]> {
    const removed = [...this.dirs.keys()].filter((id) => !known.has(id));
    for (const id of removed) this.dirs.delete(id);
    return removed.map((id) => `secrets:${id}`);
  }
}

// --- fault ports -------------------------------------------------------------------------------

export class FakeNetFaults implements NetFaultPort {
  readonly failures = new Failures();
  /** faultId -> where and what. */
  readonly active = new Map<string, { tap: string; fault: NetFault }>();
  /** No sch_netem here: delay is refused (the service then asks the VMM). */
  noNetem = false;
  resets = 0;

  async apply(faultId: string, tap: string, fault: NetFault): Promise<void> {
    this.failures.check("apply");
    if (this.noNetem && fault.kind !== "partition") throw failedPrecondition("sch_netem is not available on this host");
    this.active.set(faultId, { tap, fault });
  }

  async clear(faultId: string): Promise<void> {
    this.active.delete(faultId);
  }

  /** Every rule goes (the real port removes all its rules and the qdiscs on `taps`). */
  async reset(_taps: string[]): Promise<string[]> {
    this.resets++;
    const removed = [...this.active.keys()];
    this.active.clear();
    return removed.map((id) => `net-fault:${id}`);
  }
}

export class FakeCpuThrottle implements CpuThrottlePort {
  readonly active = new Map<string, { pid: number; percent: number }>();

  async throttle(faultId: string, pid: number, percent: number): Promise<void> {
    this.active.set(faultId, { pid, percent });
  }

  async clear(faultId: string): Promise<void> {
    this.active.delete(faultId);
  }

  async reset(): Promise<string[]> {
    const removed = [...this.active.keys()];
    this.active.clear();
    return removed.map((id) => `cpu:${id}`);
  }
}

/**
 * Cages in memory: a uid per VM from 40000 on, kept in `caged` until released; `cpu` holds the
 * cpuThrottle limit set on a VM's cgroup. `failNext` makes the next prepare fail.
 */
export class FakeCage implements CagePort {
  readonly caged = new Map<string, { uid: number; request: CageRequest }>();
  readonly cpu = new Map<string, number>();
  readonly released: string[] = [];
  failNext: WorkerError | undefined;

  async prepare(id: string, request: CageRequest): Promise<CageSpec> {
    const failure = this.failNext;
    this.failNext = undefined;
    if (failure) throw failure;
    const taken = new Set([...this.caged.values()].map((cage) => cage.uid));
    let uid = 40000;
    while (taken.has(uid)) uid++;
    this.caged.set(id, { uid, request });
    const spec = { helper: "/fake/pcr-cage", uid, gid: uid, root: `/fake/cage/${id}`, readOnly: request.storePaths };
    return { ...spec, readWrite: [request.vmDir], devices: [], cgroups: [`/fake/cgroup/${id}`], nofile: 4096 };
  }

  readonly sealed = new Set<string>();

  async seal(id: string): Promise<void> {
    this.sealed.add(id);
  }

  async release(id: string): Promise<void> {
    if (this.caged.delete(id)) this.released.push(id);
    this.cpu.delete(id);
  }

  async recover(live: { id: string; uid: number }[]): Promise<string[]> {
    const keep = new Set(live.map((vm) => vm.id));
    const removed = [...this.caged.keys()].filter((id) => !keep.has(id));
    for (const id of removed) this.caged.delete(id);
    for (const { id, uid } of live)
      this.caged.set(id, { uid, request: this.caged.get(id)?.request ?? { memoryBytes: 0, vmDir: "", storePaths: [] } });
    this.cpu.clear();
    return removed.map((id) => `cgroup:${id}`);
  }

  async limitCpu(id: string, percent: number | undefined): Promise<void> {
    if (percent === undefined) this.cpu.delete(id);
    else this.cpu.set(id, percent);
  }

  async describe(): Promise<string> {
    return "caged (fake)";
  }
}

/** Guest agents in memory: each connection is ready at once and runs `run` for every exec. */
export class FakeAgents implements GuestAgentPort {
  readonly connections = new Map<string, FakeAgentConnection>();
  run: (vmId: string, request: ExecRequest) => Promise<ExecResult> = async (_vmId, request) => ({
    exitCode: 0,
    signal: 0,
    timedOut: false,
    stdout: utf8(request.argv.join(" ")),
    stderr: new Uint8Array(),
    stdoutTruncated: false,
    stderrTruncated: false,
    durationMs: 1,
  });

  /** How new connections start: "connecting" ones wait for sayHello(). */
  startState: AgentState = "ready";

  connect(vmId: string, socketPath: string, transport: AgentTransport): AgentConnection {
    const connection = new FakeAgentConnection(vmId, socketPath, (request) => this.run(vmId, request));
    connection.transport = transport;
    connection.state = this.startState;
    this.connections.set(vmId, connection);
    return connection;
  }
}

export class FakeAgentConnection implements AgentConnection {
  state: AgentState = "ready";
  transport?: AgentTransport;
  readyAtMs = Date.now();
  readonly requests: ExecRequest[] = [];

  constructor(
    readonly vmId: string,
    readonly socketPath: string,
    private readonly run: (request: ExecRequest) => Promise<ExecResult>,
  ) {}

  /** The guest's files, by path. */
  readonly files = new Map<string, { data: Buffer; mode: number }>();
  /** Processes started: each prints its argv joined by spaces and exits 0 once stdin is closed. */
  readonly processes = new Map<number, { argv: string[]; stdout: Buffer; stdin: Buffer[]; running: boolean; signal: number }>();
  readonly faults: GuestFault[] = [];
  readonly personalized: Personalization[] = [];
  private nextPid = 100;

  private readonly readyWaiters = new Set<() => void>();

  async whenReady(timeoutMs: number): Promise<unknown> {
    if (this.state !== "ready") {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          this.readyWaiters.delete(wake);
          reject(new WorkerError("UNAVAILABLE", `the VM's agent did not say hello within ${timeoutMs} ms`));
        }, timeoutMs);
        const wake = () => {
          clearTimeout(timer);
          resolve();
        };
        this.readyWaiters.add(wake);
      });
    }
    return {};
  }

  /** The agent's hello, for a connection FakeAgents started as "connecting". */
  sayHello(): void {
    this.state = "ready";
    for (const wake of this.readyWaiters) wake();
    this.readyWaiters.clear();
  }

  async personalize(request: Personalization): Promise<{ interface: string }> {
    this.ready();
    this.personalized.push(request);
    return { interface: request.address ? "eth0" : "" };
  }

  async exec(request: ExecRequest): Promise<ExecResult> {
    this.ready();
    this.requests.push(request);
    return this.run(request);
  }

  async writeFile(request: FileWrite): Promise<{ size: number }> {
    this.ready();
    const old = request.truncate ? Buffer.alloc(0) : (this.files.get(request.path)?.data ?? Buffer.alloc(0));
    const size = Math.max(old.length, request.offset + request.data.length);
    const data = Buffer.alloc(size);
    old.copy(data);
    Buffer.from(request.data).copy(data, request.offset);
    this.files.set(request.path, { data, mode: this.files.get(request.path)?.mode ?? request.mode ?? 0o644 });
    return { size };
  }

  async readFile(path: string, offset: number, length: number): Promise<FileChunk> {
    const file = this.file(path);
    const data = file.data.subarray(offset, offset + length);
    return { data, size: file.data.length, eof: offset + data.length >= file.data.length };
  }

  async stat(path: string): Promise<FileStat> {
    const file = this.file(path);
    return { name: path.split("/").pop() ?? "", type: "file", size: file.data.length, mode: file.mode, mtimeMs: 0 };
  }

  async list(path: string, offset: number): Promise<DirListing> {
    this.ready();
    const prefix = path.endsWith("/") ? path : `${path}/`;
    const names = [...this.files.keys()].filter((name) => name.startsWith(prefix)).sort();
    const entries = await Promise.all(names.slice(offset).map((name) => this.stat(name)));
    return { entries, truncated: false };
  }

  async startProcess(request: ProcessStart): Promise<{ pid: number }> {
    this.ready();
    const pid = this.nextPid++;
    this.processes.set(pid, { argv: request.argv, stdout: Buffer.from(request.argv.join(" ")), stdin: [], running: true, signal: 0 });
    return { pid };
  }

  async readProcess(pid: number, stream: OutputStream, offset: number, maxBytes: number): Promise<ProcessOutput> {
    const process = this.process(pid);
    const all = stream === "stdout" ? process.stdout : Buffer.alloc(0);
    const data = all.subarray(offset, offset + maxBytes);
    return { data, offset, nextOffset: offset + data.length, eof: !process.running && offset + data.length >= all.length };
  }

  async writeProcess(pid: number, data: Uint8Array, close: boolean): Promise<void> {
    const process = this.process(pid);
    process.stdin.push(Buffer.from(data));
    if (close) process.running = false;
  }

  async signalProcess(pid: number, signal: number): Promise<void> {
    const process = this.process(pid);
    process.running = false;
    process.signal = signal;
  }

  async waitProcess(pid: number): Promise<ProcessStatus> {
    const process = this.process(pid);
    const exitCode = process.running || process.signal ? -1 : 0;
    return { pid, running: process.running, exitCode, signal: process.signal };
  }

  async resizeProcess(pid: number): Promise<void> {
    this.process(pid);
  }

  /** What fault() answers once it recorded the fault (default: nothing reached); a test may make it throw or wait. */
  faultAnswer: (fault: GuestFault) => Promise<GuestFaultResult> = async () => ({ pids: [], bytes: 0 });

  async fault(fault: GuestFault): Promise<GuestFaultResult> {
    this.ready();
    this.faults.push(fault);
    return this.faultAnswer(fault);
  }

  private ready(): void {
    if (this.state !== "ready") throw new WorkerError("UNAVAILABLE", `the VM's agent is ${this.state}`);
  }

  private file(path: string) {
    this.ready();
    const file = this.files.get(path);
    if (!file) throw new WorkerError("NOT_FOUND", `agent: ${path}: no such file or directory`);
    return file;
  }

  private process(pid: number) {
    this.ready();
    const process = this.processes.get(pid);
    if (!process) throw new WorkerError("NOT_FOUND", `agent: no process ${pid}`);
    return process;
  }

  close(): void {
    this.state = "closed";
  }
}

// --- the world ---------------------------------------------------------------------------------

export const LIMITS: ServiceLimits = {
  maxCpu: 8,
  minMemoryBytes: 64 * MIB,
  maxMemoryBytes: 4096 * MIB,
  maxAllowedDomains: 16,
  maxVms: 16,
  maxTotalCpu: 64,
  maxTotalMemoryBytes: 64 * 1024 * MIB,
  maxTotalDiskBytes: 1024 * MIB,
  maxTtlSeconds: 3600,
  maxReadBytes: 64 * 1024,
  consoleMaxBytes: 1024 * 1024,
};

export const TIMEOUTS: ServiceTimeouts = { bootMs: 5_000, stopGraceMs: 1_000, saveRetryMs: 1 };

const NIX_HASH = "0123456789abcdfghijklmnpqrsvwxyz"; // 32 characters of nix's base32 alphabet

export const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text);

export function specInput(overrides: Partial<VmSpecInput> = {}): VmSpecInput {
  return {
    hostname: "guest",
    kernel: `/nix/store/${NIX_HASH}-kernel/bzImage`,
    initrd: `/nix/store/${NIX_HASH}-initrd/initrd`,
    image: `/nix/store/${NIX_HASH}-image/root.img`,
    cmdline: "console=ttyS0",
    cpu: 1,
    memoryBytes: BigInt(256 * MIB),
    allowedDomains: [],
    ...overrides,
  };
}

export interface WorldOptions {
  limits?: Partial<ServiceLimits>;
  timeouts?: Partial<ServiceTimeouts>;
  backend?: FakeBackendOptions;
  /** false: a worker with networking disabled. */
  network?: boolean;
  faultPorts?: boolean;
  /** true: VMs get a guest agent channel (FakeAgents). */
  agents?: boolean;
  /** Where the service logs (default: silent, or PCR_TEST_LOG's level). */
  logger?: Logger;
  /** Warm pools; their snapshots go to a temporary directory the World keeps across restarts. */
  pools?: PoolConfig[];
  /** false: VMMs run uncaged (--no-cage). */
  cage?: boolean;
  /** How soon a pool that could not fill tries again (the service's default otherwise). */
  poolRetryMs?: number;
  /** A fleet member's host id (--host-id with --nats); absent: a lone worker. */
  hostId?: string;
}

/** A logger that keeps every line, parsed, for assertions. */
export function capturingLogger(): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: "debug" }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { logger, lines };
}

/** Every port a service uses, as fakes; restart() makes a second service over the same state. */
export class World {
  readonly host: FakeVmmHost;
  readonly records = new MemoryRecordRepo();
  readonly network = new FakeNetwork();
  readonly store = new FakeStore();
  readonly secrets = new FakeSecrets();
  readonly netFaults = new FakeNetFaults();
  readonly cpu = new FakeCpuThrottle();
  readonly agents = new FakeAgents();
  /** Kept across restarts, as the host's cgroups are. */
  readonly cage = new FakeCage();
  backend: FakeBackend;
  service: WorkerService;
  /** Where pool snapshots are saved: a fresh temporary directory per World with pools. */
  readonly snapshotsDir: string;
  readonly snapshots: FileSnapshots;

  constructor(private readonly options: WorldOptions = {}) {
    this.snapshotsDir = options.pools ? mkdtempSync(join(tmpdir(), "pcr-snapshots-")) : "/nonexistent";
    this.snapshots = new FileSnapshots(this.snapshotsDir);
    this.host = options.backend?.host ?? new FakeVmmHost();
    this.backend = this.newBackend();
    this.service = this.newService();
  }

  private newBackend(): FakeBackend {
    return createFakeBackend({ console: this.records.appendConsole, ...this.options.backend, host: this.host });
  }

  private newService(): WorkerService {
    const faults: FaultPorts | undefined = this.options.faultPorts === false ? undefined : { net: this.netFaults, cpu: this.cpu };
    return new WorkerService({
      backend: this.backend,
      network: this.options.network === false ? undefined : this.network,
      store: this.store,
      secrets: this.secrets,
      records: this.records,
      consoles: this.records,
      logger: this.options.logger ?? pino({ level: process.env.PCR_TEST_LOG ?? "silent" }),
      limits: { ...LIMITS, ...this.options.limits },
      timeouts: { ...TIMEOUTS, ...this.options.timeouts },
      strayRoots: ["/fake/vms", "/fake/secrets"],
      faults,
      agents: this.options.agents || this.options.pools ? this.agents : undefined,
      cage: this.options.cage === false ? undefined : this.cage,
      pools: this.options.pools ? { configs: this.options.pools, snapshots: this.snapshots, retryMs: this.options.poolRetryMs } : undefined,
      hostId: this.options.hostId,
    });
  }

  /** The worker process dies: its handles hear nothing more, its timers stop; the VMMs run on. */
  crashWorker(): void {
    this.service.detachAll();
    this.backend.disconnect();
  }

  /** Another worker starts over the same host and state; returns recover()'s result. */
  async startWorker(): Promise<Awaited<ReturnType<WorkerService["recover"]>>> {
    this.backend = this.newBackend();
    this.service = this.newService();
    return this.service.recover();
  }

  async restart(): Promise<Awaited<ReturnType<WorkerService["recover"]>>> {
    this.crashWorker();
    return this.startWorker();
  }

  /** The statuses of one VM's events, oldest first. */
  async events(vmId: string): Promise<string[]> {
    return (await this.service.events(0n, 1000, 0)).events.filter((event) => event.vmId === vmId).map((event) => event.status);
  }

  /** Nothing of this VM anywhere: no record, no directory, no attachment, no secrets, no VMM, no open boot file. */
  assertGone(vmId: string): void {
    assert.equal(this.records.saved.has(vmId), false, `no record of ${vmId}`);
    assert.equal(this.records.dirs.has(vmId), false, `no directory of ${vmId}`);
    assert.equal(this.network.attached.has(vmId), false, `no network attachment of ${vmId}`);
    assert.equal(this.secrets.dirs.has(vmId), false, `no secrets of ${vmId}`);
    assert.equal(this.cage.caged.has(vmId), false, `no cage (uid, cgroup) of ${vmId}`);
    assert.deepEqual(
      this.host
        .live()
        .filter((vm) => vm.spec.id === vmId)
        .map((vm) => vm.pid),
      [],
      `no VMM of ${vmId}`,
    );
    assert.equal(this.store.open.size, 0, "no boot file left open");
  }

  /** Nothing of any VM anywhere. */
  assertEmpty(): void {
    assert.deepEqual([...this.records.dirs], [], "no VM directory");
    assert.deepEqual([...this.network.attached.keys()], [], "no network attachment");
    assert.deepEqual([...this.secrets.dirs.keys()], [], "no secrets");
    assert.deepEqual(
      this.host.live().map((vm) => vm.spec.id),
      [],
      "no VMM",
    );
    assert.equal(this.store.open.size, 0, "no boot file left open");
  }
}

/**
 * Waits until `condition` holds, yielding to the event loop between checks (no timers: works with
 * mock timers too). Fails after `turns` turns, so a wrong expectation cannot hang the suite.
 */
export async function until(condition: () => boolean | Promise<boolean>, what: string, turns = 10_000): Promise<void> {
  for (let turn = 0; turn < turns; turn++) {
    if (await condition()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.fail(`never happened: ${what}`);
}
