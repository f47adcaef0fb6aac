// The QEMU backend: one detached qemu-system-x86_64 per VM (microvm machine), driven over QMP.
// Its process is spawned, adopted, watched and killed by the shared supervisor (worker/process/).
import { execFile } from "node:child_process";
import { createWriteStream } from "node:fs";
import { chmod, chown, open, stat, unlink } from "node:fs/promises";
import { createServer } from "node:net";
import { listenForVmm } from "./vmm-socket.js";
import { promisify } from "node:util";
import { basename, dirname, join } from "node:path";
import type { Logger } from "pino";
import { WorkerError, failedPrecondition, internal, resourceExhausted, unavailable } from "../../core/errors.js";
import { native } from "../../native.js";
import type {
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
import { isOurProcess, killStrayProcesses, processExe, tailLines } from "../../process/proc.js";
import {
  adoptSupervised,
  describeExit,
  findExecutable,
  keepAlive,
  spawnSupervised,
  type ProcessEnd,
  type Supervised,
} from "../../process/supervisor.js";
import { hostTscKhz, type Accelerator } from "../accel.js";
import { handOverBootFiles, workerSidePath } from "../boot-files.js";
import { DATA_DEVICE, DATA_FILE_NODE, DATA_NODE, DiskFaults } from "./disk-faults.js";
import { backend as qemu } from "./index.js";
import { NETDEV_ID, QemuNetDelay } from "./net-delay.js";
import { QmpClient, QmpConnectionError } from "./qmp.js";

export interface QemuBackendOptions {
  /** Name on PATH or absolute path. */
  qemuBinary?: string;
  accel: Accelerator;
  logger: Logger;
  /** For tsc_early_khz on TCG; defaults to the host's. */
  tscKhz?: number;
  /** QEMU -cpu model; "host" on KVM and "max" on TCG by default. */
  cpuModel?: string;
  /** From spawn to the QMP socket answering; past it the launch fails. */
  qmpConnectTimeoutMs?: number;
}

export const QMP_SOCKET = "qmp.sock";
const SNAPSHOT_TIMEOUT_MS = 120_000;
/** Where a snapshot's stream arrives from QEMU (saveSnapshot). */
const MIGRATE_SOCKET = "migrate.sock";
/** The first descriptor a child inherits after stdin, stdout and stderr (boot-files.ts passes from here too). */
const FIRST_PASSED_FD = 3;
const execFileAsync = promisify(execFile);
export const VMM_LOG = "vmm.log";
/** sun_path holds 108 bytes including the terminating NUL. */
const MAX_UNIX_SOCKET_PATH = 107;

type KernelFormat = "elf" | "bzimage" | "unknown";

/** ELF vmlinux (booted through its PVH note) or bzImage (booted by microvm's qboot firmware). */
export async function kernelFormat(path: string): Promise<KernelFormat> {
  const handle = await open(path, "r");
  try {
    const head = Buffer.alloc(0x206);
    const { bytesRead } = await handle.read(head, 0, head.length, 0);
    if (bytesRead >= 4 && head.subarray(0, 4).equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) return "elf";
    if (bytesRead >= 0x206 && head.subarray(0x202, 0x206).toString("latin1") === "HdrS") return "bzimage";
    return "unknown";
  } finally {
    await handle.close();
  }
}

/** QEMU option values separate on commas; a literal comma is written twice. */
function optionValue(value: string): string {
  return value.replaceAll(",", ",,");
}

/** QEMU's argument vector for one VM. No secret is ever on it: only paths. */
export function qemuArgv(
  spec: Omit<VmLaunchSpec, "vmDir" | "consolePath" | "restoreFrom"> & { consolePath?: string },
  options: { accel: Accelerator; qmpSocket?: string; cpuModel?: string; incomingFd?: number; tapFd?: number; sandbox?: boolean },
): string[] {
  const argv = [
    // The process name shows in /proc/<pid>/comm and cmdline: how an operator spots whose VMM it is.
    "-name",
    `pcr-${optionValue(spec.id)},process=pcr-${optionValue(spec.id)}`,
    "-M",
    "microvm,acpi=on,rtc=on,pcie=off",
    "-accel",
    options.accel,
    "-cpu",
    options.cpuModel ?? defaultCpuModel(options.accel),
    "-smp",
    String(spec.cpu),
    "-m",
    `${Math.ceil(spec.memoryBytes / (1024 * 1024))}M`,
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-no-reboot",
    "-kernel",
    spec.kernel,
    ...(spec.initrd ? ["-initrd", spec.initrd] : []),
    "-append",
    spec.cmdline,
    "-device",
    "virtio-rng-device",
  ];
  if (spec.consolePath) {
    // append=on: QEMU never truncates a console the core already holds lines of, and O_APPEND keeps
    // copy-then-truncate rotation safe (a renamed file would keep receiving output instead).
    argv.push("-chardev", `file,id=console,path=${optionValue(spec.consolePath)},append=on`, "-serial", "chardev:console");
  } else {
    argv.push("-serial", "stdio");
  }
  if (spec.image) {
    argv.push(
      "-drive",
      `id=root,file=${optionValue(spec.image)},format=raw,if=none,readonly=on`,
      "-device",
      "virtio-blk-device,drive=root",
    );
  }
  if (spec.dataDisk) {
    // Format node over a file node, so a blkdebug filter can be slid between them at runtime.
    argv.push(
      "-blockdev",
      `driver=file,node-name=${DATA_FILE_NODE},filename=${optionValue(spec.dataDisk.path)}`,
      "-blockdev",
      `driver=raw,node-name=${DATA_NODE},file=${DATA_FILE_NODE}`,
      "-device",
      `virtio-blk-device,drive=${DATA_NODE},id=${DATA_DEVICE}`,
    );
  }
  if (spec.net) {
    argv.push(
      "-netdev",
      // Caged, QEMU cannot open a TAP: the cage helper opened it, and it is inherited at tapFd.
      options.tapFd !== undefined
        ? `tap,id=${NETDEV_ID},fd=${options.tapFd}`
        : `tap,id=${NETDEV_ID},ifname=${optionValue(spec.net.tap)},script=no,downscript=no`,
      "-device",
      `virtio-net-device,netdev=${NETDEV_ID},mac=${spec.net.mac}`,
    );
  }
  if (spec.share) {
    argv.push(
      "-fsdev",
      `local,id=share,path=${optionValue(spec.share.hostDir)},security_model=none,readonly=on`,
      "-device",
      `virtio-9p-device,fsdev=share,mount_tag=${optionValue(spec.share.tag)}`,
    );
  }
  if (spec.agentSocket) {
    // A virtio-serial port: no guest network and no vhost-vsock needed. wait=off: QEMU starts
    // without a client; the worker connects when it likes, and again after a restart.
    argv.push(
      "-device",
      "virtio-serial-device,id=agentbus,max_ports=2",
      "-chardev",
      `socket,id=agent,path=${optionValue(spec.agentSocket)},server=on,wait=off`,
      "-device",
      "virtserialport,bus=agentbus.0,chardev=agent,name=pcr.agent",
    );
  }
  if (options.qmpSocket) argv.push("-qmp", `unix:${optionValue(options.qmpSocket)},server=on,wait=off`);
  // The saved state streams in from an inherited descriptor; the guest runs once it is loaded.
  if (options.incomingFd !== undefined) argv.push("-incoming", `fd:${options.incomingFd}`);
  // QEMU's own seccomp filter, on top of the cage's: no obsolete calls, no setuid, no fork or exec,
  // no scheduler or resource changes.
  if (options.sandbox) argv.push("-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
  return argv;
}

export function defaultCpuModel(accel: Accelerator): string {
  return accel === "kvm" ? "host" : "max";
}

/** microvm has no PIT calibration source under TCG: without the TSC frequency, boots hang at random. */
export function extraCmdlineFor(accel: Accelerator, tscKhz = hostTscKhz()): string[] {
  return accel === "tcg" && tscKhz ? [`tsc_early_khz=${tscKhz}`] : [];
}

export function createQemuBackend(options: QemuBackendOptions): VmmBackend {
  const qemuBinary = options.qemuBinary ?? "qemu-system-x86_64";
  const log = options.logger.child({ backend: "qemu" });
  const tscKhz = options.tscKhz ?? hostTscKhz();
  let resolved: Promise<string | undefined> | undefined;
  let versionText: Promise<string> | undefined;

  return {
    name: qemu.name,
    shareKind: qemu.shareKind,
    capabilities: { ...qemu.capabilities },

    extraCmdline() {
      return extraCmdlineFor(options.accel, tscKhz);
    },

    async launch(spec) {
      resolved ??= findExecutable(qemuBinary);
      const binary = await resolved;
      if (!binary) {
        resolved = undefined; // installed later? look again next time
        throw failedPrecondition(`${qemuBinary} not found; ${INSTALL_HINT}`);
      }
      const format = await kernelFormat(workerSidePath(spec.bootFds?.kernel, spec.kernel));
      if (format === "unknown") throw failedPrecondition(`kernel ${spec.kernel} is neither an ELF vmlinux nor a bzImage`);
      const qmpSocket = join(spec.vmDir, QMP_SOCKET);
      if (Buffer.byteLength(qmpSocket) > MAX_UNIX_SOCKET_PATH) {
        throw failedPrecondition(`control socket path ${qmpSocket} exceeds ${MAX_UNIX_SOCKET_PATH} bytes; use a shorter state directory`);
      }
      const vmLog = log.child({ vmId: spec.id });
      await unlink(qmpSocket).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "ENOENT") vmLog.warn({ err: err.message }, "cannot remove a stale QMP socket; QEMU may fail to listen");
      });
      if (spec.dataDisk) await createDataDisk(spec.dataDisk.path, spec.dataDisk.bytes, vmLog);
      const passed = handOverBootFiles(spec);
      const snapshot = spec.restoreFrom ? await openSnapshot(spec.restoreFrom) : undefined;
      const passFds = snapshot ? [...passed.fds, snapshot.fd] : passed.fds;
      const incomingFd = snapshot ? FIRST_PASSED_FD + passed.fds.length : undefined;
      // Caged: the TAP's descriptor comes after every passed one (the helper opens it).
      const tapFd = spec.cage && spec.net ? FIRST_PASSED_FD + passFds.length : undefined;
      const cage = spec.cage && {
        ...spec.cage,
        devices: [...spec.cage.devices, ...(options.accel === "kvm" ? ["/dev/kvm"] : [])],
        taps: spec.net && tapFd !== undefined ? [{ name: spec.net.tap, fd: tapFd }] : [],
      };
      // Root's, writable by the VMM's group: in its sticky directory, not the VMM's to replace.
      if (cage && spec.dataDisk) {
        await chown(spec.dataDisk.path, 0, cage.gid);
        await chmod(spec.dataDisk.path, 0o660);
      }
      const argv = qemuArgv(passed.spec, {
        accel: options.accel,
        qmpSocket,
        cpuModel: options.cpuModel,
        incomingFd,
        tapFd,
        sandbox: !!cage,
      });
      const logPath = join(spec.vmDir, VMM_LOG);
      const spawnedAt = performance.now();
      const vmm = await spawnSupervised(binary, argv, { logPath, passFds, install: INSTALL_HINT, cage }).finally(() => snapshot?.close());
      const record: VmmProcessRecord = {
        backend: qemu.name,
        pid: vmm.pid,
        startTime: vmm.startTime,
        bootId: vmm.bootId,
        controlSocket: qmpSocket,
        helpers: [],
      };
      const qmp = await connectWhileAlive(qmpSocket, vmm.ended, options.qmpConnectTimeoutMs ?? 10000).catch(async (err) => {
        const exit = await describeQemuExit(await vmm.kill(), logPath);
        if (err instanceof ExitedFirst) throw failedPrecondition(`QEMU exited at start: ${exit.description}`);
        throw internal(`QEMU control socket did not answer: ${(err as Error).message}`, err);
      });
      record.exe = (await processExe(vmm.pid)) || undefined; // QEMU itself answers now
      vmLog.debug({ pid: vmm.pid, qmpReadyMs: Math.round(performance.now() - spawnedAt), format }, "qemu started");
      return new QemuHandle(record, vmm, qmp, logPath, vmLog, snapshot !== undefined);
    },

    version() {
      versionText ??= (async () => {
        const binary = (await findExecutable(qemuBinary)) ?? qemuBinary;
        const { stdout } = await execFileAsync(binary, ["--version"], { timeout: 10_000 });
        return stdout.split("\n")[0]!.trim();
      })();
      versionText.catch(() => (versionText = undefined));
      return versionText;
    },

    async adopt(record, vmDir) {
      if (record.backend !== qemu.name) return undefined;
      if (!(await isOurProcess(record, vmDir))) return undefined;
      const vmm = await adoptSupervised(record);
      if (!vmm) return undefined;
      const logPath = join(vmDir, VMM_LOG);
      const vmLog = log.child({ vmId: basename(vmDir), pid: record.pid });
      let qmp: QmpClient | undefined;
      try {
        qmp = await connectWhileAlive(record.controlSocket, vmm.ended, 2000);
      } catch (err) {
        // Alive but deaf: keep it adopted (stop and kill still work by signal) rather than leak it.
        vmLog.warn({ err: (err as Error).message }, "adopted QEMU without a QMP connection");
      }
      return new QemuHandle(record, vmm, qmp, logPath, vmLog);
    },

    async killStrays(roots, keep) {
      const killed = await killStrayProcesses(roots, keep, /qemu/);
      if (killed.length) log.warn({ killed }, "killed QEMU processes no record accounts for");
      return killed.map(({ pid }) => `vmm:${pid}`);
    },
  };
}

