import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { storeMembership, storePathHash, summarizeStore, withPaths } from "../../worker/fleet/store-summary.js";
import { throwsWith } from "../helpers/errors.js";
import { storePath } from "./fleet-hosts.js";

const BASE32 = "0123456789abcdfghijklmnpqrsvwxyz";
/** A store hash as Nix makes them: uniformly distributed base32 (here from SHA-256 of the seed). */
const randomHash = (seed: number) =>
  [...createHash("sha256").update(String(seed)).digest().subarray(0, 32)].map((b) => BASE32[b % 32]).join("");

test("a store path counts by its hash, wherever inside the path it points", () => {
  assert.equal(storePathHash(`${storePath("a", "linux")}/bzImage`), "a".repeat(32));
  for (const bad of ["/etc/passwd", "/nix/store/short-x", `/nix/store/${"e".repeat(32)}-x`, ""]) {
    throwsWith(() => storePathHash(bad), "INVALID_ARGUMENT", /not a path inside \/nix\/store/);
  }
});

test("no false negatives, few false positives, the same size however many paths", () => {
  const added = Array.from({ length: 4096 }, (_, i) => `/nix/store/${randomHash(i)}-p${i}`);
  const summary = summarizeStore(added);
  assert.equal(Buffer.from(summary.bloom, "base64").length, 8192);
  const has = storeMembership(summary);
  assert.ok(
    added.every((path) => has(storePathHash(path))),
    "every added path is reported held",
  );
  // Hashes never added: well under 1% reported held (expected ~0.07% at 4096 paths in 8 KiB).
  const others = Array.from({ length: 10_000 }, (_, i) => randomHash(100_000 + i));
  assert.ok(others.filter(has).length < others.length / 100, `${others.filter(has).length} false positives`);
  assert.equal(summarizeStore([]).bloom.length, summary.bloom.length);
});

test("adding paths copies the summary; duplicates and paths inside one store path count once", () => {
  const empty = summarizeStore([]);
  const more = withPaths(empty, [storePath("a"), `${storePath("a")}/bzImage`, storePath("b")]);
  assert.equal(more.count, 2);
  assert.ok(storeMembership(more)("a".repeat(32)));
  assert.ok(!storeMembership(empty)("a".repeat(32)), "the original is unchanged");
  throwsWith(() => summarizeStore([], { bytes: 1000 }), "INVALID_ARGUMENT", /power of two/);
  throwsWith(() => summarizeStore([], { hashes: 0 }), "INVALID_ARGUMENT", /hashes 0/);
});
