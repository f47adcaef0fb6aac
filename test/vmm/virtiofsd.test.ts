// virtiofsd for real: QEMU's C virtiofsd from Debian (the Rust one is production's, not here; its
// argv style is covered by the style detection and argv tests with a stand-in script).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, before, test } from "node:test";
import { pino } from "pino";
import { WorkerError } from "../../worker/core/errors.js";
import { detectAccelerator } from "../../worker/vmm/accel.js";
import { isSameLiveProcess } from "../../worker/process/proc.js";
import { extraCmdlineFor, qemuArgv } from "../../worker/vmm/qemu/backend.js";
import { detectVirtiofsd, startVirtiofsd, virtiofsdArgs, type VirtiofsdHandle } from "../../worker/vmm/cloud-hypervisor/virtiofsd.js";
import { defaultCageHelper } from "../../worker/cage/cage.js";
import { testCage } from "../helpers/cage.js";
import { virtiofsdCage } from "../../worker/vmm/cloud-hypervisor/backend.js";
import { REPO_ROOT, testGuest } from "../helpers/repo.js";
import { FAKE_RUST_VIRTIOFSD } from "../fixtures/ch/fixtures.js";

const C_VIRTIOFSD = "/usr/lib/qemu/virtiofsd";
const skipNoVirtiofsd = !existsSync(C_VIRTIOFSD) && `${C_VIRTIOFSD} missing (Debian package qemu-system-common)`;
const logger = pino({ level: "silent" });

let keepAlive: NodeJS.Timeout;
before(() => (keepAlive = setInterval(() => {}, 1000)));
after(() => clearInterval(keepAlive));
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
});

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test("argv for both implementations", () => {
  assert.deepEqual(virtiofsdArgs("c", "/v/fs.sock", "/s", true), [
    "--socket-path=/v/fs.sock",
    "-o",
    "source=/s",
    "-o",
    "cache=none",
    "-o",
    "sandbox=namespace",
  ]);
  assert.deepEqual(virtiofsdArgs("rust", "/v/fs.sock", "/s", true), [
    "--socket-path",
    "/v/fs.sock",
    "--shared-dir",
    "/s",
    "--cache",
    "never",
    "--sandbox",
    "namespace",
    "--readonly",
  ]);
  assert.ok(!virtiofsdArgs("rust", "/v/fs.sock", "/s", false).includes("--readonly"));
  const caged = virtiofsdArgs("rust", "/v/fs.sock", "/s", true, true);
  assert.deepEqual(
    caged.slice(caged.indexOf("--sandbox"), caged.indexOf("--sandbox") + 2),
    ["--sandbox", "none"],
    "the cage is its sandbox",
  );
  assert.ok(!caged.includes("--seccomp"), "its own seccomp filter stays at its default (kill)");
});

test("the flavour is read from --help: QEMU's C virtiofsd is 'c' without read-only; a --shared-dir binary is 'rust'", {
  skip: skipNoVirtiofsd,
}, async () => {
  assert.deepEqual(await detectVirtiofsd(C_VIRTIOFSD), { style: "c", readOnlyFlag: false });
  const dir = await tempDir("pcr-vfsd-style-");
  const rustLike = join(dir, "virtiofsd");
  await writeFile(
    rustLike,
    '#!/bin/sh\necho "Usage: virtiofsd [OPTIONS] --shared-dir <shared-dir>"\necho "      --readonly  Mark the export read-only"\n',
  );
  await chmod(rustLike, 0o755);
  assert.deepEqual(await detectVirtiofsd(rustLike), { style: "rust", readOnlyFlag: true });
  const oldRust = join(dir, "virtiofsd-old");
  await writeFile(oldRust, '#!/bin/sh\necho "Usage: virtiofsd [OPTIONS] --shared-dir <shared-dir>"\n');
  await chmod(oldRust, 0o755);
  assert.deepEqual(await detectVirtiofsd(oldRust), { style: "rust", readOnlyFlag: false });
});

