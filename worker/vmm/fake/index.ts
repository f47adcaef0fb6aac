// An in-memory VMM backend: no process, no QEMU, no file. It keeps the contract the real backends
// keep (test/vmm/conformance.ts checks that): launch gives a handle whose guest boots, runs, pauses,
// reports counters and exits once, stop() asks the guest to power off and kills after the grace,
// kill() is immediate, both memoized; adopt() finds a VMM that outlived its worker by pid and start
// time. The host it "runs" on (FakeVmmHost) outlives any one backend instance, so a second backend
// over the same host is a restarted worker. Knobs for tests: boot delay or manual boot, a launch
// that fails, a VMM that exits during boot, a guest that ignores the power button, a crash, a
// guest power-off, the fault operations each switched off.
import { randomUUID } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { failedPrecondition, unavailable, WorkerError } from "../../core/errors.js";
import type {
  BackendCapabilities,
  BackendName,
  BlockCounters,
  DiskErrorRule,
  GuestRunState,
  NetworkDelay,
  VmLaunchSpec,
  VmmBackend,
  VmmExit,
  VmmHandle,
  VmmProcessRecord,
} from "../../ports/index.js";
import type { BackendModule } from "../module.js";

/** Not in registry.ts's list: tests and benches pass `backend` (below) or build a FakeBackend. */
export const FAKE_BACKEND: BackendName = "fake";
/** What a fake snapshot file starts with; anything else does not load. */
export const FAKE_SNAPSHOT_MAGIC = "FAKESNAP1\n";

/** What the next launch does; every field optional. */
export interface LaunchBehaviour {
  /** launch() rejects with this, and no process exists. */
  fail?: Error;
  /** Milliseconds until the guest runs, or "manual": it runs when the test calls `vm.boot()`. */
  boot?: number | "manual";
  /** The VMM exits while the guest boots, before it runs (waitRunning then rejects). */
  exitDuringBoot?: { code?: number | null; signal?: string | null; message?: string };
  /** The guest does not answer the ACPI power button: stop() kills after the grace. */
  ignoresPowerButton?: boolean;
}

export interface FakeBackendOptions {
  /** The machine the VMMs "run" on; share one between backends to model a worker restart. */
  host?: FakeVmmHost;
  name?: BackendName;
  shareKind?: "9p" | "virtiofs";
  /** From launch to the guest running; 0 (the default): on the next turn of the event loop. */
  bootDelayMs?: number;
  /** From the power button to the guest's power-off; 0 (the default): on the next turn. */
  acpiDelayMs?: number;
  /** Bytes the guest reads from its root disk while it boots (0 when it has no image). */
  bootReadBytes?: number;
  extraCmdline?: string[];
  /** What it declares it can serve; everything by default. */
  capabilities?: Partial<BackendCapabilities>;
  /** What version() answers (default "fake 1"). */
  version?: string;
  /** Fault operations the handles offer; all of them unless switched off here. */
  faults?: { reset?: boolean; powerOff?: boolean; diskErrors?: boolean; netDelay?: boolean; resetFaults?: boolean };
  /** Receives what the guest prints, by console path (nothing is written anywhere otherwise). */
  console?: (path: string, data: Uint8Array) => void;
}

type GuestState = "booting" | "running" | "paused" | "exited";

/** The backend's options each guest needs, defaults applied. */
type GuestOptions = Required<Pick<FakeBackendOptions, "bootDelayMs" | "acpiDelayMs" | "bootReadBytes">> &
  Pick<FakeBackendOptions, "console">;

/** The fake machine: a process table that outlives any backend instance. */
export class FakeVmmHost {
  readonly bootId = randomUUID();
  private nextPid = 40_000;
  private readonly processes = new Map<number, FakeVm>();
  private readonly spawnWaiters = new Set<(vm: FakeVm) => void>();

  spawn(backend: BackendName, spec: VmLaunchSpec, behaviour: LaunchBehaviour, options: GuestOptions): FakeVm {
    const pid = this.nextPid++;
    const vm = new FakeVm(pid, String(1_000_000 + pid), backend, spec, behaviour, options);
    this.processes.set(pid, vm);
    for (const wake of [...this.spawnWaiters]) wake(vm);
    return vm;
  }

  process(pid: number): FakeVm | undefined {
    return this.processes.get(pid);
  }

