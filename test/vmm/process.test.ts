// A process is adopted only when it is still the one we started: same boot, pid, start time,
// executable, and an argument inside the VM's directory. Anything else is left alone.
import assert from "node:assert/strict";
import { chmod, copyFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { bootId, isOurProcess, killStrayProcesses, processExe, signalProcess, spawnDetached } from "../../worker/process/proc.js";

// spawnDetached unrefs its children (they must not hold the worker open): the test holds the loop.
const keepAlive = setInterval(() => {}, 1000);
const dirs: string[] = [];
after(async () => {
  clearInterval(keepAlive);
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

test("the process we spawned is ours; a changed boot id, executable, start time or directory is not", async () => {
  const vmDir = await mkdtemp(join(tmpdir(), "pcr-proc-"));
  const otherDir = await mkdtemp(join(tmpdir(), "pcr-proc-"));
  dirs.push(vmDir, otherDir);
  // The shell's argv names a file inside vmDir, as a VMM's names its console or socket.
  const spawned = await spawnDetached("/bin/sh", ["-c", "sleep 30; :", join(vmDir, "console.log")], join(vmDir, "log"));
  try {
    const identity = { pid: spawned.pid, startTime: spawned.startTime, bootId: spawned.bootId, exe: await processExe(spawned.pid) };
    assert.equal(spawned.bootId, bootId());
    assert.match(identity.exe, /\/(dash|bash|sh)$/);
    assert.equal(await isOurProcess(identity, vmDir), true);
    assert.equal(await isOurProcess({ ...identity, exe: "/usr/bin/qemu-system-x86_64" }, vmDir), false, "another executable");
    assert.equal(await isOurProcess({ ...identity, bootId: "00000000-0000-0000-0000-000000000000" }, vmDir), false, "another boot");
    assert.equal(await isOurProcess({ ...identity, startTime: "1" }, vmDir), false, "another start time");
    assert.equal(await isOurProcess(identity, otherDir), false, "argv names no file of this VM");
    assert.equal(
      await isOurProcess({ pid: identity.pid, startTime: identity.startTime }, vmDir),
      true,
      "records from before boot ids were kept",
    );
  } finally {
    signalProcess(spawned.pid, "SIGKILL");
    await spawned.exit;
  }
});

test("a live process of someone else (pid 1) with a guessed start time is never ours", async () => {
  assert.equal(await isOurProcess({ pid: 1, startTime: "0", bootId: bootId() }, "/"), false);
});

test("a stray cage helper (its VMM not exec'd yet, or gone) is killed by what it would run; a kept one is not", async () => {
  const dir = await mkdtemp(join(tmpdir(), "pcr-strays-"));
  dirs.push(dir);
  // A stand-in for pcr-cage still setting up: its argv names the VMM after `--`, its own name is the helper's.
  const helper = join(dir, "pcr-cage");
  await copyFile("/usr/bin/tail", helper);
  await chmod(helper, 0o755);
  const vmDir = join(dir, "vms", "vm-stray");
  const argv = ["-f", "/dev/null", "--", "/usr/bin/qemu-system-x86_64", `${vmDir}/qmp.sock`];
  const stray = await spawnDetached(helper, argv, join(dir, "stray.log"));
  const kept = await spawnDetached(helper, argv, join(dir, "kept.log"));
  try {
    const killed = await killStrayProcesses([join(dir, "vms")], new Set([kept.pid]), /qemu-system/, 2000);
    assert.deepEqual(
      killed.map((process) => process.pid),
      [stray.pid],
    );
    assert.equal((await stray.exit).signal, "SIGKILL");
  } finally {
    for (const process of [stray, kept]) signalProcess(process.pid, "SIGKILL");
    await kept.exit;
  }
});
