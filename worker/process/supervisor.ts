// One supervisor for every process the worker starts and lets outlive it (VMMs, virtiofsd, and
// later any other helper): spawn detached, adopt after a worker restart (pid + /proc start time +
// boot id), watch the end (the exit event of a child, /proc polling for a process that is not),
// kill once (memoized, never a stranger that reused the pid), keep the event loop alive while a
// caller waits, describe an exit, find a binary on PATH, and map a missing binary to
// FAILED_PRECONDITION. What a backend adds on top is only what its VMM means by an exit.
import { execFile } from "node:child_process";
import { constants } from "node:fs";
import { access, realpath } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { WorkerError } from "../core/errors.js";
import type { CageSpec } from "../ports/index.js";
import { isSameLiveProcess, signalProcess, spawnDetached, watchNonChild, type ProcessIdentity } from "./proc.js";

/** How a supervised process ended. */
export interface ProcessEnd {
  code: number | null;
  signal: string | null;
  /** False for an adopted process: not our child, so no exit status reaches us. */
  known: boolean;
  /** kill() sent the SIGKILL. */
  killedByUs: boolean;
}

/** A process the worker started (or adopted after a restart) and answers for. */
export interface Supervised {
  readonly pid: number;
  readonly startTime: string;
  readonly bootId: string | undefined;
  /** Adopted after a restart: not our child, its end is polled. */
  readonly adopted: boolean;
  /** Resolves once, when the process is gone. Never rejects. */
  readonly ended: Promise<ProcessEnd>;
  readonly hasEnded: boolean;
  /** A hint that the end is near (its control socket closed): look at once, then often. */
  hurry(): void;
  /** SIGKILL if it is still the same process, then its end. Memoized: every call gets the same end. */
  kill(): Promise<ProcessEnd>;
}

export interface SpawnOptions {
  /** stdout and stderr are appended here. */
  logPath: string;
  /** Inherited as the child's fds 3, 4, ... */
  passFds?: number[];
  /** What to install when the binary is missing, e.g. "install qemu-system-x86". */
  install: string;
  /** Start it inside this cage (ports/cage.ts): the helper runs first, as root, and execs the binary. */
  cage?: CageSpec;
}

const closures = new Map<string, Promise<string[]>>();

/** What a program outside /usr needs bound into its cage: its store closure (nix-store -qR), or itself. */
function programPaths(program: string): Promise<string[]> {
  const storePath = /^\/nix\/store\/[^/]+/.exec(program)?.[0];
  if (!storePath) return Promise.resolve([program]);
  let paths = closures.get(storePath);
  if (!paths) {
    paths = new Promise<string[]>((resolve) =>
      execFile("nix-store", ["--query", "--requisites", storePath], (err, stdout) =>
        resolve(err ? [storePath] : stdout.split("\n").filter(Boolean)),
      ),
    );
    closures.set(storePath, paths);
  }
  return paths;
}

/** The helper's command line that cages `binary` (an absolute path: the cage has no PATH search). */
export function cagedCommand(cage: CageSpec, binary: string, argv: string[]): [string, string[]] {
  const args = ["--uid", String(cage.uid), "--gid", String(cage.gid), "--root", cage.root, "--nofile", String(cage.nofile)];
  for (const path of cage.readOnly) args.push("--ro", path);
  for (const path of cage.readWrite) args.push("--rw", path);
  for (const path of cage.devices) args.push("--dev", path);
  for (const dir of cage.cgroups) args.push("--cgroup", dir);
  for (const tap of cage.taps ?? []) args.push("--tap", `${tap.name}:${tap.fd}`);
  for (const name of cage.tapOwners ?? []) args.push("--tap-owner", name);
  return [cage.helper, [...args, "--", binary, ...argv]];
}

/**
 * Starts `binary` detached and supervises it. A missing binary is FAILED_PRECONDITION naming it
 * and what to install; any other spawn failure is INTERNAL.
 */