  /** Every VMM ever started here, oldest first. */
  all(): FakeVm[] {
    return [...this.processes.values()];
  }

  /** VMMs still running (the leak check: after a rollback or a delete, none of that VM's). */
  live(): FakeVm[] {
    return this.all().filter((vm) => !vm.exit);
  }

  /** The VMM of this VM id, the newest if there were several. */
  byId(vmId: string): FakeVm | undefined {
    return this.all()
      .filter((vm) => vm.spec.id === vmId)
      .at(-1);
  }

  /** Resolves with the next VMM spawned that matches (or one already spawned that does). */
  nextSpawn(match: (vm: FakeVm) => boolean = () => true): Promise<FakeVm> {
    const existing = this.all().find((vm) => match(vm) && !vm.seen);
    if (existing) {
      existing.seen = true;
      return Promise.resolve(existing);
    }
    return new Promise((resolve) => {
      const wake = (vm: FakeVm) => {
        if (vm.seen || !match(vm)) return;
        vm.seen = true;
        this.spawnWaiters.delete(wake);
        resolve(vm);
      };
      this.spawnWaiters.add(wake);
    });
  }
}

/** One fake VMM process and its guest. Tests reach it through `host` to make things happen. */
export class FakeVm {
  state: GuestState = "booting";
  exit: VmmExit | undefined;
  readonly exited: Promise<VmmExit>;
  readonly counters: BlockCounters = { readBytes: 0n, writeBytes: 0n, readOps: 0n, writeOps: 0n };
  readonly diskErrors = new Map<string, DiskErrorRule>();
  readonly netDelays = new Map<string, NetworkDelay>();
  /** Hard resets (the reboot fault) so far. */
  resets = 0;
  /** Times the power button was pressed. */
  powerButtonPresses = 0;
  ignoresPowerButton: boolean;
  /** Taken by host.nextSpawn(). */
  seen = false;
  private resolveExit!: (exit: VmmExit) => void;
  private waiters = new Set<() => void>();
  private bootTimer: NodeJS.Timeout | undefined;
  private pausedFrom: "booting" | "running" = "running";

  constructor(
    readonly pid: number,
    readonly startTime: string,
    readonly backend: BackendName,
    readonly spec: VmLaunchSpec,
    private readonly behaviour: LaunchBehaviour,
    private readonly options: GuestOptions,
  ) {
    this.ignoresPowerButton = behaviour.ignoresPowerButton ?? false;
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
    this.print(`fake-guest: booting ${spec.id}\n`);
    this.scheduleBoot();
  }

  /** After a reset the guest boots again with the backend's delay; the launch's knobs applied once. */
  private scheduleBoot(afterReset = false): void {
    clearTimeout(this.bootTimer);
    const delay = afterReset ? this.options.bootDelayMs : (this.behaviour.boot ?? this.options.bootDelayMs);
    if (delay === "manual") return;
    const done = () => {
      this.bootTimer = undefined;
      if (this.state !== "booting" && !(this.state === "paused" && this.pausedFrom === "booting")) return;
      if (this.behaviour.exitDuringBoot && !afterReset) {
        const { code = 1, signal = null, message = "fake VMM failed during boot" } = this.behaviour.exitDuringBoot;
        this.print(`${message}\n`);
        this.end({ code, signal, description: describe(code, signal, message) });
      } else {
        this.boot();
      }
    };
    if (delay <= 0) setImmediate(done);
    else this.bootTimer = setTimeout(done, delay);
  }

  /** The guest reaches running (for `boot: "manual"`, or at once). No-op unless booting. */
  boot(): void {
    const pausedInBoot = this.state === "paused" && this.pausedFrom === "booting";
    if (this.state !== "booting" && !pausedInBoot) return;
    clearTimeout(this.bootTimer);
    if (this.spec.image && this.options.bootReadBytes > 0) {
      this.counters.readBytes += BigInt(this.options.bootReadBytes);
      this.counters.readOps += BigInt(Math.ceil(this.options.bootReadBytes / 4096));
    }
    // Paused halfway: it is running once resumed.
    if (pausedInBoot) this.pausedFrom = "running";
    else this.setState("running");
    this.print("fake-guest: ready\n");
  }

  pause(): void {
    if (this.state !== "running" && this.state !== "booting") return;
    this.pausedFrom = this.state;
    this.setState("paused");
  }

  resume(): void {
    if (this.state === "paused") this.setState(this.pausedFrom);
  }

