// The blkdebug rules for a diskErrors fault: bounded work whatever the disk's size.
import assert from "node:assert/strict";
import { test } from "node:test";
import { WorkerError } from "../../worker/core/errors.js";
import { blkdebugRules, MAX_BAD_BLOCKS } from "../../worker/vmm/qemu/disk-faults.js";

const GIB = 1024 ** 3;
const rule = (probabilityPercent: number) => ({ op: "read" as const, errno: 5, afterOps: 0, probabilityPercent });

test("a 64 GiB disk at 99.9% is refused up front (the old walk visited all 16M blocks and held ~500 MiB)", () => {
  assert.throws(
    () => blkdebugRules("fault-a", rule(99.9), 64 * GIB),
    (err: unknown) => {
      assert.ok(err instanceof WorkerError);
      assert.equal(err.code, "INVALID_ARGUMENT");
      assert.match(err.message, new RegExp(`above the ${MAX_BAD_BLOCKS} this supports`));
      return true;
    },
  );
});

test("just over the limit is refused too, after at most MAX_BAD_BLOCKS + 1 draws", () => {
  const blocks = (64 * GIB) / 4096;
  const percent = ((MAX_BAD_BLOCKS * 1.5) / blocks) * 100; // ~6,144 expected: past the cap, under the up-front bound
  assert.throws(() => blkdebugRules("fault-b", rule(percent), 64 * GIB), /bad blocks/);
});

test("a sparse rate on a big disk: about the expected number of distinct blocks, all on the disk, the same for the same fault id", () => {
  const disk = 64 * GIB;
  const percent = 0.01; // ~1,678 of 16,777,216 blocks
  const rules = blkdebugRules("fault-c", rule(percent), disk);
  const expected = ((disk / 4096) * percent) / 100;
  assert.ok(rules.length > expected * 0.8 && rules.length < expected * 1.2, `${rules.length} bad blocks, expected ~${expected}`);
  const sectors = rules.map((r) => r.sector!);
  assert.equal(new Set(sectors).size, sectors.length, "distinct");
  assert.ok(
    sectors.every((sector, i) => sector < disk / 512 && (i === 0 || sector > sectors[i - 1]!)),
    "ascending, on the disk",
  );
  assert.deepEqual(blkdebugRules("fault-c", rule(percent), disk), rules, "deterministic per fault id");
  assert.notDeepEqual(blkdebugRules("fault-d", rule(percent), disk), rules);
});

test("0% and 100% need no per-block rules", () => {
  assert.deepEqual(
    blkdebugRules("f", { ...rule(0), op: "readWrite" }, GIB).map((r) => r.iotype),
    ["read", "write"],
  );
  assert.equal(blkdebugRules("f", rule(100), GIB)[0]!.sector, undefined);
});
