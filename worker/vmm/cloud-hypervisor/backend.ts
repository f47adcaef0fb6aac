// Cloud Hypervisor backend: the VMM is started with nothing but its API socket, event monitor and
// log on the command line; the VM itself is described over the REST API (vm.create + vm.boot).
// The request bodies are built by pure functions so the contract test can check them against
// Cloud Hypervisor's OpenAPI file.
// Its processes (the VMM, virtiofsd) are supervised by worker/process/supervisor.ts.
import { execFile } from "node:child_process";
import { connect } from "node:net";
import { chmod, cp, mkdir, readdir, rename, rm, stat } from "node:fs/promises";
import { promisify } from "node:util";
import { existsSync } from "node:fs";
import { basename, join } from "node:path";
import type { Logger } from "pino";
import { WorkerError, failedPrecondition } from "../../core/errors.js";
import type {
  BlockCounters,
  CageSpec,
  GuestRunState,
  VmLaunchSpec,
  VmmBackend,
  VmmExit,
  VmmHandle,
  VmmProcessRecord,
} from "../../ports/index.js";
import { bootId, isOurProcess, killStrayProcesses, processExe, tailLines } from "../../process/proc.js";
import { adoptSupervised, describeExit, keepAlive, spawnSupervised, type ProcessEnd, type Supervised } from "../../process/supervisor.js";
import { handOverBootFiles } from "../boot-files.js";
import { ChApiClient, ChApiError, ChConnectionError, type ChVmState } from "./api.js";
import { tailEventFile, type ChEvent, type EventTail } from "./events.js";
import { backend as cloudHypervisor } from "./index.js";
import { prepareRestoreDir } from "./snapshot.js";
import { adoptVirtiofsd, startVirtiofsd, type VirtiofsdHandle } from "./virtiofsd.js";
import { ifMissing } from "../../missing.js";

export interface CloudHypervisorBackendOptions {
  /** Defaults to "cloud-hypervisor" on PATH. */
  binary?: string;
  /** Needed only for VMs with a share. */
  virtiofsdBinary?: string;
  logger: Logger;
  /** Bound on waiting for the API socket to answer vmm.ping after spawn. */
  apiReadyTimeoutMs?: number;
  /** Timeout of each ordinary API request. */
  requestTimeoutMs?: number;
  /** Timeout of vm.create + vm.boot (they load the kernel and set up devices). */
  bootRequestTimeoutMs?: number;
  /** How often waiters poll vm.info between events. */
  pollIntervalMs?: number;
}

/** Files of one VM inside its vmDir. */
export function chPaths(vmDir: string) {
  return {
    apiSocket: join(vmDir, "ch.sock"),
    events: join(vmDir, "events"),
    log: join(vmDir, "ch.log"),
    stdio: join(vmDir, "ch.stdio.log"),
    virtiofsSocket: join(vmDir, "virtiofs.sock"),
    virtiofsdLog: join(vmDir, "virtiofsd.log"),
    /** The snapshot as this VM restores it (snapshot.ts prepareRestoreDir). */
    restoreDir: join(vmDir, "restore"),
    /** Where vm.snapshot writes before the snapshot moves to the pool's store. */
    snapshotDir: join(vmDir, "snapshot"),
  };
}

/**
 * What a caged Cloud Hypervisor needs besides the VM's directory: /dev/kvm, and its TAP, which it
 * opens by name (/dev/net/tun; the helper hands the TAP to its uid and brings it up: both need
 * CAP_NET_ADMIN). A restore reads the pool's snapshot, which its restore directory links to.
 * Its own seccomp filter stays on (vmmArgv).
 */
export function chCage(cage: CageSpec, spec: VmLaunchSpec, kvm = existsSync(KVM_DEVICE)): CageSpec {
  return {
    ...cage,
    devices: [...cage.devices, ...(kvm ? [KVM_DEVICE] : []), ...(spec.net ? ["/dev/net/tun"] : [])],
    tapOwners: spec.net ? [spec.net.tap] : [],
    readOnly: [...cage.readOnly, ...(spec.restoreFrom ? [spec.restoreFrom] : [])],
  };
}