  /** Block I/O the guest did (the counters only grow). */
  addIo(io: Partial<BlockCounters>): void {
    this.counters.readBytes += io.readBytes ?? 0n;
    this.counters.writeBytes += io.writeBytes ?? 0n;
    this.counters.readOps += io.readOps ?? 0n;
    this.counters.writeOps += io.writeOps ?? 0n;
  }

  /** The guest prints a line on its serial console. */
  print(text: string): void {
    this.options.console?.(this.spec.consolePath, new TextEncoder().encode(text));
  }

  /** The VMM dies on its own: exit code 1 by default, or the signal given. */
  crash(how: { code?: number | null; signal?: string | null; message?: string } = {}): void {
    const signal = how.signal ?? null;
    const code = signal ? null : (how.code ?? 1);
    const message = how.message ?? (signal ? "" : "fake VMM crashed");
    this.end({ code, signal, description: describe(code, signal, message) });
  }

  /** The guest powers itself off (`poweroff` inside it): the VMM exits 0. */
  powerOffGuest(): void {
    this.end({ code: 0, signal: null, description: "exited with code 0 (guest powered off)" });
  }

  /** Ends the process; only the first end counts. */
  end(exit: VmmExit): void {
    if (this.exit) return;
    clearTimeout(this.bootTimer);
    this.exit = exit;
    this.setState("exited");
    this.resolveExit(exit);
  }

  setState(state: GuestState): void {
    if (this.state === "exited") return;
    this.state = state;
    const waiters = this.waiters;
    this.waiters = new Set();
    for (const wake of waiters) wake();
  }

  /** Resolves at the next state change. */
  changed(): Promise<void> {
    return new Promise((resolve) => this.waiters.add(resolve));
  }

  pressPowerButton(): void {
    this.powerButtonPresses++;
    // A paused or still booting guest cannot see the button (as under QEMU).
    if (this.ignoresPowerButton || this.state !== "running") return;
    const off = () => this.powerOffGuest();
    if (this.options.acpiDelayMs <= 0) setImmediate(off);
    else setTimeout(off, this.options.acpiDelayMs);
  }

  hardReset(): void {
    this.resets++;
    this.setState("booting");
    this.print("fake-guest: reset\n");
    this.scheduleBoot(true);
  }
}

function describe(code: number | null, signal: string | null, message: string): string {
  const what = signal ? `killed by ${signal}` : code === null ? "exited (status unknown)" : `exited with code ${code}`;
  return message ? `${what}: ${message}` : what;
}

/** A live fake VMM seen through one backend instance (launched or adopted). */
class FakeHandle implements VmmHandle {
  readonly exited: Promise<VmmExit>;
  private stopping: Promise<VmmExit> | undefined;
  private killing: Promise<VmmExit> | undefined;
  reset?: () => Promise<void>;
  powerOff?: () => Promise<void>;
  injectDiskErrors?: (faultId: string, rule: DiskErrorRule) => Promise<void>;
  clearDiskErrors?: (faultId: string) => Promise<void>;
  delayNetwork?: (faultId: string, delay: NetworkDelay) => Promise<void>;
  clearNetworkDelay?: (faultId: string) => Promise<void>;
  resetFaults?: () => Promise<string[]>;

  constructor(
    readonly vm: FakeVm,
    readonly record: VmmProcessRecord,
    private readonly owner: FakeBackend,
    faults: NonNullable<FakeBackendOptions["faults"]>,
  ) {
    // A disconnected backend is a worker that is gone: it hears of no exit any more.
    this.exited = new Promise((resolve) => void vm.exited.then((exit) => !owner.disconnected && resolve(exit)));
    if (faults.reset !== false) this.reset = () => this.doReset();
    if (faults.powerOff !== false) this.powerOff = () => this.doPowerOff();
    if (faults.diskErrors !== false) {
      this.injectDiskErrors = async (faultId, rule) => {
        this.alive();
        if (!vm.spec.dataDisk) throw failedPrecondition("the VM has no data disk to fail; create it with dataDiskBytes > 0");
        const active = [...vm.diskErrors.keys()][0];
        if (active) throw failedPrecondition(`disk fault ${active} is already active; clear it first`);
        vm.diskErrors.set(faultId, {
          op: rule.op,
          errno: rule.errno,
          afterOps: rule.afterOps,
          probabilityPercent: rule.probabilityPercent,
        });
      };
      this.clearDiskErrors = async (faultId) => void vm.diskErrors.delete(faultId);
    }
    if (faults.netDelay !== false) {
      this.delayNetwork = async (faultId, delay) => {
        this.alive();
        if (!vm.spec.net) throw failedPrecondition("the VM has no network device to delay");
        vm.netDelays.set(faultId, { ...delay });
      };
      this.clearNetworkDelay = async (faultId) => void vm.netDelays.delete(faultId);
    }
    if (faults.resetFaults !== false) {
      this.resetFaults = async () => {
        this.alive();
        const removed = [
          ...[...vm.diskErrors.keys()].map((id) => `disk-errors:${id}`),
          ...[...vm.netDelays.keys()].map((id) => `net-delay:${id}`),
        ];
        vm.diskErrors.clear();
        vm.netDelays.clear();
        return removed;
      };
    }
  }

