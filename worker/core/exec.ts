// Running a command in a VM through its guest agent: what a request may hold, checked before
// anything reaches the guest.
import type { ExecRequest } from "../ports/index.js";
import { invalidArgument } from "./errors.js";

export const EXEC_LIMITS = {
  maxArgs: 1024,
  maxEnv: 1024,
  /** Bytes of argv, env and cwd together (the kernel's own bound is larger). */
  maxTextBytes: 128 * 1024,
  /** stdin travels in the request frame (256 KiB, base64 in JSON). */
  maxStdinBytes: 128 * 1024,
  maxTimeoutMs: 24 * 3600 * 1000,
} as const;

const ENV_ENTRY = /^[A-Za-z_][A-Za-z0-9_]*=/;

export function validateExec(request: ExecRequest): ExecRequest {
  const { argv, env = [], cwd = "", stdin = new Uint8Array(), timeoutMs = 0 } = request;
  if (argv.length === 0 || argv[0] === "") throw invalidArgument("argv is empty");
  if (argv.length > EXEC_LIMITS.maxArgs) throw invalidArgument(`argv has ${argv.length} entries (at most ${EXEC_LIMITS.maxArgs})`);
  if (env.length > EXEC_LIMITS.maxEnv) throw invalidArgument(`env has ${env.length} entries (at most ${EXEC_LIMITS.maxEnv})`);
  const bad = env.find((entry) => !ENV_ENTRY.test(entry));
  if (bad !== undefined) throw invalidArgument(`env entry ${JSON.stringify(bad.slice(0, 40))} is not NAME=value`);
  const texts = [...argv, ...env, cwd];
  if (texts.some((text) => text.includes("\0"))) throw invalidArgument("argv, env and cwd may not contain NUL");
  const bytes = texts.reduce((sum, text) => sum + Buffer.byteLength(text), 0);
  if (bytes > EXEC_LIMITS.maxTextBytes)
    throw invalidArgument(`argv, env and cwd hold ${bytes} bytes (at most ${EXEC_LIMITS.maxTextBytes})`);
  if (cwd !== "" && !cwd.startsWith("/")) throw invalidArgument(`cwd "${cwd}" is not an absolute path`);
  if (stdin.length > EXEC_LIMITS.maxStdinBytes)
    throw invalidArgument(`stdin has ${stdin.length} bytes (at most ${EXEC_LIMITS.maxStdinBytes})`);
  if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > EXEC_LIMITS.maxTimeoutMs) {
    throw invalidArgument(`timeoutMs ${timeoutMs} is outside 0..${EXEC_LIMITS.maxTimeoutMs}`);
  }
  return { argv, env, cwd, stdin, timeoutMs };
}