/** The snapshot to restore, opened by the worker; NOT_FOUND-like failures say which file. */
async function openSnapshot(path: string) {
  try {
    return await open(path, "r");
  } catch (err) {
    throw failedPrecondition(`cannot open the snapshot ${path}: ${(err as Error).message}`);
  }
}

/** A shell word: QEMU's exec: migration runs its command through /bin/sh. */
/** Listens on `socketPath` for one connection and writes what it sends to `path`; `written` once it ended and all is on disk. */
async function receiveStream(socketPath: string, path: string): Promise<{ written: Promise<void>; close(): void }> {
  const server = createServer();
  await listenForVmm(server, socketPath);
  const written = new Promise<void>((resolve, reject) => {
    server.once("connection", (socket) => {
      server.close();
      const sink = createWriteStream(path, { mode: 0o600 });
      socket.once("error", reject);
      sink.once("error", reject);
      sink.once("finish", resolve);
      socket.pipe(sink);
    });
  });
  written.catch(() => undefined); // awaited by the caller once QEMU says it is done
  return { written, close: () => server.close() };
}

/** What to install when the binary is missing. */
const INSTALL_HINT = "install qemu-system-x86";

export class ExitedFirst extends Error {}

/**
 * A fresh data disk with its blocks reserved now: a host without room fails this create, never a
 * running guest's write. Where the filesystem cannot reserve (EOPNOTSUPP), a sparse file.
 */