test("QEMU's C virtiofsd starts, creates its socket, and exits when killed", { skip: skipNoVirtiofsd }, async () => {
  const dir = await tempDir("pcr-vfsd-");
  const shared = join(dir, "share");
  await mkdir(shared);
  await writeFile(join(shared, "token"), "s3cret");
  const socketPath = join(dir, "virtiofs.sock");
  const started = Date.now();
  const handle: VirtiofsdHandle = await startVirtiofsd({ binary: C_VIRTIOFSD, socketPath, sharedDir: shared, readOnly: false, logger });
  const startMs = Date.now() - started;
  cleanups.push(() => handle.kill());
  assert.ok((await stat(socketPath)).isSocket(), "vhost-user socket created");
  assert.equal(await isSameLiveProcess(handle.pid, handle.startTime), true);
  assert.match(readFileSync(`/proc/${handle.pid}/cmdline`, "utf8"), /source=/);
  console.log(`# virtiofsd ready in ${startMs} ms`);

  const exit = await handle.kill();
  assert.equal(exit.signal, "SIGKILL");
  assert.match(exit.description, /virtiofsd killed by SIGKILL/);
  assert.equal(await isSameLiveProcess(handle.pid, handle.startTime), false);
  assert.deepEqual(await handle.kill(), exit, "idempotent");
  assert.equal(existsSync(socketPath), false, "socket removed after exit");
});

test("a read-only share is refused with the C daemon (it cannot export read-only): FAILED_PRECONDITION, nothing started", {
  skip: skipNoVirtiofsd,
}, async () => {
  const dir = await tempDir("pcr-vfsd-ro-");
  const socketPath = join(dir, "fs.sock");
  await assert.rejects(startVirtiofsd({ binary: C_VIRTIOFSD, socketPath, sharedDir: dir, readOnly: true, logger }), (err: unknown) => {
    assert.ok(err instanceof WorkerError);
    assert.equal(err.code, "FAILED_PRECONDITION");
    assert.match(err.message, /cannot export a share read-only; install the Rust virtiofsd/);
    return true;
  });
  assert.equal(existsSync(socketPath), false);
});

test("a virtiofsd that fails (shared dir missing) is reported with its last words", { skip: skipNoVirtiofsd }, async () => {
  const dir = await tempDir("pcr-vfsd-bad-");
  await assert.rejects(
    startVirtiofsd({ binary: C_VIRTIOFSD, socketPath: join(dir, "fs.sock"), sharedDir: join(dir, "missing"), readOnly: false, logger }),
    (err: unknown) => {
      assert.ok(err instanceof WorkerError);
      assert.match(err.message, /virtiofsd failed to start: virtiofsd exited with code 1: .*missing/);
      return true;
    },
  );
});

