// A real worker process for end-to-end tests: its own state, runtime dir and network namespace.
import { execa, type ResultPromise } from "execa";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CLI_BIN, NIX_CACHE_URL, WORKER_BIN } from "./repo.js";
import { waitForOutput } from "./child-output.js";
import { createNetns, deleteNetns } from "./netns.js";

export interface WorkerProcess {
  socket: string;
  stateDir: string;
  runtimeDir: string;
  netns: string;
  /** Everything the worker logged so far (JSON lines on stderr). */
  logs(): string;
  /** Runs pcr-worker-test against this worker (inside its namespace). */
  cli(args: string[], options?: { env?: Record<string, string> }): Promise<{ exitCode: number; stdout: string; stderr: string }>;
  stop(signal?: NodeJS.Signals): Promise<void>;
  pid: number;
}

export interface StartOptions {
  extraArgs?: string[];
  env?: Record<string, string>;
  /** Reuse these directories and namespace (restart tests). */
  reuse?: { stateDir: string; runtimeDir: string; netns: string };
}

export async function startWorker(options: StartOptions = {}): Promise<WorkerProcess> {
  const base = options.reuse ? undefined : await mkdtemp(join(tmpdir(), "pcr-e2e-"));
  const stateDir = options.reuse?.stateDir ?? join(base!, "state");
  const runtimeDir = options.reuse?.runtimeDir ?? join(base!, "run");
  const netns = options.reuse?.netns ?? (await createNetns());
  const socket = join(runtimeDir, "worker.sock");
  let logText = "";
  const child: ResultPromise = execa(
    "ip",
    [
      "netns",
      "exec",
      netns,
      process.execPath,
      WORKER_BIN,
      "--socket",
      socket,
      "--state-dir",
      stateDir,
      "--runtime-dir",
      runtimeDir,
      "--cache-url",
      NIX_CACHE_URL,
      // A default callers may override (yargs turns a repeated flag into an array).
      ...(options.extraArgs?.includes("--stop-grace-ms") ? [] : ["--stop-grace-ms", "1000"]),
      ...(options.extraArgs ?? []),
    ],
    { reject: false, env: { ...options.env }, buffer: false, stdin: "ignore" },
  );
  child.stderr!.on("data", (chunk: Buffer) => {
    logText += chunk.toString();
  });
  const listening = waitForOutput(child, "listening on", "worker", 60_000, () => logText);
  try {
    await listening;
  } catch (err) {
    // A fresh start that failed leaves no worker, namespace or directories behind.
    child.kill("SIGKILL");
    await child.catch(() => undefined);
    if (!options.reuse) {
      await deleteNetns(netns);
      await rm(base!, { recursive: true, force: true });
    }
    throw err;
  }
  return {
    socket,
    stateDir,
    runtimeDir,
    netns,
    pid: child.pid!,
    logs: () => logText,
    async cli(args, cliOptions) {
      const result = await execa("ip", ["netns", "exec", netns, process.execPath, CLI_BIN, "--worker", socket, ...args], {
        reject: false,
        env: cliOptions?.env,
      });
      return { exitCode: result.exitCode ?? -1, stdout: result.stdout, stderr: result.stderr };
    },
    async stop(signal = "SIGTERM") {
      child.kill(signal);
      await child;
    },
  };
}

/** Stops the worker, then removes its namespace and directories. */
export async function destroyWorker(worker: WorkerProcess): Promise<void> {
  await worker.stop("SIGKILL").catch(() => undefined);
  await deleteNetns(worker.netns);
  await rm(join(worker.stateDir, ".."), { recursive: true, force: true });
}