async function createDataDisk(path: string, bytes: number, log: Logger): Promise<void> {
  const file = await open(path, "wx", 0o600);
  try {
    try {
      native().allocate(file.fd, bytes);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOSPC" || code === "EFBIG") throw resourceExhausted(`no room on the host for a ${bytes}-byte data disk`);
      if (code !== "EOPNOTSUPP") throw err;
      log.warn({ path }, "this filesystem cannot reserve blocks: the data disk is sparse");
      await file.truncate(bytes);
    }
  } catch (err) {
    await file.close();
    await unlink(path).catch((cleanup: Error) =>
      log.warn({ path, err: cleanup.message }, "cannot remove the data disk of a failed create"),
    );
    throw err;
  }
  await file.close();
}

/**
 * Connects to QEMU's QMP socket, retrying while QEMU has not created it yet. A QEMU that dies at
 * start may do so with our connection in its backlog (the connect is reset): while the process
 * is going away, every failure is retried, so the end is reported as ExitedFirst with its reason.
 */
export async function connectWhileAlive(
  path: string,
  exit: Promise<unknown>,
  timeoutMs: number,
  connect: (path: string, timeoutMs: number) => Promise<QmpClient> = (at, ms) => QmpClient.connect(at, ms),
): Promise<QmpClient> {
  let exited = false;
  void exit.then(() => (exited = true));
  const deadline = performance.now() + timeoutMs;
  for (let attempt = 0; ; attempt++) {
    if (exited) throw new ExitedFirst("exited");
    try {
      return await connect(path, Math.max(100, deadline - performance.now()));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const retryable = RETRYABLE_CONNECT.has(code ?? "") || err instanceof QmpConnectionError;
      if (!retryable || performance.now() > deadline) throw err;
    }
    // QEMU creates the socket within tens of milliseconds: short polls, no long sleeps.
    await Promise.race([new Promise((resolve) => setTimeout(resolve, attempt < 50 ? 5 : 20)), exit]);
  }
}

