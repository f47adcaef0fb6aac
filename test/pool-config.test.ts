// --pool entries (worker/pool-config.ts): parsed and checked at start, with every mistake named.
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { machineKey } from "../worker/core/pools.js";
import { checkPoolsSupported, describePools, parsePools } from "../worker/pool-config.js";
import { FileSnapshots } from "../worker/state/snapshots.js";
import { LIMITS } from "./core/fakes.js";

const dir = mkdtempSync(join(tmpdir(), "pcr-pool-config-"));
const spec = {
  hostname: "agent",
  kernel: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-kernel/bzImage",
  initrd: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-initrd/initrd",
  cmdline: "console=ttyS0",
  cpu: 1,
  memoryBytes: 256 * 1024 * 1024,
};
const file = (name: string, body: unknown) => {
  const path = join(dir, name);
  writeFileSync(path, typeof body === "string" ? body : JSON.stringify(body));
  return path;
};

test("entries: hot VMs, +disk, names from the file (a store path's hash left out)", () => {
  const agent = file("agent.json", spec);
  const stored = file("0123456789abcdfghijklmnpqrsvwxyz-pcr-pool-big.json", { ...spec, memoryBytes: 512 * 1024 * 1024 });
  const pools = parsePools([`${agent}:2`, `${stored}:0+disk`], LIMITS);
  assert.deepEqual(
    pools.map(({ name, hot, disk }) => ({ name, hot, disk })),
    [
      { name: "agent", hot: 2, disk: false },
      { name: "pcr-pool-big", hot: 0, disk: true },
    ],
  );
  assert.equal(pools[0]!.spec.memoryBytes, 256 * 1024 * 1024);
});

test("every mistake is refused with the entry named", () => {
  const agent = file("agent2.json", spec);
  const cases: [string, RegExp][] = [
    [`${agent}`, /expected <spec\.json>:<N>\[\+disk\]/],
    [`${agent}:0`, /0 hot VMs needs \+disk/],
    [`${agent}:65`, /at most 64/],
    [`${file("bad.json", "{")}:1`, /not valid JSON/],
    [`${file("typo.json", { ...spec, cpus: 2 })}:1`, /unknown key/],
    [`${file("disk.json", { ...spec, dataDiskBytes: 1024 * 1024 })}:1`, /no data disk/],
    [`${file("outside.json", { ...spec, kernel: "/etc/passwd" })}:1`, /not a path inside \/nix\/store/],
    [`${join(dir, "missing.json")}:1`, /ENOENT/],
  ];
  for (const [entry, problem] of cases) {
    assert.throws(
      () => parsePools([entry], LIMITS),
      (err: Error) => err.message.includes(entry) && problem.test(err.message),
      entry,
    );
  }
  assert.throws(() => parsePools([`${agent}:1`, `${file("twin.json", spec)}:2`], LIMITS), /the same machine as pool agent2/);
});

test("a backend without snapshots refuses +disk pools; without an agent, any pool", () => {
  const pools = parsePools([`${file("agent3.json", spec)}:1+disk`], LIMITS);
  assert.throws(
    () => checkPoolsSupported(pools, { name: "x", capabilities: { dataDisk: true, agent: "vsock", snapshot: false } }),
    /\+disk needs snapshots/,
  );
  assert.throws(
    () => checkPoolsSupported(pools, { name: "x", capabilities: { dataDisk: true, agent: false, snapshot: true } }),
    /guest agent/,
  );
  checkPoolsSupported(pools, { name: "x", capabilities: { dataDisk: true, agent: "virtio-serial", snapshot: true } });
});

test("--check lists the pools and the snapshots on disk, whose they are and what is wrong", async () => {
  const pools = parsePools([`${file("agent4.json", spec)}:2+disk`], LIMITS);
  const snapshots = new FileSnapshots(join(dir, "snapshots"));
  const id = { key: machineKey(pools[0]!.spec), backend: "qemu", version: "QEMU 7.2" };
  writeFileSync(await snapshots.draft(id), "state");
  await snapshots.commit(id);
  const orphan = { key: "ffffffffffffffff", backend: "qemu", version: "QEMU 7.2" };
  writeFileSync(await snapshots.draft(orphan), "old");
  await snapshots.commit(orphan);
  const text = await describePools(pools, snapshots);
  assert.match(text, /agent4: 2 hot \+ snapshot on disk; machine [0-9a-f]{16} \(1 vCPU, 256 MiB; 512 MiB held hot\)/);
  assert.match(text, new RegExp(`${id.key}-qemu-[0-9a-f]{12}: 0\\.0 MiB, qemu QEMU 7\\.2; pool agent4`));
  assert.match(text, /ffffffffffffffff-qemu-[0-9a-f]{12}: .*; no pool \(removed at start\)/);
});
