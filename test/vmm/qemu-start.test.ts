// A QEMU that dies right after it opened its QMP socket resets the connection in its backlog
// (`connect ECONNRESET`): the launch must still say "QEMU exited at start" with QEMU's own
// reason, not "control socket did not answer" (seen once in CI on qemu.test's bad-image case).
import assert from "node:assert/strict";
import { test } from "node:test";
import type { QmpClient } from "../../worker/vmm/qemu/qmp.js";
import { connectWhileAlive, ExitedFirst } from "../../worker/vmm/qemu/backend.js";

function failing(code: string): () => Promise<QmpClient> {
  return async () => {
    throw Object.assign(new Error(`connect ${code} /vm/qmp.sock`), { code });
  };
}

for (const code of ["ECONNRESET", "EPIPE", "EAGAIN", "ECONNREFUSED", "ENOENT"]) {
  test(`${code} while the VMM dies is ExitedFirst, not a connect error`, async () => {
    const exit = new Promise<void>((resolve) => setTimeout(resolve, 50));
    await assert.rejects(connectWhileAlive("/vm/qmp.sock", exit, 5000, failing(code)), (err) => err instanceof ExitedFirst);
  });
}

test("any other connect error is not retried", async () => {
  const exit = new Promise<void>(() => undefined);
  await assert.rejects(connectWhileAlive("/vm/qmp.sock", exit, 5000, failing("EACCES")), /EACCES/);
});

test("a VMM that stays alive but never answers runs into the deadline with the last error", async () => {
  const exit = new Promise<void>(() => undefined);
  await assert.rejects(connectWhileAlive("/vm/qmp.sock", exit, 200, failing("ECONNREFUSED")), /ECONNREFUSED/);
});
