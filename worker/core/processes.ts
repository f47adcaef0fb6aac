// Long-running processes in a VM through its guest agent: what a call may hold, checked before
// anything reaches the guest. The agent keeps the process table; these are its bounds on our side.
import { AGENT_CHUNK_BYTES, type OutputStream, type ProcessStart } from "../ports/agent.js";
import { invalidArgument } from "./errors.js";
import { validateExec } from "./exec.js";

export const PROCESS_LIMITS = {
  /** Longest wait of one readProcess or waitProcess: a long poll, asked again by the caller. */
  maxWaitMs: 60_000,
  /** Bytes of one readProcess answer (one agent frame). */
  maxReadBytes: AGENT_CHUNK_BYTES,
  /** Bytes of one writeProcess (one agent frame). */
  maxWriteBytes: AGENT_CHUNK_BYTES,
  maxTerminalSide: 4096,
} as const;

export function validateStart(request: ProcessStart): ProcessStart {
  const { argv, env, cwd } = validateExec({ argv: request.argv, env: request.env, cwd: request.cwd });
  if (!request.tty) return { argv, env, cwd };
  return { argv, env, cwd, tty: { rows: validateSide(request.tty.rows, "rows"), cols: validateSide(request.tty.cols, "cols") } };
}

export function validateSide(value: number, what: "rows" | "cols"): number {
  if (!Number.isInteger(value) || value < 1 || value > PROCESS_LIMITS.maxTerminalSide) {
    throw invalidArgument(`${what} ${value} is outside 1..${PROCESS_LIMITS.maxTerminalSide}`);
  }
  return value;
}

export function validatePid(pid: number): number {
  if (!Number.isInteger(pid) || pid < 1 || pid > 0x7fff_ffff) throw invalidArgument(`pid ${pid} is not a process id`);
  return pid;
}

export function validateSignal(signal: number): number {
  if (!Number.isInteger(signal) || signal < 1 || signal > 64) throw invalidArgument(`signal ${signal} is outside 1..64`);
  return signal;
}

export function validateWait(waitMs: number): number {
  if (!Number.isInteger(waitMs) || waitMs < 0 || waitMs > PROCESS_LIMITS.maxWaitMs) {
    throw invalidArgument(`waitMs ${waitMs} is outside 0..${PROCESS_LIMITS.maxWaitMs}`);
  }
  return waitMs;
}

export function validateStream(stream: string): OutputStream {
  if (stream !== "stdout" && stream !== "stderr") throw invalidArgument(`stream "${stream}" is neither stdout nor stderr`);
  return stream;
}
