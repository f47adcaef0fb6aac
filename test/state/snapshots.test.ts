// Pool snapshots on disk (worker/state/snapshots.ts): committed read-only with a checksum; a file
// replaced, rewritten or missing since is reported, never restored; strays are removed.
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { FileSnapshots, snapshotName } from "../../worker/state/snapshots.js";

const id = { key: "0123456789abcdef", backend: "qemu", version: "QEMU emulator version 7.2.22" };

async function committed() {
  const dir = mkdtempSync(join(tmpdir(), "pcr-snapshots-"));
  const store = new FileSnapshots(dir);
  writeFileSync(await store.draft(id), "saved machine state");
  const file = await store.commit(id);
  return { dir, store, file };
}

test("commit publishes the draft read-only under the key, backend and version; find returns it", async () => {
  const { dir, store, file } = await committed();
  assert.equal(file.bytes, 19);
  assert.match(file.sha256, /^[0-9a-f]{64}$/);
  assert.equal(file.path, join(dir, `${snapshotName(id)}.state`));
  assert.equal(statSync(file.path).mode & 0o777, 0o444);
  assert.deepEqual(await store.find(id, { verify: true }), { found: file });
  assert.deepEqual(await store.find({ ...id, version: "QEMU emulator version 8.0" }), { missing: true }, "another version is another file");
});

test("a file rewritten (even at the same size and mtime), replaced or removed is reported broken", async () => {
  const { store, file } = await committed();
  const { mtimeMs, atime } = statSync(file.path);
  writeFileSync(file.path, "SAVED MACHINE STATE", { flag: "r+" });
  utimesSync(file.path, atime, (mtimeMs + 2000) / 1000); // a write within the same millisecond would not move it
  assert.match(JSON.stringify(await store.find(id)), /changed since it was saved/, "its mtime moved");
  utimesSync(file.path, atime, mtimeMs / 1000);
  assert.ok("found" in (await store.find(id)), "size, inode and mtime alone cannot tell");
  assert.match(JSON.stringify(await store.find(id, { verify: true })), /does not match its checksum/);
  await store.remove(id);
  assert.deepEqual(await store.find(id), { missing: true });
  const again = await committed();
  writeFileSync(`${again.file.path}.new`, "x");
  const { rename } = await import("node:fs/promises");
  await rename(`${again.file.path}.new`, again.file.path);
  assert.match(JSON.stringify(await again.store.find(id)), /changed since it was saved/, "another inode");
});

test("removeOthers keeps the given snapshots and removes drafts and the rest", async () => {
  const { dir, store } = await committed();
  const other = { ...id, key: "fedcba9876543210" };
  writeFileSync(await store.draft(other), "half written");
  writeFileSync(join(dir, "junk"), "?");
  const removed = await store.removeOthers([id]);
  assert.deepEqual(removed.sort(), [`snapshot:${snapshotName(other)}.draft`, "snapshot:junk"]);
  assert.deepEqual(readdirSync(dir).sort(), [`${snapshotName(id)}.json`, `${snapshotName(id)}.state`]);
  assert.deepEqual(
    (await store.list()).map((entry) => [entry.name, entry.problem]),
    [[snapshotName(id), undefined]],
  );
});

test("a directory snapshot (Cloud Hypervisor's config.json, state.json, memory-ranges) is committed, checked, removed whole", async () => {
  const dir = mkdtempSync(join(tmpdir(), "pcr-snapshots-"));
  const store = new FileSnapshots(dir);
  const ch = { ...id, backend: "cloud-hypervisor", version: "cloud-hypervisor v53.0.0" };
  const draft = await store.draft(ch);
  mkdirSync(draft);
  writeFileSync(join(draft, "config.json"), "{}");
  writeFileSync(join(draft, "state.json"), '{"a":1}');
  writeFileSync(join(draft, "memory-ranges"), Buffer.alloc(4096, 7));
  const file = await store.commit(ch);
  assert.equal(file.bytes, 2 + 7 + 4096);
  assert.equal(statSync(file.path).mode & 0o777, 0o555);
  assert.equal(statSync(join(file.path, "memory-ranges")).mode & 0o777, 0o444);
  assert.deepEqual(await store.find(ch, { verify: true }), { found: file });

  // One byte of one file, its size and mtime kept: only the checksum tells.
  const memory = join(file.path, "memory-ranges");
  const { mtimeMs, atime } = statSync(memory);
  writeFileSync(memory, Buffer.from([8]), { flag: "r+" });
  utimesSync(memory, atime, mtimeMs / 1000);
  assert.ok("found" in (await store.find(ch)));
  assert.match(JSON.stringify(await store.find(ch, { verify: true })), /does not match its checksum/);
  // A file added, or one removed, is a changed snapshot.
  chmodSync(file.path, 0o700);
  writeFileSync(join(file.path, "extra"), "x");
  assert.match(JSON.stringify(await store.find(ch)), /changed since it was saved/);
  rmSync(join(file.path, "extra"));
  rmSync(join(file.path, "state.json"));
  assert.match(JSON.stringify(await store.find(ch)), /changed since it was saved/);
  // A directory draft left by a killed save is replaced by the next draft, and remove takes it all.
  mkdirSync(await store.draft(ch));
  writeFileSync(join(await store.draft(ch), "..", `${snapshotName(ch)}.draft`), "a file now");
  await store.remove(ch);
  assert.deepEqual(readdirSync(dir), []);
});

test("a snapshot that holds anything but regular files is not committed", async () => {
  const dir = mkdtempSync(join(tmpdir(), "pcr-snapshots-"));
  const store = new FileSnapshots(dir);
  const draft = await store.draft(id);
  mkdirSync(draft);
  symlinkSync("/etc/shadow", join(draft, "state.json"));
  await assert.rejects(store.commit(id), /is not a regular file/);
  assert.deepEqual(await store.find(id), { missing: true });
});