const KVM_DEVICE = "/dev/kvm";

/**
 * virtiofsd in the VM's cage: its uid and cgroups (its memory and tasks count against the VM's),
 * reading the host's programs and the share only (not the VM's boot files), writing only its
 * socket in the VM's directory; no devices, no TAP.
 */
export function virtiofsdCage(cage: CageSpec, shared: string): CageSpec {
  return {
    ...cage,
    readOnly: cage.readOnly.filter((path) => path === shared || !path.startsWith("/nix/store/")),
    devices: [],
    taps: [],
    tapOwners: [],
  };
}

/** Saving or restoring guest RAM through files: seconds per GiB on a slow disk. */
const SNAPSHOT_TIMEOUT_MS = 120_000;

/**
 * The VMM's argv: nothing about the VM, which is described over the API. `-v` (info level) makes
 * CH log how its control loop ended, the one place that tells a guest power-off from its other
 * exits with status 0 (see readChLog).
 */
export function vmmArgv(vmDir: string): string[] {
  const paths = chPaths(vmDir);
  return [
    "--api-socket",
    `path=${paths.apiSocket}`,
    "--event-monitor",
    `path=${paths.events}`,
    "--log-file",
    paths.log,
    "--seccomp",
    "true",
    "-v",
  ];
}

/** What Cloud Hypervisor's log says about how it ended. */
export interface ChLogFindings {
  /** The guest powered off: the guest exit event (ACPI S5 or a vCPU's shutdown exit). */
  guestExit: boolean;
  /** The exit event: a signal, a vCPU error, a thread panic; not the guest. */
  exitEvent: boolean;
  /** vmm.shutdown through the API. */
  apiShutdown: boolean;
  /** The last ERROR line's message. */
  lastError?: string;
}

/**
 * Reads CH's log lines (cloud-hypervisor/src/logger.rs default format "cloud-hypervisor: <t>s:
 * <thread> LEVEL:file:line -- message"). The control loop (vmm/src/lib.rs) logs "VM guest exit
 * event" when the guest powered off and "VM exit event" for everything else that ends it; both
 * go through vmm_shutdown with the same events and exit status 0, so only these lines tell.
 */
export function readChLog(lines: string[]): ChLogFindings {
  const findings: ChLogFindings = { guestExit: false, exitEvent: false, apiShutdown: false };
  for (const line of lines) {
    const match = /^cloud-hypervisor:.*?\b(ERROR|WARN|INFO|DEBUG|TRACE):\S* -- (.*)$/.exec(line);
    if (!match) continue;
    const [, level, message] = match as unknown as [string, string, string];
    if (message === "VM guest exit event" || message === "ACPI Shutdown signalled" || message === "VmExit::Shutdown")
      findings.guestExit = true;
    else if (message === "VM exit event") findings.exitEvent = true;
    else if (message === "API request event: VmmShutdown") findings.apiShutdown = true;
    if (level === "ERROR") findings.lastError = message;
  }
  return findings;
}

/** The subset of CH's VmConfig the worker sends (field names as in the OpenAPI file). */
export interface ChVmConfig {
  cpus: { boot_vcpus: number; max_vcpus: number };
  memory: { size: number; shared: boolean };
  payload: { kernel: string; initramfs?: string; cmdline: string };
  disks?: { path: string; readonly: boolean; id: string; image_type: "Raw" }[];
  net?: { tap: string; mac: string; id: string }[];
  fs?: { tag: string; socket: string; num_queues: number; queue_size: number; id: string }[];
  serial: { mode: "File"; file: string };
  console: { mode: "Off" };
  rng: { src: string };
  vsock?: { cid: number; socket: string };
}

/**
 * The guest's vsock CID. CH's vsock is its own userspace device behind a unix socket (no host
 * vhost-vsock), so CIDs need not differ between VMs; 3 is the first a guest may have.
 */
export const GUEST_CID = 3;

export const ROOT_DISK_ID = "disk0";

