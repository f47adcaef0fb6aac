// The cage's cgroups on this host's real hierarchies (worker/cage/cgroups.ts): made with their
// limits, listed, CPU quota set and lifted, removed.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  createVmCgroups,
  describeLayout,
  listVmCgroups,
  locateCgroups,
  removeVmCgroups,
  setCpuQuota,
  vmCgroupDirs,
  vmCpuDir,
} from "../../worker/cage/cgroups.js";
import { cagedCommand } from "../../worker/process/supervisor.js";

const skip = process.getuid?.() !== 0 && "cgroups need root";

test("a VM's cgroup: memory, pids and CPU weight set; CPU quota set and lifted; removed", { skip }, async () => {
  const dir = await mkdtemp(join(tmpdir(), "pcr-cgroups-"));
  try {
    const layout = await locateCgroups(join(dir, "mounts"));
    assert.match(describeLayout(layout), /^cgroup v[12]/);
    const id = `vm-cgtest-${process.pid}`;
    const dirs = await createVmCgroups(layout, id, { memoryBytes: 300 * 1024 ** 2, pidsMax: 77, cpuWeight: 100 });
    assert.deepEqual(dirs, vmCgroupDirs(layout, id));
    assert.ok((await listVmCgroups(layout)).includes(id));
    const read = (file: string) => readFileSync(dirs.map((d) => join(d, file)).find(existsSync)!, "utf8").trim();
    if (layout.version === 1) {
      assert.equal(read("memory.limit_in_bytes"), String(300 * 1024 ** 2));
      assert.equal(read("pids.max"), "77");
      assert.equal(read("cpu.shares"), "1024");
      await setCpuQuota(layout, id, 25);
      assert.equal(readFileSync(join(vmCpuDir(layout, id), "cpu.cfs_quota_us"), "utf8").trim(), "25000");
      await setCpuQuota(layout, id, undefined);
      assert.equal(readFileSync(join(vmCpuDir(layout, id), "cpu.cfs_quota_us"), "utf8").trim(), "-1");
    } else {
      assert.equal(read("memory.max"), String(300 * 1024 ** 2));
      assert.equal(read("pids.max"), "77");
      await setCpuQuota(layout, id, 25);
      assert.equal(readFileSync(join(vmCpuDir(layout, id), "cpu.max"), "utf8").trim(), "25000 100000");
    }
    assert.deepEqual(await removeVmCgroups(layout, id), []);
    assert.ok(dirs.every((d) => !existsSync(d)));
    assert.ok(!(await listVmCgroups(layout)).includes(id));
    assert.deepEqual(await removeVmCgroups(layout, id), [], "idempotent");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("the helper's argv: identity, root, every bind, device, cgroup and TAP, then the program after --", () => {
  const [helper, argv] = cagedCommand(
    {
      helper: "/opt/pcr-cage",
      uid: 40007,
      gid: 40007,
      root: "/run/procurator/cage/vm-1",
      readOnly: ["/usr", "/nix/store/k-vmlinux"],
      readWrite: ["/var/lib/procurator/vms/vm-1"],
      devices: ["/dev/kvm"],
      cgroups: ["/sys/fs/cgroup/memory/procurator-vms/vm-1"],
      nofile: 4096,
      taps: [{ name: "pcr-1", fd: 7 }],
      tapOwners: ["pcr-2"],
    },
    "/usr/bin/qemu-system-x86_64",
    ["-name", "pcr-vm-1"],
  );
  assert.equal(helper, "/opt/pcr-cage");
  assert.deepEqual(argv, [
    ...["--uid", "40007", "--gid", "40007", "--root", "/run/procurator/cage/vm-1", "--nofile", "4096"],
    ...["--ro", "/usr", "--ro", "/nix/store/k-vmlinux", "--rw", "/var/lib/procurator/vms/vm-1", "--dev", "/dev/kvm"],
    ...["--cgroup", "/sys/fs/cgroup/memory/procurator-vms/vm-1", "--tap", "pcr-1:7", "--tap-owner", "pcr-2"],
    ...["--", "/usr/bin/qemu-system-x86_64", "-name", "pcr-vm-1"],
  ]);
});
