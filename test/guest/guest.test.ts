// Boots the bundled test guest (scripts/build-test-guest) directly with QEMU microvm under TCG and
// checks the guest contract (docs/guest-contract.md): ready marker, pcr.cmd, the root image, network
// configuration and TCP over virtio-net, the 9p and virtiofs shares, the bzImage kernel,
// pcr.poweroff, and the ACPI power button through QMP system_powerdown (with timings).
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { TEST_GUEST_DIR, testGuest } from "../helpers/repo.js";

const QEMU = "qemu-system-x86_64";
const VIRTIOFSD = "/usr/lib/qemu/virtiofsd";
const READY = "pcr-guest: ready";
const HELLO = "hello from the pcr test image";

interface GuestPaths {
  cmdline: string;
  kernel: string;
  kernelBzImage: string;
  initrd: string;
  image: string;
}

function skipReason(): string | undefined {
  const guest = testGuest();
  if ("skip" in guest) return guest.skip;
  if (spawnSync(QEMU, ["--version"]).status !== 0) return `${QEMU} not installed`;
  return undefined;
}

/** Host TSC rate: microvm under TCG needs tsc_early_khz or it hangs in some boots. */
function hostTscKhz(): number {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const mhz = /cpu MHz\s*:\s*([\d.]+)/.exec(cpuinfo);
  return mhz ? Math.round(Number(mhz[1]) * 1000) : 0;
}

interface BootOptions {
  cmd?: string;
  params?: string[];
  kernel?: string;
  secretsDir?: string;
  virtiofsSocket?: string;
  qmpSocket?: string;
  /** Host loopback port forwarded to the guest's TCP port 7777 (user-mode network). */
  hostPort?: number;
}

interface Guest {
  child: ChildProcess;
  startedAt: number;
  output: () => string;
  /** Resolves with the time since start when the console shows `text`. */
  waitFor: (text: string, timeoutMs?: number) => Promise<number>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
}

function qemuArgs(paths: GuestPaths, options: BootOptions): string[] {
  const params = [paths.cmdline, `tsc_early_khz=${hostTscKhz()}`];
  if (options.cmd !== undefined) params.push(`pcr.cmd=${Buffer.from(options.cmd).toString("base64")}`);
  params.push(...(options.params ?? []));
  // vhost-user needs guest memory that virtiofsd can map, and modern virtio-mmio.
  const memory =
    options.virtiofsSocket === undefined
      ? []
      : ["-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-global", "virtio-mmio.force-legacy=false"];
  const args = [
    "-M",
    `microvm,x-option-roms=off,isa-serial=on,rtc=on${memory.length > 0 ? ",memory-backend=mem" : ""}`,
    ...memory,
    "-accel",
    "tcg",
    "-cpu",
    "max",
    "-m",
    "256M",
    "-smp",
    "1",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-no-reboot",
    "-serial",
    "stdio",
    "-kernel",
    options.kernel ?? paths.kernel,
    "-initrd",
    paths.initrd,
    "-append",
    params.join(" "),
    "-drive",
    `id=root,file=${paths.image},format=raw,if=none,read-only=on`,
    "-device",
    "virtio-blk-device,drive=root",
    "-netdev",
    `user,id=net0,restrict=on${options.hostPort === undefined ? "" : `,hostfwd=tcp:127.0.0.1:${options.hostPort}-:7777`}`,
    "-device",
    "virtio-net-device,netdev=net0",
  ];
  if (options.secretsDir !== undefined) {
    args.push(
      "-fsdev",
      `local,id=secrets,path=${options.secretsDir},security_model=none,readonly=on`,
      "-device",
      "virtio-9p-device,fsdev=secrets,mount_tag=secrets",
    );
  }
  if (options.virtiofsSocket !== undefined) {
    args.push(
      "-chardev",
      `socket,id=virtiofs,path=${options.virtiofsSocket}`,
      "-device",
      "vhost-user-fs-device,chardev=virtiofs,tag=secrets",
    );
  }
  if (options.qmpSocket !== undefined) args.push("-qmp", `unix:${options.qmpSocket},server=on,wait=off`);
  return args;
}