/** Not there yet (ENOENT, ECONNREFUSED), its backlog full (EAGAIN), or it died with us in it (ECONNRESET, EPIPE). */
const RETRYABLE_CONNECT = new Set(["ENOENT", "ECONNREFUSED", "EAGAIN", "ECONNRESET", "EPIPE"]);

/**
 * `shutdownReason` is from QMP's last SHUTDOWN event: QEMU exits 0 for a power-off and a reset
 * alike. An adopted QEMU has no exit status; a guest SHUTDOWN seen before it went means it exited
 * 0, as it would have told a parent.
 */
async function describeQemuExit(end: ProcessEnd, logPath: string, shutdownReason?: string): Promise<VmmExit> {
  const { signal } = end;
  const code = !end.known && !signal && shutdownReason ? 0 : end.code;
  if (signal === "SIGKILL") return { code, signal, description: "killed by SIGKILL" };
  if (code === 0 && !signal) {
    const why =
      shutdownReason === "guest-reset"
        ? "the guest rebooted, which -no-reboot turns into an exit (a kernel panic does that)"
        : "guest powered off";
    return { code, signal, description: `exited with code 0 (${why})` };
  }
  const tail = (await tailLines(logPath, 3)).join(" | ");
  return { code, signal, description: describeExit({ code, signal }, tail) };
}

