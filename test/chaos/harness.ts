// Shared plumbing of the chaos suite: the test guest's spec, a real worker that can be killed and
// restarted on the same state, a seeded PRNG, waits, and the figures each test prints.
import { readFileSync } from "node:fs";
import type { VmSpecInput } from "../../worker/core/api.js";
import { connectWorker, type WorkerClient } from "../../worker/rpc/worker-client.js";
import { testGuest } from "../helpers/repo.js";
import { startWorker, type StartOptions, type WorkerProcess } from "../helpers/worker-process.js";
import { fdCount } from "./invariants.js";

const guest = testGuest();
/** Skip reason for the whole suite when the test guest was never built. */
export const skip: string | false = "skip" in guest ? guest.skip : false;

/** The test guest's spec as the RPC client takes it. */
export function guestSpec(overrides: Partial<VmSpecInput> = {}): VmSpecInput {
  if ("skip" in guest) throw new Error(guest.skip);
  return { ...guest.input, ...overrides };
}

/** Flags every chaos worker runs with: no HTTP listener, quick stops (the guest is never waited for). */
export const CHAOS_ARGS = ["--http-listen", "off", "--stop-grace-ms", "0"];

export async function startChaosWorker(extraArgs: string[] = [], reuse?: StartOptions["reuse"]): Promise<WorkerProcess> {
  return startWorker({ extraArgs: [...CHAOS_ARGS, ...extraArgs], reuse });
}

/** Same state directories and namespace, a new worker process. */
export function restartWorker(worker: WorkerProcess, extraArgs: string[] = []): Promise<WorkerProcess> {
  return startChaosWorker(extraArgs, { stateDir: worker.stateDir, runtimeDir: worker.runtimeDir, netns: worker.netns });
}

export async function client(worker: WorkerProcess): Promise<WorkerClient> {
  return connectWorker(worker.socket);
}

/** The worker's fd count once it has settled (a QMP socket or nft child may still be closing). */
export async function settledFds(worker: WorkerProcess): Promise<number> {
  let last = fdCount(worker.pid) ?? 0;
  for (let i = 0; i < 10; i++) {
    await sleep(100);
    const now = fdCount(worker.pid) ?? 0;
    if (now === last) return now;
    last = now;
  }
  return last;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined> | T | undefined): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** The seed is printed so a failing run can be replayed (CHAOS_SEED). */
export { prng } from "../rpc/frame-fuzz.js";

export const SEED = Number(process.env.CHAOS_SEED ?? Date.now() % 1_000_000);

/** One line of figures per test, easy to grep from the run's output. */
export function report(name: string, figures: Record<string, unknown>): void {
  console.log(`chaos figures: ${name}: ${JSON.stringify(figures)}`);
}

/** The last lines of the worker's log, for assertion messages. */
export function logTail(worker: WorkerProcess, chars = 4000): string {
  return worker.logs().slice(-chars);
}

export function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, "utf8")) as T;
}
