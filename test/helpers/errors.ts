// The one way tests check a typed worker error: its code and a pattern its message must match.
import assert from "node:assert/strict";
import { WorkerError } from "../../worker/core/errors.js";

/** Awaits `promise`, which must reject with a WorkerError of `code` whose message matches; returns the message. */
export async function rejectsWith(promise: Promise<unknown>, code: string, pattern: RegExp): Promise<string> {
  let message = "";
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof WorkerError, `a WorkerError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.match(err.message, pattern);
    message = err.message;
    return true;
  });
  return message;
}

/** The same for a synchronous call: `fn` must throw a WorkerError of `code` whose message matches. */
export function throwsWith(fn: () => unknown, code: string, pattern: RegExp): string {
  let message = "";
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof WorkerError, `a WorkerError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.match(err.message, pattern);
    message = err.message;
    return true;
  });
  return message;
}
