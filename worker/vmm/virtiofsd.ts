// One virtiofsd per VM, serving the VM's share over a vhost-user socket. Two implementations exist
// with different flags: QEMU's C virtiofsd (/usr/lib/qemu/virtiofsd, Debian 12) and the Rust
// virtiofsd (production). The flavour is read from `--help` once per binary.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { rm, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { promisify } from "node:util";
import type { Logger } from "pino";
import { WorkerError } from "../core/errors.js";
import type { VmmExit } from "../ports/index.js";
import { isSameLiveProcess, signalProcess, spawnDetached, tailLines, watchNonChild } from "./process.js";

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
    flavour.catch(() => flavourCache.delete(binary));
    flavourCache.set(binary, flavour);
  }
  return flavour;
}

/** The argv for each implementation. The C one has no read-only switch: it is never asked for one. */
export function virtiofsdArgs(style: VirtiofsdStyle, socketPath: string, sharedDir: string, readOnly: boolean): string[] {
  if (style === "rust") {
    return ["--socket-path", socketPath, "--shared-dir", sharedDir, "--cache", "never", "--sandbox", "namespace", ...(readOnly ? ["--readonly"] : [])];
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
    throw new WorkerError("FAILED_PRECONDITION", `virtiofsd binary not found: ${binary} (install qemu-system-common or the virtiofsd release)`, { cause: err });
  }
  if (readOnly && !flavour.readOnlyFlag) {
    // QEMU's C virtiofsd (and old Rust ones) cannot export read-only, and a guest can remount its
    // side rw: a share that must be read-only is not started at all.
    throw new WorkerError(
      "FAILED_PRECONDITION",
      `virtiofsd ${binary} (${flavour.style === "c" ? "QEMU's C daemon" : "a Rust build without --readonly"}) cannot export a share read-only; ` +
        "install the Rust virtiofsd (1.13 or later has --readonly) to share secrets on this backend",
    );
  }
  await rm(socketPath, { force: true });
  const argv = virtiofsdArgs(flavour.style, socketPath, sharedDir, readOnly);
  let spawned;
  try {
    spawned = await spawnDetached(binary, argv, logPath);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new WorkerError("FAILED_PRECONDITION", `virtiofsd binary not found: ${binary}`, { cause: err });
    throw new WorkerError("INTERNAL", `cannot start virtiofsd ${binary}: ${(err as Error).message}`, { cause: err });
  }
  logger.debug({ pid: spawned.pid, style: flavour.style, argv }, "virtiofsd started");
  const handle = makeHandle(spawned.pid, spawned.startTime, socketPath, spawned.exit.then(({ code, signal }) => describeExit(code, signal, logPath)));
  const exited = handle.exited;

  // Ready when the vhost-user socket exists; fail early if the process dies first.
  const deadline = Date.now() + (options.readyTimeoutMs ?? 5000);
  let gone = false;
  void exited.then(() => (gone = true));
  while (!(await isSocket(socketPath))) {
    if (gone) throw new WorkerError("INTERNAL", `virtiofsd failed to start: ${(await exited).description}`);
    if (Date.now() > deadline) {
      await handle.kill();
      throw new WorkerError("DEADLINE_EXCEEDED", `virtiofsd did not create ${basename(socketPath)} within ${options.readyTimeoutMs ?? 5000} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return handle;
}

/** A virtiofsd that survived a worker restart; undefined when gone or the pid was reused. */
export async function adoptVirtiofsd(pid: number, startTime: string, socketPath: string): Promise<VirtiofsdHandle | undefined> {
  if (!(await isSameLiveProcess(pid, startTime))) return undefined;
  const watch = watchNonChild(pid, startTime);
  return makeHandle(pid, startTime, socketPath, watch.exited.then(() => ({ code: null, signal: null, description: "virtiofsd exited (adopted: no exit status)" })), watch.hurry);
}

function makeHandle(pid: number, startTime: string, socketPath: string, processExit: Promise<VmmExit>, hurry: () => void = () => {}): VirtiofsdHandle {
  let done = false;
  const exited = processExit.then(async (exit) => {
    done = true;
    await rm(socketPath, { force: true });
    return exit;
  });
  return {
    pid,
    startTime,
    socketPath,
    exited,
    async kill() {
      // The start time check keeps us from killing a stranger that got the pid.
      if (!done && (await isSameLiveProcess(pid, startTime))) signalProcess(pid, "SIGKILL");
      hurry();
      return exited;
    },
  };
}

async function describeExit(code: number | null, signal: NodeJS.Signals | null, logPath: string): Promise<VmmExit> {
  if (signal) return { code, signal, description: `virtiofsd killed by ${signal}` };
  const last = (await tailLines(logPath, 1))[0];
  return { code, signal, description: `virtiofsd exited with code ${code}${last ? `: ${last}` : ""}` };
}

async function isSocket(path: string): Promise<boolean> {
  if (!existsSync(path)) return false;
  try {
    return (await stat(path)).isSocket();
  } catch {
    return false;
  }
}