test("caged, virtiofsd runs as the VM's uid under seccomp, seeing its share and nothing of the host's (Rust stand-in)", {
  skip: (process.getuid?.() !== 0 && "the cage needs root") || (!existsSync(defaultCageHelper()) && "the cage helper is not built"),
}, async () => {
  const runtimeDir = await tempDir("pcr-vfsd-cage-");
  const vmDir = await tempDir("pcr-vfsd-vm-");
  const shared = await tempDir("pcr-vfsd-share-");
  await writeFile(join(shared, "token"), "s3cret", { mode: 0o400 });
  await chmod(shared, 0o700);
  const cage = testCage(runtimeDir, 45200);
  const made = await cage.prepare("vm-vfsd-caged", { memoryBytes: 64 * 1024 ** 2, vmDir, shared, storePaths: ["/nix/store/k-vmlinux"] });
  cleanups.push(() => cage.release("vm-vfsd-caged"));
  // The stand-in is a Node script of this checkout: bound in as a Nix-built virtiofsd's closure would be.
  const caged = virtiofsdCage({ ...made, readOnly: [...made.readOnly, REPO_ROOT] }, shared);
  assert.deepEqual(caged.readOnly, ["/usr", "/etc/ld.so.cache", shared, REPO_ROOT], "not the VM's boot files");
  const logPath = join(vmDir, "virtiofsd.log");
  const handle = await startVirtiofsd({
    binary: FAKE_RUST_VIRTIOFSD,
    socketPath: join(vmDir, "fs.sock"),
    sharedDir: shared,
    readOnly: true,
    logger,
    logPath,
    cage: caged,
  });
  cleanups.push(() => handle.kill());
  const report = JSON.parse(/fake-virtiofsd: (.*)/.exec(await readFile(logPath, "utf8"))![1]!);
  assert.deepEqual(
    report,
    {
      uid: made.uid,
      sandbox: "none",
      readonly: true,
      share: { token: "s3cret" },
      sees: { "/etc/shadow": false, "/etc/passwd": false, "/var/lib": false, "/root": false, "/nix/store": false },
      readsShadow: false,
    },
    "its own uid; the cage is its sandbox; the share readable; nothing else of the host",
  );
  const inside = Number((await readFile(`/proc/${handle.pid}/task/${handle.pid}/children`, "utf8")).trim().split(" ")[0]);
  const status = await readFile(`/proc/${inside}/status`, "utf8");
  assert.match(status, /^Seccomp:\s+2$/m);
  assert.match(status, /^NoNewPrivs:\s+1$/m);
  assert.match(status, /^CapEff:\s+0+$/m);
  assert.ok((await readFile(`/proc/${inside}/cgroup`, "utf8")).includes("procurator-vms/vm-vfsd-caged"), "in the VM's cgroup");
  // Killed, its helper goes at once and the caged process a moment later: release waits for it,
  // and leaves no cgroup behind.
  await handle.kill();
  await cage.release("vm-vfsd-caged");
  for (const dir of made.cgroups) assert.ok(!existsSync(dir), `${dir} removed`);
});

test("caged, QEMU's C virtiofsd is refused before it starts (it needs root for its own sandbox)", async () => {
  const dir = await tempDir("pcr-vfsd-c-");
  const cage = { helper: "/h", uid: 45201, gid: 45201, root: dir, readOnly: [], readWrite: [dir], devices: [], cgroups: [], nofile: 1024 };
  await assert.rejects(
    startVirtiofsd({
      binary: "/x/virtiofsd",
      socketPath: join(dir, "fs.sock"),
      sharedDir: dir,
      readOnly: false,
      logger,
      flavour: { style: "c", readOnlyFlag: false },
      cage,
    }),
    (err: unknown) => err instanceof WorkerError && err.code === "FAILED_PRECONDITION" && /cannot run caged/.test(err.message),
  );
  assert.ok(!existsSync(join(dir, "fs.sock")));
});

test("a missing binary is FAILED_PRECONDITION naming it", async () => {
  const dir = await tempDir("pcr-vfsd-none-");
  await assert.rejects(
    startVirtiofsd({ binary: "/nonexistent/virtiofsd", socketPath: join(dir, "fs.sock"), sharedDir: dir, readOnly: true, logger }),
    (err: unknown) => err instanceof WorkerError && err.code === "FAILED_PRECONDITION" && err.message.includes("/nonexistent/virtiofsd"),
  );
});