/** The body of PUT /vm.create for a launch spec. */
export function buildVmConfig(spec: VmLaunchSpec, opts: { virtiofsSocket?: string; rngSource?: string } = {}): ChVmConfig {
  if (spec.share && !opts.virtiofsSocket) throw new Error("a share needs the virtiofsd socket");
  return {
    cpus: { boot_vcpus: spec.cpu, max_vcpus: spec.cpu },
    // vhost-user devices (virtio-fs) need guest memory the backend process can map.
    memory: { size: spec.memoryBytes, shared: Boolean(spec.share) },
    payload: { kernel: spec.kernel, ...(spec.initrd ? { initramfs: spec.initrd } : {}), cmdline: spec.cmdline },
    // image_type: without it v53 probes the format and warns; the worker only boots raw images.
    ...(spec.image ? { disks: [{ path: spec.image, readonly: true, id: ROOT_DISK_ID, image_type: "Raw" }] } : {}),
    ...(spec.net ? { net: [{ tap: spec.net.tap, mac: spec.net.mac, id: "net0" }] } : {}),
    ...(spec.share ? { fs: [{ tag: spec.share.tag, socket: opts.virtiofsSocket!, num_queues: 1, queue_size: 1024, id: "fs0" }] } : {}),
    serial: { mode: "File", file: spec.consolePath },
    console: { mode: "Off" },
    rng: { src: opts.rngSource ?? "/dev/urandom" },
    // The guest agent's channel: CH serves this socket and proxies each connection to a guest port.
    ...(spec.agentSocket ? { vsock: { cid: GUEST_CID, socket: spec.agentSocket } } : {}),
  };
}

/**
 * `booted`: vm.boot succeeded once. CH's vm.info then says Created after a vm.shutdown (vm_shutdown
 * takes the VM away and keeps only its config, vmm/src/lib.rs vm_info), never Shutdown.
 */
export function guestRunState(state: ChVmState, booted = false): GuestRunState {
  switch (state) {
    case "Running":
      return "running";
    case "Paused":
    case "BreakPoint":
      return "paused";
    case "Shutdown":
      return "shutdown";
    case "Created":
      return booted ? "shutdown" : "unknown"; // before the boot: not a guest state the core knows
  }
}

/** What an event-monitor event says about the guest, if anything. */
export function eventRunState(event: ChEvent): GuestRunState | undefined {
  const key = `${event.source}:${event.event}`;
  if (key === "vm:booted" || key === "vm:resumed" || key === "vm:rebooted") return "running";
  // A restored VM stands paused (vm.rs: a VM made from a snapshot starts Paused) until resumed.
  if (key === "vm:paused" || key === "vm:restored") return "paused";
  if (key === "vm:shutdown" || key === "vm:deleted" || key === "vmm:shutdown") return "shutdown";
  return undefined;
}

/** The state-changing calls whose errors reach the caller: an error answer says the state did not allow it. */
const STATE_CHANGES = new Set(["vm.pause", "vm.resume"]);