  /** Throws as a real backend does once the VMM is gone (or this worker is). */
  private alive(): void {
    if (this.owner.disconnected) throw unavailable("no connection to the VMM (fake backend disconnected)");
    if (this.vm.exit) throw failedPrecondition(`the VMM has exited (${this.vm.exit.description})`);
  }

  async waitRunning(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        timedOut = true;
        resolve();
      }, timeoutMs);
    });
    try {
      for (;;) {
        if (this.vm.exit) throw failedPrecondition(`the fake VMM exited before the guest ran: ${this.vm.exit.description}`);
        if (this.vm.state === "running") return;
        if (timedOut) throw new WorkerError("DEADLINE_EXCEEDED", `the fake VMM did not report the guest running within ${timeoutMs} ms`);
        await Promise.race([this.vm.changed(), timeout]);
      }
    } finally {
      clearTimeout(timer);
    }
  }

  async runState(): Promise<GuestRunState> {
    if (this.vm.exit) return "shutdown";
    if (this.owner.disconnected) return "unknown";
    return this.vm.state === "running" ? "running" : this.vm.state === "paused" ? "paused" : "unknown";
  }

  async blockCounters(): Promise<BlockCounters> {
    this.alive();
    return { ...this.vm.counters };
  }

  async pause(): Promise<void> {
    this.alive();
    this.vm.pause();
  }

  async saveSnapshot(path: string): Promise<{ bytes: number }> {
    this.alive();
    this.vm.pause();
    const text = `${FAKE_SNAPSHOT_MAGIC}${JSON.stringify({ memoryBytes: this.vm.spec.memoryBytes })}\n`;
    await writeFile(path, text);
    return { bytes: Buffer.byteLength(text) };
  }

  async resume(): Promise<void> {
    this.alive();
    this.vm.resume();
  }

  stop(graceMs: number): Promise<VmmExit> {
    this.stopping ??= (async () => {
      if (this.vm.exit) return this.vm.exit;
      this.vm.pressPowerButton();
      let timer: NodeJS.Timeout | undefined;
      const graceOver = new Promise<"grace over">((resolve) => (timer = setTimeout(() => resolve("grace over"), graceMs)));
      const first = await Promise.race([this.vm.exited, graceOver]);
      clearTimeout(timer);
      if (first !== "grace over") return first;
      return this.kill();
    })();
    return this.stopping;
  }

  kill(): Promise<VmmExit> {
    this.killing ??= (async () => {
      this.vm.end({ code: null, signal: "SIGKILL", description: "killed by SIGKILL" });
      return this.vm.exited;
    })();
    return this.killing;
  }

  private async doReset(): Promise<void> {
    this.alive();
    this.vm.hardReset();
  }

  private async doPowerOff(): Promise<void> {
    this.alive();
    // The pulled plug: no ACPI, the VMM exits 0 at once (QEMU's `quit`, CH's vmm.shutdown).
    this.vm.end({ code: 0, signal: null, description: "exited with code 0 (hard power-off)" });
    await this.vm.exited;
  }
}

/** The fake backend; `host` and the knobs below are for tests. */
export class FakeBackend implements VmmBackend {
  readonly name: BackendName;
  readonly shareKind: "9p" | "virtiofs";
  readonly capabilities: BackendCapabilities;
  readonly host: FakeVmmHost;
  /** Set by disconnect(): this "worker" is gone, its handles hear nothing more. */
  disconnected = false;
  /** Launch calls so far, failed ones included. */
  launches = 0;
  /** Launches that restored a snapshot. */
  restores = 0;
  private readonly queued: LaunchBehaviour[] = [];

