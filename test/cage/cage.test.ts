// An escaped VMM, simulated. Two VMs' cages are made by the real adapter (worker/cage/) and built
// by the real helper (cage/pcr-cage.c); VM B runs a stand-in VMM (sleep), and a probe program
// (test/fixtures/cage/probe.c) runs in VM A's cage in place of its VMM, through the same
// supervisor a VMM starts through, and tries what a guest that took over its VMM would try next.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chownSync, existsSync, mkdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { pino } from "pino";
import { createCage, defaultCageHelper } from "../../worker/cage/cage.js";
import { locateCgroups, vmCgroupDirs } from "../../worker/cage/cgroups.js";
import type { CagePort, CageSpec } from "../../worker/ports/index.js";
import { spawnSupervised, type Supervised } from "../../worker/process/supervisor.js";
import { REPO_ROOT } from "../helpers/repo.js";

const helper = defaultCageHelper();
const skip =
  (process.getuid?.() !== 0 && "the cage needs root") || (!existsSync(helper) && `the cage helper ${helper} is not built (scripts/setup)`);
const MIB = 1024 ** 2;

let dir: string;
let cage: CagePort;
let probe: string;
const vms: Record<"a" | "b", { id: string; vmDir: string; secrets: string; spec?: CageSpec }> = {
  a: { id: "vm-cagetest-a", vmDir: "", secrets: "" },
  b: { id: "vm-cagetest-b", vmDir: "", secrets: "" },
};
let other: Supervised;
let storePath: string;

/** Runs the probe in VM A's cage (or `spec`), returns its lines and how it ended. */
async function runProbe(args: string[], spec = vms.a.spec!): Promise<{ lines: string[]; signal: string | null; code: number | null }> {
  const logPath = join(dir, `probe-${Date.now()}.log`);
  const process = await spawnSupervised(probe, args, { logPath, install: "gcc", cage: spec });
  const end = await process.ended;
  const lines = (await readFile(logPath, "utf8")).split("\n").filter(Boolean);
  return { lines, signal: end.signal, code: end.code };
}

