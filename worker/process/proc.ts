// What /proc tells about a process, and the raw detached spawn: the ground the supervisor
// (supervisor.ts) stands on. Identity is pid + start time (+ boot id, + executable), never a pid alone.
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { type FileHandle, open, readdir, readFile, readlink } from "node:fs/promises";
import { basename } from "node:path";
import { ifMissing } from "../missing.js";

/** Fields of /proc/<pid>/stat after the command name: state (field 3) and start time (field 22). */
export async function readProcStat(pid: number): Promise<{ state: string; startTime: string; parent: number } | undefined> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // The command name (field 2) may hold spaces and parentheses: split after the last ")".
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const state = fields[0];
  const startTime = fields[19];
  if (!state || !startTime) return undefined;
  return { state, startTime, parent: Number(fields[1]) };
}

/** The process start time (field 22 of /proc/<pid>/stat), or undefined when it is gone. */
export async function readStartTime(pid: number): Promise<string | undefined> {
  return (await readProcStat(pid))?.startTime;
}

/** True while the process with this pid and start time exists and is not a zombie. */
export async function isSameLiveProcess(pid: number, startTime: string): Promise<boolean> {
  const stat = await readProcStat(pid);
  return stat !== undefined && stat.startTime === startTime && stat.state !== "Z" && stat.state !== "X";
}

/**
 * Watches a process that is not our child, where no exit event exists: `exited` resolves once it
 * is gone, a zombie, or its pid was reused. `hurry` is for a caller with a hint that the end is
 * near (its control socket closed, it sent SIGKILL): check at once, then every few milliseconds.
 */
export function watchNonChild(pid: number, startTime: string, intervalMs = 100): { exited: Promise<void>; hurry(): void } {
  let hurry = () => {};
  const exited = new Promise<void>((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    let checking = false;
    let done = false;
    const check = async () => {
      if (checking || done) return;
      checking = true;
      clearTimeout(timer);
      const alive = await isSameLiveProcess(pid, startTime);
      checking = false;
      if (!alive) {
        done = true;
        return resolve();
      }
      timer = setTimeout(check, intervalMs);
      timer.unref();
    };
    hurry = () => {
      intervalMs = 5;
      void check();
    };
    void check();
  });
  return { exited, hurry: () => hurry() };
}

/** Sends a signal; false when the process no longer exists. */
export function signalProcess(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ESRCH") return false;
    throw err;
  }
}

/** This boot of the host: a pid and start time from another boot name some other process. */
let currentBootId: string | undefined;
export function bootId(): string {
  currentBootId ??= readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  return currentBootId;
}

/**
 * The executable a process runs, or "" when it is gone or unreadable. Read it once the process
 * answers on its control socket: right after a spawn it may still be an interpreter or `env`
 * on its way to the program.
 */
export async function processExe(pid: number): Promise<string> {
  return ifMissing(readlink(`/proc/${pid}/exe`), "");
}

/** What identifies a process we started, beyond its pid: recorded at spawn, checked before adopting it. */
export interface ProcessIdentity {
  pid: number;
  startTime: string;
  /** Absent in records written before these were kept. */
  bootId?: string;
  exe?: string;
}

/**
 * True only if `identity` still names the process we started for the VM in `vmDir`: same boot,
 * same pid and start time, alive, the same executable, and an argument inside `vmDir`. An
 * unrelated process that happens to match must never be adopted (and later killed).
 */
export async function isOurProcess(identity: ProcessIdentity, vmDir: string): Promise<boolean> {
  if (identity.bootId !== undefined && identity.bootId !== bootId()) return false;
  if (!(await isSameLiveProcess(identity.pid, identity.startTime))) return false;
  if (identity.exe !== undefined && (await processExe(identity.pid)) !== identity.exe) return false;
  const argv = await readFile(`/proc/${identity.pid}/cmdline`, "utf8").then(
    (text) => text.split("\0"),
    () => [] as string[],
  );
  const dir = vmDir.endsWith("/") ? vmDir : `${vmDir}/`;
  return argv.some((arg) => arg.includes(dir));
}

