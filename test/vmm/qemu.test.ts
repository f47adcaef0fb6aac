// The QEMU backend with real QEMU booting the bundled test guest (TCG here), one VM at a time.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test, type TestContext } from "node:test";
import pino from "pino";
import { WorkerError } from "../../worker/core/errors.js";
import type { VmLaunchSpec, VmmBackend, VmmHandle, VmmProcessRecord } from "../../worker/ports/index.js";
import { detectAccelerator } from "../../worker/vmm/accel.js";
import { createQemuBackend, kernelFormat, qemuArgv } from "../../worker/vmm/qemu/backend.js";
import { isSameLiveProcess, readStartTime } from "../../worker/process/proc.js";
import { guestLaunchSpec, REPO_ROOT, TEST_GUEST_DIR, testGuest } from "../helpers/repo.js";

const READY = "pcr-guest: ready";
const BOOT_TIMEOUT_MS = 90_000;
const guest = testGuest();
const skip = "skip" in guest ? guest.skip : false;
const logger = pino({ level: process.env.PCR_TEST_LOG ?? "silent" });
const root = mkdtempSync(join(tmpdir(), "pcr-qemu-test-"));
const started: VmmHandle[] = [];

after(async () => {
  await Promise.all(started.map((handle) => handle.kill().catch(() => undefined)));
  rmSync(root, { recursive: true, force: true });
});

async function backendFor(): Promise<VmmBackend> {
  const { accel } = await detectAccelerator({
    probeTimeoutMs: 10_000,
    probeKernel: "spec" in guest ? { kernel: guest.spec.kernel } : undefined,
  });
  return createQemuBackend({ accel, logger });
}

function launchSpec(backend: VmmBackend, id: string, overrides: Partial<VmLaunchSpec> = {}, extraCmdline: string[] = []): VmLaunchSpec {
  if (!("spec" in guest)) throw new Error("no guest");
  return guestLaunchSpec(guest.spec, root, backend, id, overrides, extraCmdline);
}

async function launch(backend: VmmBackend, spec: VmLaunchSpec): Promise<VmmHandle> {
  const handle = await backend.launch(spec);
  started.push(handle);
  return handle;
}

