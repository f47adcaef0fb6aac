import assert from "node:assert/strict";
import { test } from "node:test";
import { invalidArgument, WorkerError } from "../../worker/core/errors.js";
import { Plan } from "../../worker/core/plan.js";

test("a failing step undoes the earlier ones newest first, and the error names the step", async () => {
  const done: string[] = [];
  const plan = new Plan(() => undefined);
  await plan.step(
    "a",
    async () => 1,
    async () => void done.push("undo a"),
  );
  await plan.step(
    "b",
    async () => 2,
    async () => void done.push("undo b"),
  );
  await assert.rejects(
    plan.step("attach network", async () => {
      throw invalidArgument("bad domain");
    }),
    (err: unknown) => err instanceof WorkerError && err.code === "INVALID_ARGUMENT" && err.message === "attach network: bad domain",
  );
  assert.deepEqual(done, ["undo b", "undo a"]);
});

test("an undo that throws is reported and the others still run; foreign errors become INTERNAL", async () => {
  const reported: string[] = [];
  const done: string[] = [];
  const plan = new Plan((step) => reported.push(step));
  await plan.step(
    "a",
    async () => 1,
    async () => void done.push("undo a"),
  );
  await plan.step(
    "b",
    async () => 2,
    async () => {
      throw new Error("boom");
    },
  );
  await assert.rejects(
    plan.step("c", async () => Promise.reject(new Error("disk full"))),
    /c: disk full/,
  );
  assert.deepEqual(reported, ["b"]);
  assert.deepEqual(done, ["undo a"]);
});