export interface SpawnedProcess {
  child: ChildProcess;
  pid: number;
  startTime: string;
  bootId: string;
  /** Resolves when the child exits, with its code or signal. Never rejects. */
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Starts a process in its own process group, stdio to `logPath` (append), not tied to our
 * lifetime: a worker restart neither kills it nor breaks its pipes. `passFds` are inherited.
 */
export async function spawnDetached(binary: string, argv: string[], logPath: string, passFds: number[] = []): Promise<SpawnedProcess> {
  const logFd = openSync(logPath, "a", 0o600);
  let child: ChildProcess;
  try {
    // passFds become the child's fds 3, 4, ... (see worker/vmm/boot-files.ts).
    child = spawn(binary, argv, { detached: true, stdio: ["ignore", logFd, logFd, ...passFds] });
  } finally {
    closeSync(logFd);
  }
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("exit", (code, signal) => resolve({ code, signal }));
  });
  // A missing binary surfaces as an "error" event right after spawn, with no pid.
  const spawnError = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
    child.once("spawn", () => resolve(undefined));
    child.once("error", (err) => resolve(err as NodeJS.ErrnoException));
  });
  if (spawnError) throw spawnError;
  child.on("error", () => undefined); // a later failed kill(): callers check liveness themselves
  child.unref();
  const pid = child.pid!;
  // The pid exists from fork on; only a process already reaped has no stat, then any value will do.
  const startTime = (await readStartTime(pid)) ?? "0";
  return { child, pid, startTime, bootId: bootId(), exit };
}

/** The last non-empty lines of a text file (reads at most the last 16 KiB). */
export async function tailLines(path: string, count: number): Promise<string[]> {
  let handle: FileHandle;
  try {
    handle = await open(path, "r");
  } catch {
    return [];
  }
  try {
    const { size } = await handle.stat();
    const length = Math.min(size, 16384);
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, size - length);
    return buffer
      .toString("utf8")
      .split("\n")
      .map((line) => line.trimEnd())
      .filter(Boolean)
      .slice(-count);
  } finally {
    await handle.close();
  }
}

/**
 * Finds processes whose program name matches `program` and whose arguments point inside one of
 * `roots` (a VM's directory, a secrets directory), except the pids in `keep`: VMMs and helpers a
 * killed worker left behind with no record. Kills them (SIGKILL) and waits until they are gone.
 */
/**
 * What a cage helper (cage/pcr-cage.c) runs: the program after its `--`. A helper is known by that
 * program before it has exec'd it, and after it is gone.
 */
function cagedProgram(argv: string[]): string | undefined {
  if (basename(argv[0] ?? "") !== "pcr-cage") return undefined;
  const end = argv.indexOf("--");
  return end >= 0 ? argv[end + 1] : undefined;
}

export async function killStrayProcesses(
  roots: string[],
  keep: Set<number>,
  program: RegExp,
  waitMs = 3000,
): Promise<{ pid: number; argv0: string }[]> {
  const prefixes = roots.filter(Boolean).map((root) => (root.endsWith("/") ? root : `${root}/`));
  if (prefixes.length === 0) return [];
  const strays: { pid: number; startTime: string; argv0: string }[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid || keep.has(pid)) continue;
    const argv = await readFile(`/proc/${pid}/cmdline`, "utf8").then(
      (text) => text.split("\0"),
      () => undefined,
    );
    const argv0 = argv?.[0] ?? "";
    if (!argv || !program.test(basename(cagedProgram(argv) ?? argv0))) continue;
    if (!argv.some((arg) => prefixes.some((prefix) => arg.includes(prefix)))) continue;
    const stat = await readProcStat(pid);
    if (!stat || stat.state === "Z" || stat.state === "X") continue;
    // A caged VMM is the child of its cage helper, which is the process its record names.
    if (keep.has(stat.parent)) continue;
    strays.push({ pid, startTime: stat.startTime, argv0 });
  }
  for (const stray of strays) signalProcess(stray.pid, "SIGKILL");
  const deadline = Date.now() + waitMs;
  for (const stray of strays) {
    while (Date.now() < deadline && (await isSameLiveProcess(stray.pid, stray.startTime))) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
  return strays.map(({ pid, argv0 }) => ({ pid, argv0 }));
}