/** API and connection errors as WorkerErrors, keeping CH's own message. */
export function mapChError(err: unknown, what: string): WorkerError {
  if (err instanceof WorkerError) return err;
  if (err instanceof ChApiError) {
    // 404: no VM was created. A state change refused (pause twice, power button on a stopped VM)
    // is a 500 in Cloud Hypervisor, never a 405: on those calls it means the VM's state.
    const code = err.status === 404 || (err.status === 500 && STATE_CHANGES.has(what)) ? "FAILED_PRECONDITION" : "INTERNAL";
    return new WorkerError(code, `${what}: cloud-hypervisor answered HTTP ${err.status}${err.chain ? `: ${err.chain}` : ""}`, {
      cause: err,
    });
  }
  if (err instanceof ChConnectionError) {
    const code = /no answer within/.test(err.message) ? "DEADLINE_EXCEEDED" : "UNAVAILABLE";
    return new WorkerError(code, `${what}: ${err.message}`, { cause: err });
  }
  return new WorkerError("INTERNAL", `${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}

/** Removes an API socket nobody listens on (left by a crash); refuses one that is in use. */
export async function clearStaleApiSocket(socketPath: string): Promise<void> {
  if (existsSync(socketPath)) {
    const listening = await new Promise<boolean>((resolve) => {
      const socket = connect(socketPath);
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (listening) throw new WorkerError("FAILED_PRECONDITION", `a process already serves the API socket ${socketPath}`);
    await rm(socketPath, { force: true });
  }
  await rm(`${socketPath}.lock`, { force: true });
}

export function createCloudHypervisorBackend(options: CloudHypervisorBackendOptions): VmmBackend {
  const binary = options.binary ?? "cloud-hypervisor";
  const logger = options.logger.child({ backend: "cloud-hypervisor" });
  const requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
  const bootRequestTimeoutMs = options.bootRequestTimeoutMs ?? 30_000;
  const apiReadyTimeoutMs = options.apiReadyTimeoutMs ?? 5_000;
  const pollIntervalMs = options.pollIntervalMs ?? 50;

  async function launch(spec: VmLaunchSpec): Promise<VmmHandle> {
    // Disk faults need QEMU's blkdebug, so the writable data disk exists only there for now.
    if (spec.dataDisk)
      throw failedPrecondition("dataDiskBytes is not supported on cloud-hypervisor (its disk faults are not either); use the QEMU backend");
    const paths = chPaths(spec.vmDir);
    const log = logger.child({ vmId: spec.id });
    await clearStaleApiSocket(paths.apiSocket);
    // Old events would replay a previous VM's states into this one.
    await rm(paths.events, { force: true });

    let virtiofsd: VirtiofsdHandle | undefined;
    if (spec.share) {
      if (!options.virtiofsdBinary)
        throw new WorkerError("FAILED_PRECONDITION", "a share needs virtiofsd, and no virtiofsd binary is configured");
      virtiofsd = await startVirtiofsd({
        binary: options.virtiofsdBinary,
        socketPath: paths.virtiofsSocket,
        sharedDir: spec.share.hostDir,
        readOnly: true,
        logger: log,
        logPath: paths.virtiofsdLog,
        cage: spec.cage && virtiofsdCage(spec.cage, spec.share.hostDir),
      });
    }

    const passed = handOverBootFiles(spec);
    let vmm: Supervised;
    try {
      vmm = await spawnSupervised(binary, vmmArgv(spec.vmDir), {
        logPath: paths.stdio,
        passFds: passed.fds,
        install: "install the cloud-hypervisor release binary",
        cage: spec.cage && chCage(spec.cage, spec),
      });
    } catch (err) {
      await virtiofsd?.kill();
      throw err;
    }
    log.info({ pid: vmm.pid, apiSocket: paths.apiSocket }, "cloud-hypervisor started");
    const record: VmmProcessRecord = {
      backend: cloudHypervisor.name,
      pid: vmm.pid,
      startTime: vmm.startTime,
      bootId: vmm.bootId,
      controlSocket: paths.apiSocket,
      helpers: virtiofsd ? [{ pid: virtiofsd.pid, startTime: virtiofsd.startTime }] : [],
    };
    const client = new ChApiClient(paths.apiSocket, requestTimeoutMs);
    const handle = new ChVmHandle(record, vmm, client, paths, virtiofsd, log, { pollIntervalMs, bootRequestTimeoutMs }, 0);

    try {
      await handle.waitForApi(apiReadyTimeoutMs);
      record.exe = (await processExe(vmm.pid)) || undefined; // the program that answers the API
      const config = buildVmConfig(passed.spec, { virtiofsSocket: virtiofsd?.socketPath });
      if (spec.restoreFrom) {
        const sourceUrl = await prepareRestoreDir(spec.restoreFrom, paths.restoreDir, config);
        // Restored VMs come back paused; resume: the guest runs on as it did when saved.
        await handle.guard(() => client.restore({ source_url: sourceUrl, resume: true }, SNAPSHOT_TIMEOUT_MS), "vm.restore");
      } else {
        await handle.guard(() => client.createVm(config, bootRequestTimeoutMs), "vm.create");
        await handle.guard(() => client.bootVm(bootRequestTimeoutMs), "vm.boot");
      }
      handle.booted = true;
    } catch (err) {
      await handle.kill();
      throw err;
    }
    return handle;
  }

  async function adopt(record: VmmProcessRecord, vmDir: string): Promise<VmmHandle | undefined> {
    if (record.backend !== cloudHypervisor.name) return undefined;
    const paths = chPaths(vmDir);
    const log = logger.child({ vmId: basename(vmDir), pid: record.pid });
    const vmm = (await isOurProcess(record, vmDir)) ? await adoptSupervised(record) : undefined;
    if (!vmm) {
      // Another boot's pids name unrelated processes: leave them be.
      if (record.bootId !== undefined && record.bootId !== bootId()) return undefined;
      // The VM is gone; its helpers have nothing left to serve.
      for (const helper of record.helpers) await (await adoptSupervised(helper))?.kill();
      return undefined;
    }
    const helper = record.helpers[0];
    const virtiofsd = helper ? await adoptVirtiofsd(helper.pid, helper.startTime, paths.virtiofsSocket) : undefined;
    const client = new ChApiClient(record.controlSocket, requestTimeoutMs);
    // What the events file holds now happened under the previous worker (a reboot fault's
    // vm:rebooting among it): history, not to be acted on again.
    const liveFrom = (await ifMissing(stat(paths.events), undefined))?.size ?? 0;
    const handle = new ChVmHandle(record, vmm, client, paths, virtiofsd, log, { pollIntervalMs, bootRequestTimeoutMs }, liveFrom);
    handle.booted = true; // a recorded VMM was booted before the record was saved
    try {
      const info = await client.info();
      log.info({ state: info.state }, "cloud-hypervisor re-adopted");
    } catch (err) {
      // Alive but not answering: keep the handle so the core can still stop or kill it.
      log.warn({ err: (err as Error).message }, "re-adopted cloud-hypervisor does not answer vm.info");
    }
    return handle;
  }

  let versionText: Promise<string> | undefined;
  return {
    name: cloudHypervisor.name,
    shareKind: cloudHypervisor.shareKind,
    capabilities: { ...cloudHypervisor.capabilities },
    extraCmdline: () => [],
    launch,
    adopt,
    version() {
      versionText ??= promisify(execFile)(binary, ["--version"], { timeout: 10_000 }).then(({ stdout }) => stdout.split("\n")[0]!.trim());
      versionText.catch(() => (versionText = undefined));
      return versionText;
    },
    async killStrays(roots, keep) {
      const killed = await killStrayProcesses(roots, keep, /cloud-hypervisor|virtiofsd/);
      if (killed.length) logger.warn({ killed }, "killed VMM and virtiofsd processes no record accounts for");
      return killed.map(({ pid, argv0 }) => `${argv0.includes("virtiofsd") ? "virtiofsd" : "vmm"}:${pid}`);
    },
  };
}

class ChVmHandle implements VmmHandle {
  readonly exited: Promise<VmmExit>;
  private hasExited = false;
  /** We sent vm.shutdown/vmm.shutdown: a clean exit is then ours, not the guest's power-off. */
  private tornDownByUs = false;
  /** vm.boot succeeded: from then on a VM in state Created is one that was shut down. */
  booted = false;
  /** Reboots we asked for (the reboot fault) whose vm:rebooting event has not come yet. */
  private expectedReboots = 0;
  /** The guest rebooted by itself (reset, triple fault, panic=-1): the VM's end, as with QEMU's -no-reboot. */
  private guestRebooted = false;
  /** The powerOff fault pulled the plug (vmm.shutdown): the VM's end, as QEMU's `quit` is. */
  private pluggedByUs = false;
  /** The process is gone (its exit is being described). */
  private processGone = false;
  private lastEventState: GuestRunState | undefined;
  private readonly tail: EventTail;
  private readonly wakers = new Set<() => void>();
  private stopping: Promise<VmmExit> | undefined;
  private killing: Promise<VmmExit> | undefined;

  /** `liveFrom`: where in the events file this worker's history starts (an adopted VMM's earlier events are not acted on). */
  constructor(
    readonly record: VmmProcessRecord,
    private readonly vmm: Supervised,
    private readonly client: ChApiClient,
    private readonly paths: ReturnType<typeof chPaths>,
    private readonly virtiofsd: VirtiofsdHandle | undefined,
    private readonly log: Logger,
    private readonly timing: { pollIntervalMs: number; bootRequestTimeoutMs: number },
    liveFrom: number,
  ) {
    this.tail = tailEventFile(paths.events, (event, historic) => this.onEvent(event, historic), {
      onError: (err) => log.warn({ err: err.message }, "event monitor stream unreadable"),
      liveFrom,
    });
    const processGone = vmm.ended.then(async (end) => {
      this.processGone = true;
      if (end.known) await this.tail.flush(); // a vm:rebooting not read yet still tells a guest reboot
      return this.describeExit(end);
    });
    this.exited = processGone.then(async (exit) => {
      this.hasExited = true;
      this.wake();
      this.log.info({ exit: exit.description }, "cloud-hypervisor exited");
      // Everything tied to the VM's life goes with it.
      await this.virtiofsd?.kill();
      await this.tail.close();
      await this.client.close();
      await rm(this.paths.apiSocket, { force: true });
      return exit;
    });
  }

  /** Polls vmm.ping until the API answers; fails early if the process dies. */
  async waitForApi(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let lastError = "";
    for (;;) {
      if (this.hasExited)
        throw new WorkerError("FAILED_PRECONDITION", `cloud-hypervisor failed to start: ${(await this.exited).description}`);
      try {
        const ping = await this.client.ping(Math.max(100, Math.min(1000, deadline - Date.now())));
        this.log.debug({ version: ping.version }, "cloud-hypervisor API up");
        return;
      } catch (err) {
        if (err instanceof ChApiError) throw mapChError(err, "vmm.ping");
        lastError = (err as Error).message;
      }
      if (Date.now() > deadline) {
        throw new WorkerError("DEADLINE_EXCEEDED", `cloud-hypervisor API did not answer within ${timeoutMs} ms (${lastError})`);
      }
      await this.sleepOrWake(20);
    }
  }

  /** Awaits an API call; if the VMM dies meanwhile, reports the exit rather than a socket error. */
  async guard<T>(call: () => Promise<T>, what: string): Promise<T> {
    if (this.hasExited) throw new WorkerError("FAILED_PRECONDITION", `the VMM has exited (${(await this.exited).description})`);
    try {
      return await call();
    } catch (err) {
      if (err instanceof ChConnectionError) {
        const exit = await this.exitedWithin(200);
        if (exit)
          throw new WorkerError("FAILED_PRECONDITION", `cloud-hypervisor exited during ${what}: ${exit.description}`, { cause: err });
      }
      throw mapChError(err, what);
    }
  }

  async waitRunning(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.hasExited)
        throw new WorkerError("FAILED_PRECONDITION", `cloud-hypervisor exited before the guest ran: ${(await this.exited).description}`);
      if (this.lastEventState === "running") return;
      try {
        const info = await this.client.info(Math.max(100, Math.min(2000, deadline - Date.now())));
        if (info.state === "Running") return;
      } catch (err) {
        if (err instanceof ChApiError && err.status !== 404) throw mapChError(err, "vm.info");
      }
      if (Date.now() > deadline) throw new WorkerError("DEADLINE_EXCEEDED", `guest not running within ${timeoutMs} ms`);
      await this.sleepOrWake(this.timing.pollIntervalMs);
    }
  }

  async runState(): Promise<GuestRunState> {
    if (this.hasExited) return "shutdown";
    try {
      return guestRunState((await this.client.info()).state, this.booted);
    } catch {
      return this.hasExited ? "shutdown" : "unknown";
    }
  }

  async blockCounters(): Promise<BlockCounters> {
    const counters = await this.guard(() => this.client.counters(), "vm.counters");
    const totals: BlockCounters = { readBytes: 0n, writeBytes: 0n, readOps: 0n, writeOps: 0n };
    for (const [id, values] of Object.entries(counters)) {
      // Disks are the devices with block counters (net devices have rx_/tx_ ones).
      if (!id.startsWith("disk") && values.read_ops === undefined) continue;
      totals.readBytes += values.read_bytes ?? 0n;
      totals.writeBytes += values.write_bytes ?? 0n;
      totals.readOps += values.read_ops ?? 0n;
      totals.writeOps += values.write_ops ?? 0n;
    }
    return totals;
  }

  async pause(): Promise<void> {
    await this.guard(() => this.client.pause(), "vm.pause");
  }

  async resume(): Promise<void> {
    await this.guard(() => this.client.resume(), "vm.resume");
  }

  /** vm.snapshot needs a paused VM and an existing directory; it writes config.json, state.json and memory-ranges. */
  /**
   * vm.snapshot needs a paused VM and an existing directory; it writes config.json, state.json and
   * memory-ranges. They are written in the VM's own directory (the only one a caged VMM may write
   * to), then moved to `path`.
   */
  async saveSnapshot(path: string): Promise<{ bytes: number }> {
    if ((await this.runState()) !== "paused") await this.pause();
    const dir = this.paths.snapshotDir;
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir);
    await chmod(dir, 0o777); // inside the VM's directory, which only root and the VMM's group enter
    await this.guard(() => this.client.snapshot({ destination_url: `file://${dir}` }, SNAPSHOT_TIMEOUT_MS), "vm.snapshot");
    await rename(dir, path).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== "EXDEV") throw err;
      await cp(dir, path, { recursive: true });
      await rm(dir, { recursive: true, force: true });
    });
    await chmod(path, 0o700);
    let bytes = 0;
    for (const name of await readdir(path)) bytes += (await stat(join(path, name))).size;
    return { bytes };
  }

  /**
   * The reboot fault: Cloud Hypervisor reboots in-process (vm.reboot takes the path a guest reset
   * takes, vmm/src/lib.rs vm_reboot) and answers once the new VM booted. Its vm:rebooting event is
   * ours, so it is expected and does not end the VM. CH emits that event before anything can fail,
   * so the expectation stays even when the call fails.
   */
  async reset(): Promise<void> {
    this.expectedReboots++;
    await this.guard(() => this.client.reboot(this.timing.bootRequestTimeoutMs), "vm.reboot");
  }

  /** The powerOff fault: vmm.shutdown stops the vCPUs and the VMM without asking the guest; CH exits 0. */
  async powerOff(): Promise<void> {
    this.pluggedByUs = true;
    await this.guard(() => this.client.shutdownVmm(), "vmm.shutdown").catch((err: unknown) => {
      if (!this.processGone) throw err; // the answer may be lost to the exit
    });
    await keepAlive(this.exited);
  }

  stop(graceMs: number): Promise<VmmExit> {
    this.stopping ??= keepAlive(this.stopNow(graceMs));
    return this.stopping;
  }

  private async stopNow(graceMs: number): Promise<VmmExit> {
    if (this.hasExited) return this.exited;
    const deadline = Date.now() + graceMs;
    try {
      await this.client.powerButton();
      // CH exits by itself once the guest is off. Nothing tells that sooner: vm.info never says
      // Shutdown (the VM is gone, then so is the config) and the last events may never be written.
      await this.exitedWithin(Math.max(0, deadline - Date.now()));
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, "power button not delivered");
    }
    if (!this.hasExited) {
      // Orderly teardown; each step may fail when the VM is already further along.
      this.tornDownByUs = true;
      for (const step of [() => this.client.shutdownVm(2000), () => this.client.deleteVm(2000), () => this.client.shutdownVmm(2000)]) {
        if (this.hasExited) break;
        await step().catch((err: Error) => this.log.debug({ err: err.message }, "teardown step failed"));
      }
      if (!(await this.exitedWithin(2000))) return this.kill();
    }
    return this.exited;
  }

  kill(): Promise<VmmExit> {
    this.killing ??= keepAlive(
      (async () => {
        await this.vmm.kill();
        await this.virtiofsd?.kill();
        return this.exited;
      })(),
    );
    return this.killing;
  }

  /** The exit, if it happens within `ms`. */
  private async exitedWithin(ms: number): Promise<VmmExit | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)));
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private onEvent(event: ChEvent, historic: boolean): void {
    const state = eventRunState(event);
    this.log.debug({ source: event.source, event: event.event, historic }, "cloud-hypervisor event");
    if (event.source === "vm" && event.event === "rebooting" && !historic) this.onRebooting();
    if (state) {
      this.lastEventState = state;
      this.wake();
    }
  }

  /**
   * Cloud Hypervisor has no -no-reboot: a guest reset, a triple fault or a panic with panic=-1
   * reboots the VM inside the same process. The worker treats that as the guest's end, as QEMU's
   * -no-reboot does, and shuts the VMM down (the request waits until the reboot is through).
   */
  private onRebooting(): void {
    if (this.expectedReboots > 0) {
      this.expectedReboots--;
      return;
    }
    if (this.guestRebooted || this.processGone || this.tornDownByUs) return;
    this.guestRebooted = true;
    this.log.info("the guest rebooted: shutting cloud-hypervisor down (as -no-reboot does on QEMU)");
    this.stopping ??= keepAlive(this.endAfterGuestReboot());
  }

  private async endAfterGuestReboot(): Promise<VmmExit> {
    await this.client
      .shutdownVmm(this.timing.bootRequestTimeoutMs)
      .catch((err: Error) => this.log.debug({ err: err.message }, "vmm.shutdown after the guest rebooted failed"));
    return (await this.exitedWithin(5000)) ?? this.kill();
  }

  private wake(): void {
    for (const waker of this.wakers) waker();
    this.wakers.clear();
  }

  private sleepOrWake(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
    });
  }

  private async describeExit(end: ProcessEnd): Promise<VmmExit> {
    const { code, signal } = end;
    if (signal) {
      const hint = signal === "SIGKILL" && !end.killedByUs ? " (not sent by the worker: out of memory?)" : "";
      return { code, signal, description: `killed by ${signal}${hint}` };
    }
    if (!end.known) return { code, signal, description: "cloud-hypervisor exited (re-adopted process: exit status unknown)" };
    if (code === 0 && this.guestRebooted && !this.tornDownByUs) {
      return {
        code,
        signal,
        description: "exited with code 0 (the guest rebooted, which ends the VM as QEMU's -no-reboot does; a kernel panic does that)",
      };
    }
    if (code === 0 && this.tornDownByUs) return { code, signal, description: "exited with code 0" };
    if (code === 0 && this.pluggedByUs) return { code, signal, description: "exited with code 0 (hard power-off: vmm.shutdown)" };
    if (code === 0) {
      // Exit status 0 and the final events are the same for every way CH ends (and those events
      // may be lost: CH exits without waiting for its event monitor): its log tells them apart.
      const log = readChLog(await tailLines(this.paths.log, 400));
      if (log.guestExit) return { code, signal, description: "exited with code 0 (guest powered off)" };
      const why = log.exitEvent
        ? `its exit event ("VM exit event")` +
          (log.lastError ? ` after the error "${log.lastError}"` : ": SIGTERM or SIGINT, or a failure it did not log")
        : log.apiShutdown
          ? "vmm.shutdown through its API, not sent by the worker"
          : `no line in ${this.paths.log} says why (neither "VM guest exit event" nor "VM exit event")` +
            (log.lastError ? `; last error: ${log.lastError}` : "");
      return { code, signal, description: `exited with code 0, but the guest did not power off: ${why}`, failed: true };
    }
    const last = (await tailLines(this.paths.stdio, 1))[0] ?? (await tailLines(this.paths.log, 1))[0];
    return { code, signal, description: describeExit(end, last) };
  }
}