describe("an escaped VMM, simulated: a probe in one VM's cage", { skip, concurrency: false }, () => {
  // The supervisor unrefs its children (they must not hold a worker open): the test waits for them.
  let keepAlive: NodeJS.Timeout;
  before(async () => {
    keepAlive = setInterval(() => {}, 1000);
    dir = await mkdtemp(join(tmpdir(), "pcr-cage-"));
    probe = join(dir, "probe");
    execFileSync("gcc", ["-O1", "-o", probe, join(REPO_ROOT, "test", "fixtures", "cage", "probe.c")]);
    const state = join(dir, "state");
    mkdirSync(state);
    writeFileSync(join(state, "audit.log"), "the worker's own state\n", { mode: 0o600 });
    storePath = join(dir, "nix-store-stand-in");
    mkdirSync(storePath);
    writeFileSync(join(storePath, "vmlinux"), "a kernel");
    cage = createCage({
      uidRange: { first: 45000, last: 45099 },
      memoryOverheadBytes: 24 * MIB,
      pidsMax: 24,
      nofile: 64,
      runtimeDir: join(dir, "run"),
      logger: pino({ level: "silent" }),
    });
    for (const vm of Object.values(vms)) {
      vm.vmDir = join(state, "vms", vm.id);
      vm.secrets = join(dir, "secrets", vm.id);
      mkdirSync(vm.vmDir, { recursive: true, mode: 0o700 });
      mkdirSync(vm.secrets, { recursive: true, mode: 0o700 });
      writeFileSync(join(vm.secrets, "token"), `secret of ${vm.id}`, { mode: 0o400 });
      writeFileSync(join(vm.vmDir, "vm.json"), "{}", { mode: 0o600 });
      vm.spec = await cage.prepare(vm.id, { memoryBytes: 16 * MIB, vmDir: vm.vmDir, shared: vm.secrets, storePaths: [storePath] });
      // What its VMM makes at start (as its uid), then sealed by the worker once the VMM runs.
      for (const name of ["console.log", "agent.sock"]) {
        writeFileSync(join(vm.vmDir, name), "");
        chownSync(join(vm.vmDir, name), vm.spec.uid, vm.spec.gid);
      }
      await cage.seal(vm.id);
    }
    other = await spawnSupervised("/usr/bin/sleep", ["600"], { logPath: join(dir, "b.log"), install: "coreutils", cage: vms.b.spec });
    // Its cage is up once the stand-in VMM runs as B's uid.
    for (let i = 0; i < 100 && !(await vmmInside(other.pid)); i++) await new Promise((resolve) => setTimeout(resolve, 20));
  });

  after(async () => {
    clearInterval(keepAlive);
    await other?.kill();
    for (const vm of Object.values(vms)) await cage?.release(vm.id);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test("the VMM runs as its own uid, with no capabilities, no_new_privs and a seccomp filter", async () => {
    const pid = (await vmmInside(other.pid))!;
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const field = (name: string) => new RegExp(`^${name}:\\s+(.*)$`, "m").exec(status)?.[1]?.trim();
    assert.equal(field("Uid")!.split(/\s+/)[0], String(vms.b.spec!.uid));
    assert.notEqual(vms.a.spec!.uid, vms.b.spec!.uid);
    assert.equal(field("CapEff"), "0000000000000000");
    assert.equal(field("CapBnd"), "0000000000000000");
    assert.equal(field("NoNewPrivs"), "1");
    assert.equal(field("Seccomp"), "2");
    // Namespaces of its own: mount, PID, IPC, UTS.
    for (const ns of ["mnt", "pid", "ipc", "uts"])
      assert.notEqual(readlinkSync(`/proc/${pid}/ns/${ns}`), readlinkSync(`/proc/self/ns/${ns}`), ns);
  });

  test("it cannot read another VM's secrets or directory, the worker's state or /etc/shadow; it can use its own", async () => {
    const { lines } = await runProbe([
      ...["read", join(vms.b.secrets, "token"), "list", vms.b.vmDir, "read", join(dir, "state", "audit.log"), "read", "/etc/shadow"],
      ...["list", "/var/lib", "read", join(vms.a.secrets, "token"), "write", join(vms.a.vmDir, "console.log")],
    ]);
    assert.deepEqual(lines, [
      `read ${join(vms.b.secrets, "token")} ENOENT`,
      `list ${vms.b.vmDir} ENOENT`,
      `read ${join(dir, "state", "audit.log")} ENOENT`,
      "read /etc/shadow ENOENT",
      "list /var/lib ENOENT",
      `read ${join(vms.a.secrets, "token")} ok`,
      `write ${join(vms.a.vmDir, "console.log")} ok`,
    ]);
  });

  test("it cannot remove, replace or plant links in place of the files the worker keeps or reads in its directory", async () => {
    // The worker's record of the VM, and what the VMM made at start and the worker then sealed.
    const record = join(vms.a.vmDir, "vm.json");
    const consoleFile = join(vms.a.vmDir, "console.log");
    const agentSocket = join(vms.a.vmDir, "agent.sock");
    const { lines } = await runProbe([
      ...["unlink", record, "write", record, "plant", record, "plant", consoleFile, "plant", agentSocket],
      ...["plant", join(vms.a.vmDir, "vm.json.1.1.tmp"), "write", join(vms.a.vmDir, "new-file")],
    ]);
    assert.deepEqual(lines, [
      `unlink ${record} EPERM`,
      `write ${record} EACCES`,
      `plant ${record} EPERM`,
      `plant ${consoleFile} EPERM`,
      `plant ${agentSocket} EPERM`,
      // New names it may make (its VMM makes its sockets and console so): the worker never follows them.
      `plant ${join(vms.a.vmDir, "vm.json.1.1.tmp")} ok`,
      `write ${join(vms.a.vmDir, "new-file")} ok`,
    ]);
    assert.equal(readFileSync(record, "utf8"), "{}", "the record is the worker's");
  });

  test("it cannot write to the store, its secrets or the host's programs", async () => {
    const { lines } = await runProbe([
      ...["write", join(storePath, "vmlinux"), "write", join(storePath, "planted"), "write", join(vms.a.secrets, "token")],
      ...["write", "/usr/bin/qemu-system-x86_64", "write", "/planted"],
    ]);
    assert.deepEqual(lines, [
      `write ${join(storePath, "vmlinux")} EROFS`,
      `write ${join(storePath, "planted")} EROFS`,
      `write ${join(vms.a.secrets, "token")} EROFS`,
      "write /usr/bin/qemu-system-x86_64 EROFS",
      "write /planted EROFS",
    ]);
  });

  test("it cannot signal or ptrace another VM's VMM, nor make namespaces or mounts", async () => {
    const otherVmm = (await vmmInside(other.pid))!;
    const { lines } = await runProbe([
      ...["kill", String(otherVmm), "kill", String(other.pid), "ptrace", String(otherVmm), "kill", "1"],
      ...["unshare", "user", "mount", "/tmp"],
    ]);
    // Another VM's processes do not exist in its PID namespace; its own PID 1 is itself, and
    // seccomp refuses ptrace, namespaces and mounts before any permission check.
    assert.deepEqual(lines.slice(0, 2), [`kill ${otherVmm} ESRCH`, `kill ${other.pid} ESRCH`]);
    assert.equal(lines[2], `ptrace ${otherVmm} EPERM`);
    assert.deepEqual(lines.slice(4), ["unshare user EPERM", "mount /tmp EPERM"]);
    assert.ok(await vmmInside(other.pid), "VM B's VMM still runs");
  });

  test("the helper and its VMM are in every one of the VM's cgroups (joined as one thread: tasks on v1)", async () => {
    const vmm = (await vmmInside(other.pid))!;
    for (const cgroupDir of vms.b.spec!.cgroups) {
      const members = readFileSync(join(cgroupDir, "cgroup.procs"), "utf8").split("\n").filter(Boolean).map(Number);
      assert.ok(members.includes(other.pid) && members.includes(vmm), `${cgroupDir} holds ${members.join(", ")}`);
    }
    assert.ok(vms.b.spec!.cgroups.length > 0, "the VM has cgroups");
  });

  test("past its memory limit it alone is OOM-killed, inside its cgroup", async () => {
    const { lines, signal } = await runProbe(["eat", "256"]);
    assert.equal(signal, "SIGKILL", `the probe ended by the OOM killer: ${lines.join("; ")}`);
    assert.deepEqual(lines, [], "it never finished eating");
    const layout = await locateCgroups(join(dir, "run", "cgroup"));
    if (layout.version === 1) {
      const control = readFileSync(join(vmCgroupDirs(layout, vms.a.id)[0]!, "memory.oom_control"), "utf8");
      assert.match(control, /oom_kill [1-9]/, control);
    }
    assert.ok(await vmmInside(other.pid), "VM B's VMM still runs");
  });

  test("it cannot fork past its pids limit", async () => {
    const { lines } = await runProbe(["fork", "100"]);
    assert.match(lines[0] ?? "", /^forked (\d+) of 100 EAGAIN$/);
    const forked = Number(/forked (\d+)/.exec(lines[0]!)![1]);
    assert.ok(forked < 24, `at most the limit: ${forked}`);
  });

  test("it cannot hold more open files than its limit (RLIMIT_NOFILE)", async () => {
    const { lines } = await runProbe(["hold", "100"]);
    assert.match(lines[0] ?? "", /^held \d+ of 100 EMFILE$/);
    assert.ok(Number(/held (\d+)/.exec(lines[0]!)![1]) <= 64);
  });
});

/** The caged VMM: the cage helper's one child (PID 1 of its namespace), once it runs as its uid. */
async function vmmInside(helperPid: number): Promise<number | undefined> {
  const children = await readFile(`/proc/${helperPid}/task/${helperPid}/children`, "utf8").catch(() => "");
  const pid = Number(children.trim().split(" ")[0]);
  if (!pid) return undefined;
  const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
  return /^Uid:\s+0\s/m.test(status) || !status ? undefined : pid;
}
