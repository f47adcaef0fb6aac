// The file record repo (createFileRecords) on a real filesystem: atomic records and the bounded console.
import assert from "node:assert/strict";
import { appendFile, lstat, mkdtemp, readdir, readFile, rm, stat, symlink, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { createFileRecords } from "../../worker/state/vm-records.js";

const base = await mkdtemp(join(tmpdir(), "pcr-records-"));
after(() => rm(base, { recursive: true, force: true }));

test(
  "records are saved atomically and loaded back; a torn record is reported, not fatal; " + "a crashed save's temp file is removed",
  async () => {
    const repo = await createFileRecords({ stateDir: base });
    await repo.createDir("vm-a");
    const record = { id: "vm-a", status: "running", secretNames: [] } as unknown as Parameters<typeof repo.save>[0];
    await repo.save(record);
    await repo.createDir("vm-torn");
    await appendFile(join(repo.vmDir("vm-torn"), "vm.json"), "{ half");
    await appendFile(join(repo.vmDir("vm-a"), "vm.json.4242.7.tmp"), "{ cut short");
    // Statuses no worker writes: a gateway's `lost`, and damage.
    for (const status of ["lost", "exploded"]) {
      await repo.createDir(`vm-${status}`);
      await repo.save({ ...record, id: `vm-${status}`, status } as typeof record);
    }
    const { records, unreadable } = await repo.loadAll();
    assert.deepEqual(
      records.map((r) => r.id),
      ["vm-a"],
    );
    assert.deepEqual(unreadable.sort(), ["vm-exploded", "vm-lost", "vm-torn"]);
    assert.deepEqual((await readdir(repo.vmDir("vm-a"))).sort(), ["vm.json"]);
    for (const id of ["vm-a", "vm-torn", "vm-lost", "vm-exploded"]) await repo.remove(id);
  },
);

test("the console is bounded: old bytes are dropped, disk use stays bounded, offsets stay monotonic", async () => {
  const repo = await createFileRecords({ stateDir: base });
  await repo.createDir("vm-c");
  const path = repo.consolePath("vm-c");
  const line = (n: number) => `line ${String(n).padStart(6, "0")}\n`; // 12 bytes
  let written = 0;
  for (let chunk = 0; chunk < 100; chunk++) {
    const text = Array.from({ length: 1000 }, (_, i) => line(chunk * 1000 + i)).join("");
    await appendFile(path, text);
    written += text.length;
    await repo.trimConsole("vm-c", 64 * 1024);
  }
  const info = await stat(path);
  assert.equal(info.size, written, "the file keeps its logical size: the VMM appends at the same offsets");
  assert.ok(info.blocks * 512 <= 64 * 1024 * 1.25 + 2 * 4096 + 12_000, `disk use ${info.blocks * 512} bytes is bounded`);

  // Reading from 0 starts at the oldest byte kept, and nextOffset says where that was.
  const first = await repo.readConsole("vm-c", 0n, 4096);
  assert.ok(first.nextOffset > 4096n, "offsets of dropped bytes are skipped, not reused");
  const startOffset = Number(first.nextOffset) - first.data.length;
  assert.equal(startOffset % 4096, 0);
  assert.ok(!first.data.includes(0), "no zeros from the punched hole");
  // The kept tail reads on to the end, monotonic, and ends with the last line written.
  let offset = first.nextOffset;
  let last = Buffer.from(first.data);
  for (;;) {
    const next = await repo.readConsole("vm-c", offset, 65536);
    if (next.data.length === 0) break;
    assert.equal(next.nextOffset, offset + BigInt(next.data.length));
    offset = next.nextOffset;
    last = Buffer.from(next.data);
  }
  assert.equal(Number(offset), written);
  assert.ok(last.toString().endsWith(line(99_999)));
  const tail = Buffer.from(await repo.readConsoleTail("vm-c", 24)).toString();
  assert.equal(tail, line(99_998) + line(99_999));
});

test("a console file that shrinks (Cloud Hypervisor creates it again on a guest reboot) is read from its new start", async () => {
  const repo = await createFileRecords({ stateDir: base });
  await repo.createDir("vm-s");
  const path = repo.consolePath("vm-s");
  // A long first boot, trimmed so that the kept bytes start far into the file.
  await writeFile(path, "first boot line\n".repeat(20_000));
  await repo.trimConsole("vm-s", 16 * 1024);
  const before = await repo.readConsole("vm-s", 0n, 1 << 20);
  assert.ok(before.nextOffset > 200_000n && Number(before.nextOffset) - before.data.length > 0, "trimmed: the console starts past 0");
  // The reboot truncates the file and the new boot writes from offset 0.
  await truncate(path, 0);
  await appendFile(path, "second boot\n");
  assert.equal(Buffer.from(await repo.readConsoleTail("vm-s", 4096)).toString(), "second boot\n");
  assert.equal(Buffer.from(await repo.readConsoleTail("vm-s", 5)).toString(), "boot\n");
  // A reader whose offset is past the new end is not stuck there: it gets the new boot's output.
  const after = await repo.readConsole("vm-s", before.nextOffset, 4096);
  assert.equal(Buffer.from(after.data).toString(), "second boot\n");
  assert.equal(after.nextOffset, 12n);
  assert.equal(Buffer.from((await repo.readConsole("vm-s", 0n, 4096)).data).toString(), "second boot\n");
  // An empty file after the truncation reads as empty, without throwing.
  await truncate(path, 0);
  assert.equal((await repo.readConsoleTail("vm-s", 4096)).length, 0);
  assert.deepEqual(await repo.readConsole("vm-s", 12n, 4096), { data: new Uint8Array(0), nextOffset: 0n }, "start over at 0");
  // A restarted worker reads the same (the start offset it keeps on disk was put back).
  await appendFile(path, "third\n");
  const fresh = await createFileRecords({ stateDir: base });
  assert.equal(Buffer.from(await fresh.readConsoleTail("vm-s", 4096)).toString(), "third\n");
});

test("links a caged VMM planted in its directory are never followed: not the console, not a temp name, not console.start", async () => {
  const repo = await createFileRecords({ stateDir: base });
  const dir = await repo.createDir("vm-planted");
  const victim = join(base, "host-file");
  await writeFile(victim, "the host's own bytes");
  // The console a link to a host file: reads give nothing of it.
  await symlink(victim, repo.consolePath("vm-planted"));
  assert.equal((await repo.readConsole("vm-planted", 0n, 4096)).data.length, 0);
  assert.equal((await repo.readConsoleTail("vm-planted", 4096)).length, 0);
  await repo.trimConsole("vm-planted", 64 * 1024);
  // console.start and every name a save could use planted as links: the worker writes around them.
  await rm(repo.consolePath("vm-planted"));
  await writeFile(repo.consolePath("vm-planted"), Buffer.alloc(400 * 1024, 0x41));
  await symlink(victim, join(dir, "console.start"));
  await repo.trimConsole("vm-planted", 64 * 1024);
  const record = { id: "vm-planted", status: "running", secretNames: [] } as unknown as Parameters<typeof repo.save>[0];
  for (let i = 0; i < 3; i++) await repo.save(record);
  assert.equal(await readFile(victim, "utf8"), "the host's own bytes");
  assert.ok((await lstat(join(dir, "vm.json"))).isFile());
  await repo.remove("vm-planted");
});