  constructor(private readonly options: FakeBackendOptions = {}) {
    this.name = options.name ?? FAKE_BACKEND;
    this.shareKind = options.shareKind ?? backend.shareKind;
    this.capabilities = { ...backend.capabilities, ...options.capabilities };
    this.host = options.host ?? new FakeVmmHost();
  }

  extraCmdline(): string[] {
    return [...(this.options.extraCmdline ?? [])];
  }

  /** What the next launch (the next one after those already queued) does. */
  nextLaunch(behaviour: LaunchBehaviour): this {
    this.queued.push(behaviour);
    return this;
  }

  /** The next launch rejects (FAILED_PRECONDITION unless another error is given). */
  failNextLaunch(error: Error = failedPrecondition("fake VMM refused to start")): this {
    return this.nextLaunch({ fail: error });
  }

  /** Models this worker going away: its handles stop reporting; the VMMs run on. */
  disconnect(): void {
    this.disconnected = true;
  }

  async version(): Promise<string> {
    return this.options.version ?? "fake 1";
  }

  async launch(spec: VmLaunchSpec): Promise<VmmHandle> {
    this.launches++;
    const behaviour = this.queued.shift() ?? {};
    if (this.disconnected) throw unavailable("fake backend disconnected");
    if (behaviour.fail) throw behaviour.fail;
    if (spec.restoreFrom) {
      // As QEMU does with a stream it cannot load: the VMM exits at start.
      const text = await readFile(spec.restoreFrom, "utf8").catch(() => "");
      if (!text.startsWith(FAKE_SNAPSHOT_MAGIC)) throw failedPrecondition(`fake VMM cannot load the snapshot ${spec.restoreFrom}`);
      this.restores++;
    }
    const vm = this.host.spawn(this.name, spec, behaviour, {
      bootDelayMs: this.options.bootDelayMs ?? 0,
      acpiDelayMs: this.options.acpiDelayMs ?? 0,
      bootReadBytes: this.options.bootReadBytes ?? 64 * 1024,
      console: this.options.console,
    });
    const record: VmmProcessRecord = {
      backend: this.name,
      pid: vm.pid,
      startTime: vm.startTime,
      bootId: this.host.bootId,
      controlSocket: `${spec.vmDir}/fake.sock`,
      helpers: [],
    };
    return new FakeHandle(vm, record, this, this.options.faults ?? {});
  }

  async adopt(record: VmmProcessRecord, vmDir: string): Promise<VmmHandle | undefined> {
    if (record.backend !== this.name || this.disconnected) return undefined;
    if (record.bootId !== undefined && record.bootId !== this.host.bootId) return undefined;
    const vm = this.host.process(record.pid);
    if (!vm || vm.exit || vm.startTime !== record.startTime || vm.backend !== this.name || vm.spec.vmDir !== vmDir) return undefined;
    return new FakeHandle(vm, { ...record, helpers: [...record.helpers] }, this, this.options.faults ?? {});
  }

  async killStrays(roots: string[], keep: Set<number>): Promise<string[]> {
    const killed: string[] = [];
    for (const vm of this.host.live()) {
      if (vm.backend !== this.name || keep.has(vm.pid)) continue;
      if (!roots.some((root) => vm.spec.vmDir === root || vm.spec.vmDir.startsWith(`${root.replace(/\/$/, "")}/`))) continue;
      vm.end({ code: null, signal: "SIGKILL", description: "killed by SIGKILL" });
      killed.push(`vmm:${vm.pid}`);
    }
    return killed;
  }
}

export function createFakeBackend(options: FakeBackendOptions = {}): FakeBackend {
  return new FakeBackend(options);
}

/** The fake's descriptor (module.ts): no binary, always usable, never preferred over a real VMM. */
export const backend = {
  name: FAKE_BACKEND,
  binaries: [],
  install: "nothing (in memory; for tests and benches)",
  preference: 0,
  capabilities: { dataDisk: true, agent: "virtio-serial", snapshot: true },
  shareKind: "9p",
  detect: () => ({ usable: true, accel: "kvm", why: "runs anywhere (in memory)" }),
  create: async () => createFakeBackend(),
} satisfies BackendModule;