/** Polls the console file (short interval) until it contains `text`. */
async function waitForConsole(path: string, text: string | RegExp, timeoutMs = BOOT_TIMEOUT_MS): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const content = existsSync(path) ? readFileSync(path, "utf8") : "";
    if (typeof text === "string" ? content.includes(text) : text.test(content)) return content;
    if (Date.now() > deadline) throw new Error(`console ${path} has no ${text} after ${timeoutMs} ms; tail: ${content.slice(-500)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function isWorkerError(code: string, pattern?: RegExp) {
  return (err: unknown) => err instanceof WorkerError && err.code === code && (!pattern || pattern.test(err.message));
}

function ms(since: number): number {
  return Math.round(performance.now() - since);
}

test("argv: microvm, read-only root, console in append mode, tap, read-only 9p, QMP; commas escaped", () => {
  const argv = qemuArgv(
    {
      id: "vm,1",
      kernel: "/k",
      initrd: "/i",
      image: "/img,x",
      cmdline: "console=ttyS0 a=b,c",
      cpu: 2,
      memoryBytes: 300 * 1024 * 1024 + 1,
      consolePath: "/vms/1/console.log",
      net: { tap: "pcr-tap1", mac: "52:54:00:00:00:01" },
      share: { tag: "secrets", hostDir: "/run/pcr/secrets/1" },
    },
    { accel: "tcg", qmpSocket: "/vms/1/qmp.sock" },
  );
  const joined = argv.join(" ");
  for (const expected of [
    "-name pcr-vm,,1,process=pcr-vm,,1",
    "-accel tcg -cpu max -smp 2 -m 301M",
    "-kernel /k -initrd /i -append console=ttyS0 a=b,c",
    "-drive id=root,file=/img,,x,format=raw,if=none,readonly=on -device virtio-blk-device,drive=root",
    "-chardev file,id=console,path=/vms/1/console.log,append=on -serial chardev:console",
    "-netdev tap,id=n0,ifname=pcr-tap1,script=no,downscript=no -device virtio-net-device,netdev=n0,mac=52:54:00:00:00:01",
    "-fsdev local,id=share,path=/run/pcr/secrets/1,security_model=none,readonly=on -device virtio-9p-device,fsdev=share,mount_tag=secrets",
    "-qmp unix:/vms/1/qmp.sock,server=on,wait=off",
    "-device virtio-rng-device",
  ]) {
    assert.ok(joined.includes(expected), `argv has ${expected}:\n${joined}`);
  }
  assert.ok(argv[argv.indexOf("-M") + 1]!.startsWith("microvm"));
  assert.ok(!joined.includes("virtserialport"), "no agent port unless asked");
});

test("argv: the agent's virtio-serial port on a unix socket QEMU serves without waiting", () => {
  const argv = qemuArgv(
    { id: "vm-1", kernel: "/k", cmdline: "", cpu: 1, memoryBytes: 256 << 20, consolePath: "/c", agentSocket: "/vms/1/agent,x.sock" },
    { accel: "tcg" },
  ).join(" ");
  assert.ok(argv.includes("-device virtio-serial-device,id=agentbus,max_ports=2"), argv);
  assert.ok(argv.includes("-chardev socket,id=agent,path=/vms/1/agent,,x.sock,server=on,wait=off"), argv);
  assert.ok(argv.includes("-device virtserialport,bus=agentbus.0,chardev=agent,name=pcr.agent"), argv);
});

describe("QEMU backend", { skip, concurrency: false }, () => {
  test("launch, run, ready, counters, pause/resume, adopt after a restart, stop (adopted)", async (t: TestContext) => {
    const backend = await backendFor();
    const spec = launchSpec(backend, "vm-a");
    const t0 = performance.now();
    const handle = await launch(backend, spec);
    const launchedMs = ms(t0);
    await handle.waitRunning(10_000);
    const runningMs = ms(t0);
    await waitForConsole(spec.consolePath, READY);
    const readyMs = ms(t0);
    t.diagnostic(`spawn -> QMP ready (launch returned) ${launchedMs} ms, -> running ${runningMs} ms, -> "${READY}" ${readyMs} ms`);

    assert.equal(handle.record.backend, "qemu");
    assert.equal(handle.record.controlSocket, join(spec.vmDir, "qmp.sock"));
    assert.equal(await readStartTime(handle.record.pid), handle.record.startTime);
    const cmdline = readFileSync(`/proc/${handle.record.pid}/cmdline`, "utf8").split("\0");
    assert.ok(cmdline.includes("pcr-vm-a,process=pcr-vm-a"), "the VMM is recognisable by its name");
    assert.equal(await handle.runState(), "running");

    const counters = await handle.blockCounters();
    assert.ok(counters.readBytes > 0n && counters.readOps > 0n, `the guest read its root disk: ${counters.readBytes} bytes`);
    assert.equal(counters.writeBytes, 0n, "the root disk is read-only");

    await handle.pause();
    assert.equal(await handle.runState(), "paused");
    await assert.rejects(handle.waitRunning(200), isWorkerError("DEADLINE_EXCEEDED"));
    await handle.resume();
    assert.equal(await handle.runState(), "running");

    // A restarted worker: a new backend instance, the old one's QMP connection gone.
    await (handle as unknown as { detach(): Promise<void> }).detach();
    const restarted = await backendFor();
    assert.equal(
      await restarted.adopt({ ...handle.record, startTime: String(Number(handle.record.startTime) + 1) }, spec.vmDir),
      undefined,
      "a reused pid is not adopted",
    );
    const a0 = performance.now();
    const adopted = await restarted.adopt(handle.record, spec.vmDir);
    t.diagnostic(`adopt ${ms(a0)} ms`);
    assert.ok(adopted, "the running VMM is adopted");
    started.push(adopted);
    assert.equal(await adopted.runState(), "running");
    assert.ok((await adopted.blockCounters()).readBytes >= counters.readBytes);

    const graceMs = 5000;
    const s0 = performance.now();
    const exit = await adopted.stop(graceMs);
    const stopMs = ms(s0);
    t.diagnostic(`stop (adopted) ${stopMs} ms: ${exit.description}`);
    assert.ok(stopMs < graceMs + 2000, "stop returns within the grace (plus the kill)");
    assert.equal(exit.code, 0, "an adopted VMM's clean power-off is told by QMP's SHUTDOWN event");
    assert.equal(await isSameLiveProcess(handle.record.pid, handle.record.startTime), false, "the process is gone");
    assert.deepEqual(await adopted.exited, exit);
    assert.deepEqual(await adopted.stop(graceMs), exit, "stop is idempotent");
    assert.equal(await adopted.runState(), "shutdown");
    assert.equal(await restarted.adopt(handle.record, spec.vmDir), undefined, "a dead VMM is not adopted");
  });

  test("stop() powers the guest off through the ACPI button; a 9p share is mounted read-only", async (t: TestContext) => {
    const backend = await backendFor();
    const shareDir = join(root, "share-b");
    mkdirSync(shareDir, { mode: 0o700 });
    writeFileSync(join(shareDir, "token"), "s3cret-value\n", { mode: 0o400 });
    const command = Buffer.from(`cat /run/secrets/token; touch /run/secrets/x 2>/dev/null && echo WRITABLE || echo READONLY`).toString(
      "base64",
    );
    const spec = launchSpec(backend, "vm-b", { share: { tag: "secrets", hostDir: shareDir } }, [
      `pcr.share=${backend.shareKind}`,
      `pcr.cmd=${command}`,
    ]);
    const handle = await launch(backend, spec);
    assert.ok(!readFileSync(`/proc/${handle.record.pid}/cmdline`, "utf8").includes("s3cret"), "no secret on argv");
    await handle.waitRunning(10_000);
    const console = await waitForConsole(spec.consolePath, /pcr-guest: cmd exit=\d+/);
    assert.match(console, /s3cret-value/);
    assert.match(console, /READONLY/);

    const graceMs = 5000;
    const s0 = performance.now();
    const exit = await handle.stop(graceMs);
    const stopMs = ms(s0);
    t.diagnostic(`stop (child) ${stopMs} ms: ${exit.description}`);
    assert.ok(stopMs < graceMs + 2000);
    assert.deepEqual(
      exit,
      { code: 0, signal: null, description: "exited with code 0 (guest powered off)" },
      "the guest powered off on the ACPI power button",
    );
  });

  test("a VMM outlives the worker process that launched it, and is adopted and killed by another", async (t: TestContext) => {
    const backend = await backendFor();
    const spec = launchSpec(backend, "vm-d");
    // A separate Node process plays the first worker: it launches, prints the record, exits.
    const script = `
      const { createQemuBackend } = await import(${JSON.stringify(new URL("../../worker/vmm/qemu/backend.js", import.meta.url).href)});
      const { default: pino } = await import("pino");
      const backend = createQemuBackend({ accel: process.env.ACCEL, logger: pino({ level: "silent" }) });
      const handle = await backend.launch(JSON.parse(process.env.SPEC));
      await handle.waitRunning(10000);
      process.stdout.write(JSON.stringify(handle.record));
      process.exit(0);`;
    const accel = (
      await detectAccelerator({ probeTimeoutMs: 10_000, probeKernel: "spec" in guest ? { kernel: guest.spec.kernel } : undefined })
    ).accel;
    const worker = spawnSync(process.execPath, [...process.execArgv, "--input-type=module", "-e", script], {
      cwd: REPO_ROOT,
      env: { ...process.env, SPEC: JSON.stringify(spec), ACCEL: accel },
      encoding: "utf8",
      timeout: 30_000,
    });
    assert.equal(worker.status, 0, worker.stderr);
    const record = JSON.parse(worker.stdout) as VmmProcessRecord;
    assert.ok(await isSameLiveProcess(record.pid, record.startTime), "QEMU survived its parent");
    const adopted = await backend.adopt(record, spec.vmDir);
    assert.ok(adopted);
    started.push(adopted);
    assert.equal(await adopted.runState(), "running");
    await waitForConsole(spec.consolePath, READY);
    const k0 = performance.now();
    const exit = await adopted.kill();
    t.diagnostic(`kill (adopted, not our child) ${ms(k0)} ms`);
    assert.deepEqual(exit, { code: null, signal: "SIGKILL", description: "killed by SIGKILL" });
    assert.equal(await isSameLiveProcess(record.pid, record.startTime), false);
  });

  test("kill() ends the VMM with SIGKILL", async (t: TestContext) => {
    const backend = await backendFor();
    const handle = await launch(backend, launchSpec(backend, "vm-c"));
    await handle.waitRunning(10_000);
    const k0 = performance.now();
    const exit = await handle.kill();
    t.diagnostic(`kill ${ms(k0)} ms`);
    assert.deepEqual(exit, { code: null, signal: "SIGKILL", description: "killed by SIGKILL" });
    assert.deepEqual(await handle.kill(), exit, "kill is idempotent");
    await assert.rejects(handle.waitRunning(1000), isWorkerError("FAILED_PRECONDITION", /killed by SIGKILL/));
    await assert.rejects(handle.pause(), isWorkerError("FAILED_PRECONDITION"));
  });

  test("boots a bzImage on microvm too; a guest reboot ends QEMU and says so", async (t: TestContext) => {
    const paths = JSON.parse(readFileSync(join(TEST_GUEST_DIR, "paths.json"), "utf8")) as { kernelBzImage?: string };
    if (!paths.kernelBzImage) return t.skip("the test guest has no bzImage");
    assert.equal(await kernelFormat(paths.kernelBzImage), "bzimage");
    const backend = await backendFor();
    const spec = launchSpec(backend, "vm-bz", { kernel: paths.kernelBzImage }, [`pcr.cmd=${Buffer.from("reboot -f").toString("base64")}`]);
    const t0 = performance.now();
    const handle = await launch(backend, spec);
    await handle.waitRunning(10_000);
    await waitForConsole(spec.consolePath, READY);
    t.diagnostic(`bzImage: spawn -> "${READY}" ${ms(t0)} ms`);
    const exit = await Promise.race([handle.exited, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 30_000))]);
    assert.ok(exit, "QEMU ended after the guest rebooted");
    assert.equal(exit.code, 0);
    assert.match(exit.description, /the guest rebooted/);
  });

  test("a VMM that dies at start fails the launch with QEMU's last stderr line", async () => {
    const backend = await backendFor();
    const spec = launchSpec(backend, "vm-bad", { image: join(root, "no-such-image.raw") });
    await assert.rejects(
      backend.launch(spec),
      isWorkerError("FAILED_PRECONDITION", /QEMU exited at start: exited with code 1: .*no-such-image\.raw/),
    );
  });

  test("a missing QEMU binary is FAILED_PRECONDITION with the package to install", async () => {
    const backend = createQemuBackend({ accel: "tcg", logger, qemuBinary: "qemu-system-x86_64-missing" });
    await assert.rejects(
      backend.launch(launchSpec(backend, "vm-nobin")),
      isWorkerError("FAILED_PRECONDITION", /qemu-system-x86_64-missing not found; install qemu-system-x86/),
    );
  });

  test("TCG guests get tsc_early_khz; a backend only adopts its own records", async () => {
    const tcg = createQemuBackend({ accel: "tcg", logger, tscKhz: 2_000_000 });
    assert.deepEqual(tcg.extraCmdline(), ["tsc_early_khz=2000000"]);
    assert.deepEqual(createQemuBackend({ accel: "kvm", logger }).extraCmdline(), []);
    assert.equal(
      await tcg.adopt({ backend: "cloud-hypervisor", pid: process.pid, startTime: "0", controlSocket: "/x", helpers: [] }, root),
      undefined,
    );
  });
});
