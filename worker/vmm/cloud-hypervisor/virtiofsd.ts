// One virtiofsd per VM, serving the VM's share over a vhost-user socket. Two implementations exist
// with different flags: QEMU's C virtiofsd (/usr/lib/qemu/virtiofsd, Debian 12) and the Rust
// virtiofsd (production). The flavour is read from `--help` once per binary. Its process is
// supervised like the VMM's (worker/process/supervisor.ts).
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { rm, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { promisify } from "node:util";
import type { Logger } from "pino";
import { WorkerError } from "../../core/errors.js";
import type { CageSpec, VmmExit } from "../../ports/index.js";
import { tailLines } from "../../process/proc.js";
import { adoptSupervised, describeExit, once, spawnSupervised, type ProcessEnd, type Supervised } from "../../process/supervisor.js";

export type VirtiofsdStyle = "c" | "rust";

export interface VirtiofsdOptions {
  binary: string;
  socketPath: string;
  sharedDir: string;
  readOnly: boolean;
  logger: Logger;
  /** Defaults to `<dir of socket>/virtiofsd.log`. */
  logPath?: string;
  /** How long to wait for the socket to appear. */
  readyTimeoutMs?: number;
  /** Skips the `--help` probe. */
  flavour?: VirtiofsdFlavour;
  /** The VM's cage (ch/backend.ts virtiofsdCage): virtiofsd runs in it, as the VM's uid. */
  cage?: CageSpec;
}

export interface VirtiofsdHandle {
  readonly pid: number;
  readonly startTime: string;
  readonly socketPath: string;
  readonly exited: Promise<VmmExit>;
  /** SIGKILL and wait. Idempotent. */
  kill(): Promise<VmmExit>;
}

const execFileAsync = promisify(execFile);
const flavourCache = new Map<string, Promise<VirtiofsdFlavour>>();

export interface VirtiofsdFlavour {
  style: VirtiofsdStyle;
  /** Whether it can export read-only (Rust virtiofsd with --readonly; never the C one). */
  readOnlyFlag: boolean;
}

/** Reads `--help` once per binary: "rust" when it mentions --shared-dir, else "c" (QEMU's -o source=). */
export function detectVirtiofsd(binary: string): Promise<VirtiofsdFlavour> {
  let flavour = flavourCache.get(binary);
  if (!flavour) {
    flavour = execFileAsync(binary, ["--help"], { timeout: 5000 })
      .then(({ stdout, stderr }) => stdout + stderr)
      // Some versions exit non-zero on --help: the text is what matters.
      .catch((err: { stdout?: string; stderr?: string; code?: string }) => {
        if (err.code === "ENOENT") throw err;
        return `${err.stdout ?? ""}${err.stderr ?? ""}`;
      })
      .then((text): VirtiofsdFlavour => {
        const style = text.includes("--shared-dir") ? "rust" : "c";
        return { style, readOnlyFlag: style === "rust" && text.includes("--readonly") };
      });
    flavour.catch(() => flavourCache.delete(binary)); // callers get the error; not cached
    flavourCache.set(binary, flavour);
  }
  return flavour;
}

/**
 * The argv for each implementation. The C one has no read-only switch: it is never asked for one.
 * Caged, the Rust one's own namespace sandbox is off: unprivileged it cannot build one, and the
 * cage is one (a mount namespace holding only the share and its socket's directory); its seccomp
 * filter stays on (its default, `--seccomp kill`).
 */
export function virtiofsdArgs(style: VirtiofsdStyle, socketPath: string, sharedDir: string, readOnly: boolean, caged = false): string[] {
  if (style === "rust") {
    return [
      "--socket-path",
      socketPath,
      "--shared-dir",
      sharedDir,
      "--cache",
      "never",
      "--sandbox",
      caged ? "none" : "namespace",
      ...(readOnly ? ["--readonly"] : []),
    ];
  }
  return [`--socket-path=${socketPath}`, "-o", `source=${sharedDir}`, "-o", "cache=none", "-o", "sandbox=namespace"];
}

export async function startVirtiofsd(options: VirtiofsdOptions): Promise<VirtiofsdHandle> {
  const { binary, socketPath, sharedDir, readOnly, logger } = options;
  const logPath = options.logPath ?? join(dirname(socketPath), "virtiofsd.log");
  let flavour: VirtiofsdFlavour;
  try {
    flavour = options.flavour ?? (await detectVirtiofsd(binary));
  } catch (err) {
    throw new WorkerError(
      "FAILED_PRECONDITION",
      `virtiofsd binary not found: ${binary} (install qemu-system-common or the virtiofsd release)`,
      { cause: err },
    );
  }
  if (readOnly && !flavour.readOnlyFlag) {
    // QEMU's C virtiofsd (and old Rust ones) cannot export read-only, and a guest can remount its
    // side rw: a share that must be read-only is not started at all.
    throw new WorkerError(
      "FAILED_PRECONDITION",
      `virtiofsd ${binary} (${flavour.style === "c" ? "QEMU's C daemon" : "a Rust build without --readonly"}) ` +
        "cannot export a share read-only; " +
        "install the Rust virtiofsd (1.13 or later has --readonly) to share secrets on this backend",
    );
  }
  if (options.cage && flavour.style === "c") {
    throw new WorkerError("FAILED_PRECONDITION", `QEMU's C virtiofsd ${binary} needs root for its own sandbox: it cannot run caged`);
  }
  await rm(socketPath, { force: true });
  const argv = virtiofsdArgs(flavour.style, socketPath, sharedDir, readOnly, Boolean(options.cage));
  const daemon = await spawnSupervised(binary, argv, {
    logPath,
    install: "install qemu-system-common or the virtiofsd release",
    cage: options.cage,
  });
  logger.debug({ pid: daemon.pid, style: flavour.style, argv }, "virtiofsd started");
  const handle = makeHandle(daemon, socketPath, logPath);
  const exited = handle.exited;

  // Ready when the vhost-user socket exists; fail early if the process dies first.
  const deadline = Date.now() + (options.readyTimeoutMs ?? 5000);
  let gone = false;
  void exited.then(() => (gone = true));
  while (!(await isSocket(socketPath))) {
    if (gone) throw new WorkerError("INTERNAL", `virtiofsd failed to start: ${(await exited).description}`);
    if (Date.now() > deadline) {
      await handle.kill();
      throw new WorkerError(
        "DEADLINE_EXCEEDED",
        `virtiofsd did not create ${basename(socketPath)} within ${options.readyTimeoutMs ?? 5000} ms`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return handle;
}

/** A virtiofsd that survived a worker restart; undefined when gone or the pid was reused. */
export async function adoptVirtiofsd(pid: number, startTime: string, socketPath: string): Promise<VirtiofsdHandle | undefined> {
  const daemon = await adoptSupervised({ pid, startTime });
  return daemon && makeHandle(daemon, socketPath);
}

function makeHandle(daemon: Supervised, socketPath: string, logPath?: string): VirtiofsdHandle {
  const exited = daemon.ended.then(async (end) => {
    await rm(socketPath, { force: true });
    return describeVirtiofsdExit(end, logPath);
  });
  return {
    pid: daemon.pid,
    startTime: daemon.startTime,
    socketPath,
    exited,
    kill: once(async () => {
      await daemon.kill();
      return exited;
    }),
  };
}

/** `logPath` is known for a virtiofsd this worker started; an adopted one has no exit status either. */
async function describeVirtiofsdExit(end: ProcessEnd, logPath: string | undefined): Promise<VmmExit> {
  const { code, signal } = end;
  if (signal) return { code, signal, description: `virtiofsd killed by ${signal}` };
  if (!end.known) return { code, signal, description: "virtiofsd exited (adopted: no exit status)" };
  const last = logPath ? (await tailLines(logPath, 1))[0] : undefined;
  return { code, signal, description: `virtiofsd ${describeExit(end, last)}` };
}

async function isSocket(path: string): Promise<boolean> {
  if (!existsSync(path)) return false;
  try {
    return (await stat(path)).isSocket();
  } catch {
    return false;
  }
}