// The share for real: QEMU is the vhost-user frontend here (Cloud Hypervisor would be in
// production; the vhost-user-fs protocol between VMM and virtiofsd is the same), the guest mounts
// the share with `pcr.share=virtiofs` as the guest contract says, and reads a file through it.
const guest = testGuest();
test("a real guest mounts the share served by QEMU's C virtiofsd (QEMU as the vhost-user frontend)", {
  skip: skipNoVirtiofsd || ("skip" in guest ? guest.skip : false),
}, async (t) => {
  if (!("spec" in guest)) return;
  const { accel } = await detectAccelerator({ probeTimeoutMs: 10_000, probeKernel: { kernel: guest.spec.kernel } });
  const dir = await tempDir("pcr-vfsd-guest-");
  const shared = join(dir, "share");
  await mkdir(shared, { mode: 0o700 });
  await writeFile(join(shared, "token"), "s3cret-over-virtiofs\n", { mode: 0o400 });
  const socketPath = join(dir, "virtiofs.sock");
  // Not read-only (the C daemon cannot be): this test shows why the worker never uses it for secrets.
  const virtiofsd = await startVirtiofsd({ binary: C_VIRTIOFSD, socketPath, sharedDir: shared, readOnly: false, logger });
  cleanups.push(() => virtiofsd.kill());

  const command = Buffer.from(
    "cat /run/secrets/token; touch /run/secrets/x 2>/dev/null && echo WRITABLE || echo READONLY; " +
      "mount -o remount,rw /run/secrets && echo planted >/run/secrets/planted && echo REMOUNTED-RW",
  ).toString("base64");
  const consolePath = join(dir, "console.log");
  const memMiB = guest.spec.memoryBytes / (1024 * 1024);
  const argv = [
    ...qemuArgv(
      {
        id: "vfsd-test",
        kernel: guest.spec.kernel,
        initrd: guest.spec.initrd,
        image: guest.spec.image,
        cmdline: [guest.spec.cmdline, "pcr.share=virtiofs", `pcr.cmd=${command}`, "pcr.poweroff=1", ...extraCmdlineFor(accel)].join(" "),
        cpu: 1,
        memoryBytes: guest.spec.memoryBytes,
        consolePath,
      },
      { accel },
    ),
    // vhost-user needs guest memory the virtiofsd process can map: a shared memfd.
    "-object",
    `memory-backend-memfd,id=mem,size=${memMiB}M,share=on`,
    "-machine",
    "memory-backend=mem",
    // libvhost-user refuses legacy virtio, which microvm's virtio-mmio defaults to.
    "-global",
    "virtio-mmio.force-legacy=false",
    "-chardev",
    `socket,id=vfs,path=${socketPath}`,
    "-device",
    "vhost-user-fs-device,chardev=vfs,tag=secrets",
  ];
  const started = Date.now();
  const qemu = spawn("qemu-system-x86_64", argv, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  qemu.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const qemuExit = new Promise<number | null>((resolve) => qemu.once("exit", (code) => resolve(code)));
  cleanups.push(async () => {
    qemu.kill("SIGKILL");
    await qemuExit;
  });

  const deadline = Date.now() + 90_000;
  let console = "";
  while (!/pcr-guest: cmd exit=\d+/.test(console) && Date.now() < deadline && qemu.exitCode === null) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    console = await readFile(consolePath, "utf8").catch(() => "");
  }
  t.diagnostic(`accel ${accel}: guest ran the command after ${Date.now() - started} ms`);
  assert.match(console, /s3cret-over-virtiofs/, `console:\n${console.slice(-2000)}\nqemu stderr: ${stderr}`);
  assert.match(console, /READONLY/, "the guest mounts the share read-only");
  // ...but nothing stops it from mounting it again read-write and writing to the host.
  assert.match(console, /REMOUNTED-RW/);
  assert.equal(await readFile(join(shared, "planted"), "utf8").catch(() => ""), "planted\n", "the C daemon let the guest write");
  assert.equal(await qemuExit, 0, "guest powered off");
  // QEMU's virtiofsd serves one vhost-user session: it ends with the VM by itself.
  const exit = await Promise.race([virtiofsd.exited, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 5000))]);
  assert.ok(exit, "virtiofsd exits when the VM's vhost-user connection closes");
  t.diagnostic(`virtiofsd after the VM ended: ${exit.description}`);
});