interface QmpStatus {
  status: string;
  running: boolean;
}

class QemuHandle implements VmmHandle {
  readonly exited: Promise<VmmExit>;
  private exitValue: VmmExit | undefined;
  private stopping: Promise<VmmExit> | undefined;
  private killing: Promise<VmmExit> | undefined;
  /** Reason of the guest-initiated SHUTDOWN event, if one came. */
  private guestShutdown: string | undefined;

  constructor(
    readonly record: VmmProcessRecord,
    private readonly vmm: Supervised,
    private readonly qmp: QmpClient | undefined,
    private readonly logPath: string,
    private readonly log: Logger,
    /** Started from a snapshot saved paused: it loads paused, and waitRunning continues it. */
    private restored = false,
  ) {
    qmp?.on("event", (event) => {
      if (event.event === "SHUTDOWN" && event.data.guest === true) this.guestShutdown = String(event.data.reason);
      this.log.debug({ event: event.event, data: event.data }, "qmp event");
    });
    // An adopted QEMU's end is polled: the QMP socket closing is the hint that it is near.
    if (vmm.adopted) qmp?.once("close", () => vmm.hurry());
    this.exited = vmm.ended.then((end) => describeQemuExit(end, this.logPath, this.guestShutdown));
    void this.exited.then((exit) => {
      this.exitValue = exit;
      void this.qmp?.close();
    });
  }