export async function spawnSupervised(binary: string, argv: string[], options: SpawnOptions): Promise<Supervised> {
  let spawned: Awaited<ReturnType<typeof spawnDetached>>;
  try {
    if (options.cage) {
      const resolved = await findExecutable(binary);
      if (!resolved) throw Object.assign(new Error(`${binary} not found`), { code: "ENOENT" });
      const program = await realpath(resolved);
      // A VMM outside the host's /usr is bound in: a Nix-built one with its closure, another by itself.
      const visible = options.cage.readOnly.some((path) => program === path || program.startsWith(`${path}/`));
      const cage = visible ? options.cage : { ...options.cage, readOnly: [...options.cage.readOnly, ...(await programPaths(program))] };
      const [helper, cagedArgv] = cagedCommand(cage, program, argv);
      spawned = await spawnDetached(helper, cagedArgv, options.logPath, options.passFds);
    } else {
      spawned = await spawnDetached(binary, argv, options.logPath, options.passFds);
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new WorkerError("FAILED_PRECONDITION", `${binary} not found; ${options.install}`, { cause: err });
    throw new WorkerError("INTERNAL", `cannot start ${binary}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  const exit = spawned.exit;
  return supervise({ pid: spawned.pid, startTime: spawned.startTime, bootId: spawned.bootId }, false, (killed) =>
    exit.then(({ code, signal }) => ({ code, signal, known: true, killedByUs: killed() })),
  );
}

/**
 * Supervises a process that is not our child (one a previous worker started), or undefined when
 * it is gone or the pid now names another process. The caller checks beforehand anything more
 * the identity must match (its executable, its arguments: proc.ts isOurProcess).
 */
export async function adoptSupervised(identity: Pick<ProcessIdentity, "pid" | "startTime" | "bootId">): Promise<Supervised | undefined> {
  if (!(await isSameLiveProcess(identity.pid, identity.startTime))) return undefined;
  const watch = watchNonChild(identity.pid, identity.startTime);
  return supervise(
    identity,
    true,
    (killed) => watch.exited.then(() => ({ code: null, signal: killed() ? "SIGKILL" : null, known: false, killedByUs: killed() })),
    watch.hurry,
  );
}

function supervise(
  identity: Pick<ProcessIdentity, "pid" | "startTime" | "bootId">,
  adopted: boolean,
  watchEnd: (killedByUs: () => boolean) => Promise<ProcessEnd>,
  hurry: () => void = () => {},
): Supervised {
  let killedByUs = false;
  let hasEnded = false;
  let killing: Promise<ProcessEnd> | undefined;
  const ended = watchEnd(() => killedByUs).then((end) => {
    hasEnded = true;
    return end;
  });
  return {
    pid: identity.pid,
    startTime: identity.startTime,
    bootId: identity.bootId,
    adopted,
    ended,
    get hasEnded() {
      return hasEnded;
    },
    hurry,
    kill() {
      killing ??= keepAlive(
        (async () => {
          // The start time check keeps a stranger that got the pid (after a reap, or a restart) safe.
          if (!hasEnded && (await isSameLiveProcess(identity.pid, identity.startTime))) {
            killedByUs = true;
            signalProcess(identity.pid, "SIGKILL");
          }
          hurry();
          return ended;
        })(),
      );
      return killing;
    },
  };
}

/**
 * Supervised processes are unref'd (they must not hold a stopping worker open), so whoever awaits
 * one keeps the event loop alive meanwhile, or a script awaiting stop() would just end.
 */
export async function keepAlive<T>(work: Promise<T>): Promise<T> {
  const timer = setInterval(() => undefined, 1 << 30);
  try {
    return await work;
  } finally {
    clearInterval(timer);
  }
}

/** Memoizes an operation that must run once however often it is asked for (stop, kill). */
export function once<T>(run: () => Promise<T>): () => Promise<T> {
  let result: Promise<T> | undefined;
  return () => (result ??= run());
}

/** "killed by SIGTERM", "exited with code 1", "exited (status unknown)", then ": <detail>" when there is one. */
export function describeExit(end: { code: number | null; signal: string | null }, detail?: string): string {
  const what = end.signal ? `killed by ${end.signal}` : end.code === null ? "exited (status unknown)" : `exited with code ${end.code}`;
  return detail ? `${what}: ${detail}` : what;
}

/** The binary's absolute path (a name is looked up on PATH; a path is checked), or undefined. */
export async function findExecutable(binary: string): Promise<string | undefined> {
  const candidates = binary.includes("/")
    ? [binary]
    : (process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin")
        .split(delimiter)
        .filter(Boolean)
        .map((dir) => join(dir, binary));
  for (const candidate of candidates) {
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here: the next directory
    }
  }
  return undefined;
}