const running = new Set<ChildProcess>();

function boot(paths: GuestPaths, options: BootOptions = {}): Guest {
  const startedAt = performance.now();
  const child = spawn(QEMU, qemuArgs(paths, options), { stdio: ["pipe", "pipe", "pipe"] });
  running.add(child);
  let console = "";
  const waiters: Array<() => void> = [];
  const onData = (chunk: Buffer) => {
    console += chunk.toString("utf8");
    for (const wake of waiters.splice(0)) wake();
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) => {
    child.on("exit", (code, signal) => {
      running.delete(child);
      resolve({ code, signal, at: performance.now() });
      for (const wake of waiters.splice(0)) wake();
    });
  });
  const waitFor = (text: string, timeoutMs = 60_000) =>
    new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no "${text}" within ${timeoutMs} ms; console:\n${console}`)), timeoutMs);
      const check = () => {
        if (console.includes(text)) {
          clearTimeout(timer);
          resolve(performance.now() - startedAt);
        } else if (child.exitCode !== null || child.signalCode !== null) {
          clearTimeout(timer);
          reject(new Error(`QEMU exited before "${text}"; console:\n${console}`));
        } else {
          waiters.push(check);
        }
      };
      check();
    });
  return { child, startedAt, output: () => console, waitFor, exited };
}

/** A QMP connection past the capabilities handshake; execute() resolves with the command's reply. */
async function connectQmp(socketPath: string): Promise<{ execute: (command: string) => Promise<void>; close: () => void }> {
  const socket = createConnection(socketPath);
  await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
  let buffer = "";
  const replies: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];
  let greeted: () => void;
  const greeting = new Promise<void>((resolve) => (greeted = resolve));
  socket.on("data", (chunk) => {
    buffer += chunk.toString("utf8");
    for (let newline = buffer.indexOf("\n"); newline >= 0; newline = buffer.indexOf("\n")) {
      const message = JSON.parse(buffer.slice(0, newline)) as Record<string, unknown>;
      buffer = buffer.slice(newline + 1);
      if ("QMP" in message) greeted();
      else if ("return" in message) replies.shift()?.resolve();
      else if ("error" in message) replies.shift()?.reject(new Error(`QMP error: ${JSON.stringify(message.error)}`));
    }
  });
  const execute = (command: string) =>
    new Promise<void>((resolve, reject) => {
      replies.push({ resolve, reject });
      socket.write(`${JSON.stringify({ execute: command })}\n`);
    });
  await greeting;
  await execute("qmp_capabilities");
  return { execute, close: () => socket.destroy() };
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Connects until the guest's listener answers; resolves with what it sent. */
async function readFromGuest(port: number, deadlineMs: number): Promise<string> {
  const deadline = performance.now() + deadlineMs;
  for (;;) {
    const received = await new Promise<string>((resolve) => {
      const socket = createConnection(port, "127.0.0.1");
      let data = "";
      socket.on("data", (chunk) => (data += chunk.toString("utf8")));
      socket.on("close", () => resolve(data));
      socket.on("error", () => resolve(""));
    });
    if (received !== "") return received;
    if (performance.now() > deadline) throw new Error(`nothing from the guest on port ${port}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function waitForPath(path: string): Promise<void> {
  while (!existsSync(path)) await new Promise((resolve) => setTimeout(resolve, 20));
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

const skip = skipReason();

describe("test guest under QEMU microvm (TCG)", { skip }, () => {
  let paths: GuestPaths;
  let workDir: string;

  before(() => {
    const spec = JSON.parse(readFileSync(join(TEST_GUEST_DIR, "spec.json"), "utf8")) as { cmdline: string };
    const files = JSON.parse(readFileSync(join(TEST_GUEST_DIR, "paths.json"), "utf8")) as Omit<GuestPaths, "cmdline">;
    paths = { ...files, cmdline: spec.cmdline };
    workDir = mkdtempSync(join(tmpdir(), "pcr-guest-test-"));
  });

  after(() => {
    for (const child of running) child.kill("SIGKILL");
    rmSync(workDir, { recursive: true, force: true });
  });

  test("spec.json has the shape of `nix eval --json .#vmSpec`; its paths are in the store and the cache", () => {
    const specText = readFileSync(join(TEST_GUEST_DIR, "spec.json"), "utf8").trim();
    const spec = JSON.parse(specText) as Record<string, unknown>;
    assert.deepEqual(Object.keys(spec), ["allowedDomains", "cmdline", "cpu", "hostname", "image", "initrd", "kernel", "memoryBytes"]);
    assert.equal(specText, JSON.stringify(spec), "compact, like nix prints it");
    const storePaths = [paths.kernel, paths.kernelBzImage, paths.initrd, paths.image];
    assert.deepEqual([spec.kernel, spec.initrd, spec.image], [paths.kernel, paths.initrd, paths.image]);
    const validity = spawnSync("nix-store", ["--check-validity", ...storePaths], { encoding: "utf8" });
    assert.equal(validity.status, 0, validity.stderr);
    for (const path of storePaths) {
      const hash = path.slice("/nix/store/".length).split("-")[0]!;
      assert.ok(existsSync(join(TEST_GUEST_DIR, "..", "nix-cache", `${hash}.narinfo`)), `${path} in .cache/nix-cache`);
    }
  });

  test("runs pcr.cmd after the ready marker and powers off with pcr.poweroff=1", async () => {
    const guest = boot(paths, {
      cmd: "cat /mnt/image/hello.txt; hostname; ip -4 addr show eth0; ip route; cat /etc/resolv.conf; exit 3",
      params: ["pcr.poweroff=1", "pcr.hostname=guest-under-test", "pcr.ip=10.0.2.15/24", "pcr.gw=10.0.2.2", "pcr.dns=10.0.2.3"],
    });
    await guest.waitFor("pcr-guest: cmd exit=3");
    const { code } = await within(guest.exited, 10_000, "QEMU exit after pcr.poweroff=1");
    assert.equal(code, 0);
    const output = guest.output();
    assert.ok(output.indexOf(READY) < output.indexOf(HELLO), "ready marker comes before the command's output");
    assert.match(output, /guest-under-test/);
    assert.match(output, /inet 10\.0\.2\.15\/24/);
    assert.match(output, /default via 10\.0\.2\.2 dev eth0/);
    assert.match(output, /nameserver 10\.0\.2\.3/);
  });

  test("virtio-net carries TCP: busybox nc in the guest answers through a forwarded port", async () => {
    const hostPort = await freePort();
    const guest = boot(paths, {
      cmd: "echo pong-from-guest | nc -l -p 7777",
      params: ["pcr.poweroff=1", "pcr.ip=10.0.2.15/24", "pcr.gw=10.0.2.2"],
      hostPort,
    });
    await guest.waitFor(READY);
    assert.equal((await readFromGuest(hostPort, 20_000)).trim(), "pong-from-guest");
    await guest.waitFor("pcr-guest: cmd exit=0");
    assert.equal((await within(guest.exited, 10_000, "QEMU exit after pcr.poweroff=1")).code, 0);
  });

  test("mounts the 9p share tagged secrets read-only at /run/secrets", async () => {
    const secretsDir = join(workDir, "secrets");
    rmSync(secretsDir, { recursive: true, force: true });
    mkdirSync(secretsDir, { recursive: true });
    writeFileSync(join(secretsDir, "api-token"), "s3cr3t-value\n");
    const guest = boot(paths, {
      cmd: "cat /run/secrets/api-token; touch /run/secrets/x 2>/dev/null && echo writable || echo read-only",
      params: ["pcr.poweroff=1", "pcr.share=9p"],
      secretsDir,
    });
    await guest.waitFor("pcr-guest: cmd exit=0");
    await within(guest.exited, 10_000, "QEMU exit after pcr.poweroff=1");
    assert.match(guest.output(), /s3cr3t-value/);
    assert.match(guest.output(), /read-only/);
    assert.equal(existsSync(join(secretsDir, "x")), false);
  });

  test("mounts the virtiofs share tagged secrets read-only at /run/secrets", {
    skip: existsSync(VIRTIOFSD) ? undefined : `${VIRTIOFSD} missing`,
  }, async () => {
    const secretsDir = join(workDir, "virtiofs-secrets");
    mkdirSync(secretsDir, { recursive: true });
    writeFileSync(join(secretsDir, "db-password"), "virtiofs-value\n");
    const virtiofsSocket = join(workDir, "virtiofs.sock");
    const virtiofsd = spawn(
      VIRTIOFSD,
      [`--socket-path=${virtiofsSocket}`, "-o", `source=${secretsDir}`, "-o", "cache=none", "-o", "sandbox=chroot"],
      { stdio: "ignore" },
    );
    running.add(virtiofsd);
    try {
      await within(waitForPath(virtiofsSocket), 5_000, "virtiofsd socket");
      const guest = boot(paths, {
        cmd: "cat /run/secrets/db-password; touch /run/secrets/x 2>/dev/null && echo writable || echo read-only",
        params: ["pcr.poweroff=1", "pcr.share=virtiofs"],
        virtiofsSocket,
      });
      await guest.waitFor("pcr-guest: cmd exit=0");
      await within(guest.exited, 10_000, "QEMU exit after pcr.poweroff=1");
      assert.match(guest.output(), /virtiofs-value/);
      assert.match(guest.output(), /read-only/);
    } finally {
      virtiofsd.kill("SIGTERM");
      running.delete(virtiofsd);
    }
  });

  test("boots the bzImage too", async (t) => {
    const guest = boot(paths, { kernel: paths.kernelBzImage, cmd: "cat /mnt/image/hello.txt", params: ["pcr.poweroff=1"] });
    t.diagnostic(`bzImage boot to ready marker ms: ${Math.round(await guest.waitFor(READY))}`);
    await guest.waitFor("pcr-guest: cmd exit=0");
    assert.equal((await within(guest.exited, 10_000, "QEMU exit")).code, 0);
    assert.match(guest.output(), new RegExp(HELLO));
  });

  test("QMP system_powerdown makes QEMU exit promptly (3 boots: boot time and powerdown latency)", async (t) => {
    const bootTimes: number[] = [];
    const powerdownTimes: number[] = [];
    for (let i = 0; i < 3; i++) {
      const qmpSocket = join(workDir, `qmp-${i}.sock`);
      const guest = boot(paths, { cmd: "cat /mnt/image/hello.txt", qmpSocket });
      bootTimes.push(await guest.waitFor(READY));
      await guest.waitFor("pcr-guest: cmd exit=0");
      const qmp = await connectQmp(qmpSocket);
      const sentAt = performance.now();
      await qmp.execute("system_powerdown");
      const { code, at } = await within(guest.exited, 10_000, "QEMU exit after system_powerdown");
      qmp.close();
      assert.equal(code, 0);
      powerdownTimes.push(at - sentAt);
    }
    t.diagnostic(`boot to ready marker ms: ${bootTimes.map(Math.round).join(", ")} (median ${Math.round(median(bootTimes))})`);
    t.diagnostic(
      `system_powerdown to exit ms: ${powerdownTimes.map(Math.round).join(", ")} (median ${Math.round(median(powerdownTimes))})`,
    );
    assert.ok(median(powerdownTimes) < 2000, "the power button powers off at once");
  });
});