  private get control(): QmpClient {
    if (this.exitValue) throw failedPrecondition(`the VMM has exited (${this.exitValue.description})`);
    if (!this.qmp?.isOpen) throw unavailable("no QMP connection to the VMM");
    return this.qmp;
  }

  private async execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
    try {
      return await this.control.execute<T>(command, args);
    } catch (err) {
      if (err instanceof WorkerError) throw err;
      if (this.exitValue) throw failedPrecondition(`the VMM has exited (${this.exitValue.description})`);
      throw unavailable((err as Error).message);
    }
  }

  async waitRunning(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new WorkerError("DEADLINE_EXCEEDED", `QEMU did not report the guest running within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    const exitedFirst = this.exited.then((exit) => {
      throw failedPrecondition(`QEMU exited before the guest ran: ${exit.description}`);
    });
    const poll = (async () => {
      // Without -S QEMU runs the guest from the start: the first answer is almost always "running".
      for (let attempt = 0; !done; attempt++) {
        const status = await this.execute<QmpStatus>("query-status").catch(async (err) => {
          // QMP closes just before the exit is known: let exitedFirst report it, with its description.
          if (this.exitValue || !this.qmp?.isOpen) await this.exited;
          if (this.exitValue) return undefined;
          throw err;
        });
        if (status?.running) return;
        if (this.restored && status?.status === "paused") {
          this.restored = false;
          await this.execute("cont");
          continue;
        }
        await new Promise((resolve) => setTimeout(resolve, attempt < 20 ? 10 : 50));
      }
    })();
    try {
      await keepAlive(Promise.race([poll, exitedFirst, timeout]));
    } finally {
      done = true;
      clearTimeout(timer);
      exitedFirst.catch(() => undefined); // the race above already saw whichever ended first
      poll.catch(() => undefined); // a query in flight when the race ended
    }
  }

  async runState(): Promise<GuestRunState> {
    if (this.exitValue) return "shutdown";
    // No answer is itself an answer here: "unknown", or "shutdown" when the exit came meanwhile.
    const status = await this.execute<QmpStatus>("query-status").catch(() => undefined);
    if (!status) return this.exitValue ? "shutdown" : "unknown";
    if (status.running) return "running";
    if (status.status === "shutdown" || status.status === "guest-panicked") return "shutdown";
    if (status.status === "paused" || status.status === "suspended") return "paused";
    return "unknown";
  }

  async blockCounters(): Promise<BlockCounters> {
    const devices = await this.execute<{ device?: string; qdev?: string; stats: Record<string, number> }[]>("query-blockstats");
    const root = devices.find((entry) => entry.device === "root");
    const stats = root?.stats ?? {};
    return {
      readBytes: BigInt(stats.rd_bytes ?? 0),
      writeBytes: BigInt(stats.wr_bytes ?? 0),
      readOps: BigInt(stats.rd_operations ?? 0),
      writeOps: BigInt(stats.wr_operations ?? 0),
    };
  }

  async pause(): Promise<void> {
    await this.execute("stop");
  }

  async reset(): Promise<void> {
    // -no-reboot turns every reset into an exit: allow this one reset, then restore.
    await this.execute("set-action", { reboot: "reset" });
    try {
      const reset = this.control.waitEvent("RESET", 5000);
      reset.catch(() => undefined); // awaited below, after system_reset; unhandled until then
      await this.execute("system_reset");
      await reset;
    } finally {
      // Left at "reset", the next reboot of the guest would not end the VM.
      await this.execute("set-action", { reboot: "shutdown" }).catch((err: Error) => {
        if (!this.exitValue)
          this.log.warn({ err: err.message }, "cannot restore -no-reboot after the reset fault: a guest reboot will not end this VM");
      });
    }
  }

  async powerOff(): Promise<void> {
    // `quit` is the pulled plug: no ACPI, QEMU exits 0 at once.
    const exited = this.exited;
    await this.execute("quit").catch((err) => {
      if (!this.exitValue && this.qmp?.isOpen) throw err; // the connection closing under the reply is expected
    });
    await keepAlive(exited);
  }

  private diskFaults: DiskFaults | undefined;

  async injectDiskErrors(faultId: string, rule: DiskErrorRule): Promise<void> {
    this.diskFaults ??= new DiskFaults((command, args) => this.execute(command, args), this.log);
    await this.diskFaults.inject(faultId, rule);
  }

  async clearDiskErrors(faultId: string): Promise<void> {
    await this.diskFaults?.clear(faultId, Boolean(this.exitValue));
  }

  private netDelay: QemuNetDelay | undefined;

  async delayNetwork(faultId: string, delay: NetworkDelay): Promise<void> {
    this.netDelay ??= new QemuNetDelay((command, args) => this.execute(command, args), dirname(this.logPath), this.log);
    await this.netDelay.start(faultId, delay.ms, delay.jitterMs, delay.cidrs);
  }

  async clearNetworkDelay(faultId: string): Promise<void> {
    await this.netDelay?.stop(faultId);
  }

  async resetFaults(): Promise<string[]> {
    const execute = (command: string, args?: Record<string, unknown>) => this.execute(command, args);
    return [...(await QemuNetDelay.reset(execute)), ...(await DiskFaults.reset(execute))];
  }

  async resume(): Promise<void> {
    await this.execute("cont");
  }

  /**
   * Pauses and streams the machine's state to `path` through a unix socket the worker listens on
   * in the VM's directory: a caged QEMU may neither spawn (`exec:`) nor open files outside it.
   */
  async saveSnapshot(path: string): Promise<{ bytes: number }> {
    await this.execute("stop");
    const socketPath = join(dirname(this.logPath), MIGRATE_SOCKET);
    const stream = await receiveStream(socketPath, path);
    try {
      await this.execute("migrate", { uri: `unix:${socketPath}` });
      const deadline = performance.now() + SNAPSHOT_TIMEOUT_MS;
      for (;;) {
        const info = await this.execute<{ status?: string; "error-desc"?: string }>("query-migrate");
        if (info.status === "completed") break;
        if (info.status === "failed" || info.status === "cancelled") {
          throw internal(`saving the snapshot failed: ${info["error-desc"] ?? info.status}`);
        }
        if (performance.now() > deadline) {
          await this.execute("migrate_cancel").catch(() => undefined);
          throw new WorkerError("DEADLINE_EXCEEDED", `saving the snapshot took longer than ${SNAPSHOT_TIMEOUT_MS} ms`);
        }
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      await stream.written;
    } finally {
      stream.close();
      await unlink(socketPath).catch(() => undefined);
    }
    return { bytes: await stat(path).then((info) => info.size) };
  }

  stop(graceMs: number): Promise<VmmExit> {
    this.stopping ??= keepAlive(
      (async () => {
        if (this.exitValue) return this.exitValue;
        try {
          await this.control.execute("system_powerdown");
        } catch (err) {
          this.log.debug({ err: (err as Error).message }, "system_powerdown failed; killing");
          return this.kill();
        }
        let timer: NodeJS.Timeout | undefined;
        const graceOver = new Promise<"grace over">((resolve) => (timer = setTimeout(() => resolve("grace over"), graceMs)));
        const first = await Promise.race([this.exited, graceOver]);
        clearTimeout(timer);
        if (first !== "grace over") return first;
        this.log.info({ graceMs }, "guest did not power off in time; killing");
        return this.kill();
      })(),
    );
    return this.stopping;
  }

  kill(): Promise<VmmExit> {
    this.killing ??= keepAlive(
      (async () => {
        if (this.exitValue) return this.exitValue;
        await this.vmm.kill();
        return this.exited;
      })(),
    );
    return this.killing;
  }

  /** Drops the QMP connection without touching the VMM (a worker handing it over to its successor). */
  async detach(): Promise<void> {
    await this.qmp?.close();
  }
}
