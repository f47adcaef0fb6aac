// The Cloud Hypervisor backend's control flow, end to end through real processes and sockets, but
// against the CONTRACT FAKE (test/fixtures/ch/fake-cloud-hypervisor.mjs), NOT real Cloud Hypervisor,
// which cannot be installed here. The fake validates every request against CH's OpenAPI file and
// answers with schema-valid responses and event-monitor events; it runs no guest.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import { pino } from "pino";
import type { VmLaunchSpec, VmmHandle } from "../../worker/ports/index.js";
import { ChApiClient, ChApiError } from "../../worker/vmm/cloud-hypervisor/api.js";
import { buildVmConfig, chPaths, createCloudHypervisorBackend } from "../../worker/vmm/cloud-hypervisor/backend.js";
import { isSameLiveProcess } from "../../worker/process/proc.js";
import { FAKE_CH_BINARY, FAKE_RUST_VIRTIOFSD } from "../fixtures/ch/fixtures.js";
import { PARKED_MAC } from "../../worker/ports/network.js";
import { FileSnapshots } from "../../worker/state/snapshots.js";
import { defaultCageHelper } from "../../worker/cage/cage.js";
import { testCage } from "../helpers/cage.js";
import { REPO_ROOT, testGuest } from "../helpers/repo.js";
import { rejectsWith } from "../helpers/errors.js";

const logger = pino({ level: "silent" });
const C_VIRTIOFSD = "/usr/lib/qemu/virtiofsd";

interface LoggedRequest {
  method: string;
  path: string;
  body?: unknown;
  errors: string[] | null;
}

// The backend unrefs its children (they must not hold the worker open); the test awaits their exits.
let keepAlive: NodeJS.Timeout;
before(() => (keepAlive = setInterval(() => {}, 1000)));
after(() => clearInterval(keepAlive));

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
  for (const key of Object.keys(process.env)) if (key.startsWith("FAKE_CH_")) delete process.env[key];
});

async function makeSpec(extra: Partial<VmLaunchSpec> = {}): Promise<VmLaunchSpec> {
  const vmDir = await mkdtemp(join(tmpdir(), "pcr-ch-"));
  cleanups.push(() => rm(vmDir, { recursive: true, force: true }));
  const kernel = join(vmDir, "bzImage");
  await writeFile(kernel, "not a kernel: the contract fake only checks that it exists");
  return {
    id: "vm-test",
    vmDir,
    kernel,
    cmdline: "console=ttyS0",
    cpu: 1,
    memoryBytes: 128 * 1024 * 1024,
    consolePath: join(vmDir, "console.log"),
    ...extra,
  };
}

function backend(options: Partial<Parameters<typeof createCloudHypervisorBackend>[0]> = {}) {
  return createCloudHypervisorBackend({ binary: FAKE_CH_BINARY, virtiofsdBinary: C_VIRTIOFSD, logger, pollIntervalMs: 20, ...options });
}

async function launch(spec: VmLaunchSpec, options?: Partial<Parameters<typeof createCloudHypervisorBackend>[0]>): Promise<VmmHandle> {
  const handle = await backend(options).launch(spec);
  cleanups.push(() => handle.kill());
  return handle;
}

async function requests(vmDir: string): Promise<LoggedRequest[]> {
  const text = await readFile(join(vmDir, "fake-ch-requests.jsonl"), "utf8").catch(() => "");
  return text
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as LoggedRequest);
}

/** The calls in order, with repeated polls (ping, info) collapsed. */
function callSequence(log: LoggedRequest[]): string[] {
  const calls = log.map((r) => r.path);
  return calls.filter((call, i) => !(call === calls[i - 1] && (call === "/vmm.ping" || call === "/vm.info")));
}

function assertAllValid(log: LoggedRequest[]) {
  assert.ok(log.length > 0, "the fake saw requests");
  for (const entry of log) assert.equal(entry.errors, null, `${entry.method} ${entry.path} rejected by the contract: ${entry.errors}`);
}

/** Live processes whose command line mentions `text` (a VM directory): what a failed launch must not leave. */
async function processesMentioning(text: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "");
    const stat = await readFile(`/proc/${entry}/stat`, "utf8").catch(() => "");
    if (cmdline.includes(text) && !/\) Z /.test(stat)) pids.push(Number(entry));
  }
  return pids;
}

/** `promise`, or a failure naming `what` once `ms` passed: a bound on a wait, never a race. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

describe("Cloud Hypervisor backend against the contract fake (not real Cloud Hypervisor)", () => {
  test("launch, run state, counters, pause/resume and a graceful stop through the power button", async () => {
    const spec = await makeSpec({ image: join(tmpdir(), "root.img") });
    await writeFile(spec.image!, "");
    cleanups.push(() => rm(spec.image!, { force: true }));
    const handle = await launch(spec);
    assert.equal(handle.record.backend, "cloud-hypervisor");
    assert.equal(handle.record.controlSocket, chPaths(spec.vmDir).apiSocket);
    assert.equal(await isSameLiveProcess(handle.record.pid, handle.record.startTime), true);
    // Nothing about the VM on the VMM's command line.
    const argv = readFileSync(`/proc/${handle.record.pid}/cmdline`, "utf8").split("\0");
    assert.ok(argv.includes("--api-socket") && argv.includes("--seccomp"));
    assert.ok(!argv.some((arg) => arg.includes(spec.kernel) || arg.includes("console")), argv.join(" "));

    await handle.waitRunning(2000);
    assert.equal(await handle.runState(), "running");
    const first = await handle.blockCounters();
    const second = await handle.blockCounters();
    assert.ok(second.readBytes > first.readBytes && second.readOps > first.readOps, "disk counters advance");
    await handle.pause();
    assert.equal(await handle.runState(), "paused");
    // Cloud Hypervisor answers a refused state change with 500 and its whole error chain.
    await rejectsWith(
      handle.pause(),
      "FAILED_PRECONDITION",
      new RegExp(
        /HTTP 500: Error from API: The VM could not be paused: /.source +
          /Failed to pause the VM: Invalid transition: InvalidStateTransition\(Paused, Paused\)/.source,
      ),
    );
    await handle.resume();
    assert.equal(await handle.runState(), "running");
    assert.match(await readFile(spec.consolePath, "utf8"), /contract fake/);

    const exit = await handle.stop(2000);
    assert.deepEqual(exit, { code: 0, signal: null, description: "exited with code 0 (guest powered off)" });
    assert.equal(await isSameLiveProcess(handle.record.pid, handle.record.startTime), false);
    assert.equal(existsSync(chPaths(spec.vmDir).apiSocket), false, "API socket removed after exit");
    assert.deepEqual(await handle.stop(2000), exit, "stop is idempotent");
    assert.deepEqual(await handle.kill(), exit, "kill after exit is a no-op");

    const log = await requests(spec.vmDir);
    assertAllValid(log);
    const sequence = callSequence(log);
    assert.deepEqual(sequence.slice(0, 3), ["/vmm.ping", "/vm.create", "/vm.boot"]);
    assert.ok(sequence.includes("/vm.power-button"));
    assert.ok(!sequence.includes("/vm.shutdown"), "the guest powered off by itself: no forced shutdown");
    assert.deepEqual(log.find((r) => r.path === "/vm.create")!.body, buildVmConfig(spec));
  });

  test("the contract fake is strict: it rejects bodies the OpenAPI file rejects (so 'all requests valid' means something)", async () => {
    const spec = await makeSpec();
    const handle = await launch(spec);
    const client = new ChApiClient(handle.record.controlSocket);
    try {
      await assert.rejects(client.createVm({ payload: { kernel: spec.kernel, kernal: "typo" } }), (err: unknown) => {
        assert.ok(err instanceof ChApiError);
        assert.equal(err.status, 400);
        assert.match(err.body, /body does not match VmConfig: \/payload must NOT have additional properties \(kernal\)/);
        return true;
      });
      await assert.rejects(client.createVm({ cpus: { boot_vcpus: 1 } }), /must have required property 'payload'/);
    } finally {
      await client.close();
    }
    const log = await requests(spec.vmDir);
    assert.equal(log.filter((r) => r.errors !== null).length, 2, "both bad bodies were recorded as rejected");
  });

  test("a guest that ignores the power button: vm.shutdown, vm.delete, vmm.shutdown after the grace time", async () => {
    process.env.FAKE_CH_POWER_BUTTON = "ignore";
    const spec = await makeSpec();
    const handle = await launch(spec);
    await handle.waitRunning(2000);
    const started = Date.now();
    const exit = await handle.stop(300);
    assert.ok(Date.now() - started >= 300, "waited the grace time");
    assert.deepEqual(exit, { code: 0, signal: null, description: "exited with code 0" });
    const sequence = callSequence(await requests(spec.vmDir));
    const tail = sequence.slice(sequence.indexOf("/vm.power-button")).filter((call) => call !== "/vm.info");
    assert.deepEqual(tail, ["/vm.power-button", "/vm.shutdown", "/vm.delete", "/vmm.shutdown"]);
    assertAllValid(await requests(spec.vmDir));
  });

  test("a guest that powers off by itself ends the VMM: exit code 0, reported as a guest power-off", async () => {
    process.env.FAKE_CH_GUEST_POWEROFF_MS = "300";
    const spec = await makeSpec();
    const handle = await launch(spec);
    await handle.waitRunning(2000);
    const exit = await handle.exited;
    assert.deepEqual(exit, { code: 0, signal: null, description: "exited with code 0 (guest powered off)" });
    assert.equal(await handle.runState(), "shutdown");
    assert.ok(!callSequence(await requests(spec.vmDir)).includes("/vm.power-button"), "nobody pressed the button");
  });

  test("exit code 0 without the guest powering off (SIGTERM, a vCPU error, a thread panic) is a failure, with its reason", async () => {
    const cases: { cause: string; pattern: RegExp; trigger?: (pid: number) => void }[] = [
      {
        cause: "signal",
        pattern: /the guest did not power off.*VM exit event.*SIGTERM or SIGINT/,
        trigger: (pid) => process.kill(pid, "SIGTERM"),
      },
      { cause: "vcpu-error", pattern: /the guest did not power off.*VCPU generated error: VcpuRun/ },
      { cause: "thread-panic", pattern: /the guest did not power off.*vCPU thread panicked/ },
    ];
    for (const { cause, pattern, trigger } of cases) {
      if (!trigger) {
        process.env.FAKE_CH_VMM_EXIT_MS = "200";
        process.env.FAKE_CH_VMM_EXIT_CAUSE = cause;
      }
      const spec = await makeSpec();
      const handle = await launch(spec);
      await handle.waitRunning(2000);
      trigger?.(handle.record.pid);
      const exit = await within(handle.exited, 10_000, `the VMM exit (${cause})`);
      assert.equal(exit.code, 0, cause);
      assert.equal(exit.signal, null, cause);
      assert.equal(exit.failed, true, `${cause}: ${exit.description}`);
      assert.match(exit.description, pattern, cause);
      delete process.env.FAKE_CH_VMM_EXIT_MS;
    }
  });

  test(
    "a guest reboot (ACPI reset, triple fault, panic=-1) ends the VM as QEMU's -no-reboot does: " +
      "the worker shuts cloud-hypervisor down",
    async () => {
      process.env.FAKE_CH_GUEST_REBOOT_MS = "200";
      const spec = await makeSpec();
      const handle = await launch(spec);
      await handle.waitRunning(2000);
      // Cloud Hypervisor reboots in-process; the worker must end it rather than let the guest run on.
      const exit = await within(handle.exited, 10_000, "the VMM ended after the guest rebooted");
      assert.equal(exit.code, 0);
      assert.equal(exit.signal, null);
      assert.match(exit.description, /exited with code 0 \(the guest rebooted/);
      assert.equal(exit.failed, undefined, "a guest reboot is the guest's own end, not a failure");
      assert.equal(await handle.runState(), "shutdown");
      const sequence = callSequence(await requests(spec.vmDir));
      assert.ok(sequence.includes("/vmm.shutdown"), sequence.join(" "));
      assert.ok(!sequence.includes("/vm.power-button"), "nobody pressed the button");
    },
  );

  test("the reboot fault reboots inside the same process (vm.reboot) and the VM keeps running", async () => {
    const spec = await makeSpec();
    const handle = await launch(spec);
    await handle.waitRunning(2000);
    assert.ok(handle.reset, "the backend offers a hard reset");
    await handle.reset();
    await handle.waitRunning(2000);
    assert.equal(await handle.runState(), "running");
    assert.equal(await isSameLiveProcess(handle.record.pid, handle.record.startTime), true, "same VMM process");
    // Cloud Hypervisor creates the serial file again on reboot: the console starts over.
    assert.match(await readFile(spec.consolePath, "utf8"), /^contract fake: no guest runs here \(boot 2\)\n$/);
    await handle.pause();
    await handle.resume();
    // The reboot of ours is not mistaken for the guest's: a later stop is an ordinary power-off.
    const exit = await handle.stop(2000);
    assert.equal(exit.description, "exited with code 0 (guest powered off)");
    const sequence = callSequence(await requests(spec.vmDir));
    assert.ok(sequence.includes("/vm.reboot"));
    assert.ok(!sequence.includes("/vmm.shutdown"), sequence.join(" "));
    assertAllValid(await requests(spec.vmDir));
  });

  test("the powerOff fault pulls the plug (vmm.shutdown): exit code 0, the guest's end rather than a failure", async () => {
    const spec = await makeSpec();
    const handle = await launch(spec);
    await handle.waitRunning(2000);
    assert.ok(handle.powerOff, "the backend offers a hard power-off");
    await within(handle.powerOff(), 10_000, "powerOff");
    const exit = await handle.exited;
    assert.deepEqual(exit, { code: 0, signal: null, description: "exited with code 0 (hard power-off: vmm.shutdown)" });
    const sequence = callSequence(await requests(spec.vmDir));
    assert.ok(!sequence.includes("/vm.power-button") && sequence.at(-1) === "/vmm.shutdown", sequence.join(" "));
  });

  test("Cloud Hypervisor's last events can be lost at exit: nothing depends on them", async () => {
    process.env.FAKE_CH_GUEST_POWEROFF_MS = "300";
    const spec = await makeSpec();
    const handle = await launch(spec);
    await handle.waitRunning(2000);
    const exit = await within(handle.exited, 10_000, "the VMM exit");
    assert.deepEqual(exit, { code: 0, signal: null, description: "exited with code 0 (guest powered off)" });
    const events = await readFile(chPaths(spec.vmDir).events, "utf8");
    assert.match(events, /"booted"/);
    assert.doesNotMatch(events, /"shutdown"|"deleted"/, "the stand-in loses the events of the way out, as CH may");
  });

  test("vm.info says Created (not Shutdown) after vm.shutdown: the backend reports the guest shut down", async () => {
    const spec = await makeSpec();
    const handle = await launch(spec);
    await handle.waitRunning(2000);
    const client = new ChApiClient(handle.record.controlSocket);
    try {
      await client.shutdownVm();
      assert.equal((await client.info()).state, "Created", "as vm_shutdown leaves it");
    } finally {
      await client.close();
    }
    assert.equal(await handle.runState(), "shutdown");
    const exit = await handle.stop(1000);
    assert.equal(exit.code, 0);
    assert.equal(await isSameLiveProcess(handle.record.pid, handle.record.startTime), false);
  });

  test("kill() is SIGKILL; a SIGKILL from elsewhere (OOM killer) is reported as not ours", async () => {
    const spec = await makeSpec();
    const killed = await launch(spec);
    const exit = await killed.kill();
    assert.equal(exit.signal, "SIGKILL");
    assert.equal(exit.description, "killed by SIGKILL");
    assert.deepEqual(await killed.kill(), exit);

    const other = await launch(await makeSpec());
    await other.waitRunning(2000);
    process.kill(other.record.pid, "SIGKILL");
    const oom = await other.exited;
    assert.match(oom.description, /killed by SIGKILL \(not sent by the worker: out of memory\?\)/);
    assert.equal(await other.runState(), "shutdown");
    await rejectsWith(other.waitRunning(100), "FAILED_PRECONDITION", /exited before the guest ran: killed by SIGKILL/);
    await rejectsWith(other.pause(), "FAILED_PRECONDITION", /the VMM has exited \(killed by SIGKILL/);
    await rejectsWith(other.blockCounters(), "FAILED_PRECONDITION", /the VMM has exited/);
  });

  test("adopt re-attaches by pid + start time and API socket; a reused or dead pid gives undefined", async () => {
    const spec = await makeSpec();
    const original = await launch(spec);
    await original.waitRunning(2000);
    // A new backend instance stands for a restarted worker.
    const adopted = await backend().adopt(original.record, spec.vmDir);
    assert.ok(adopted, "adopted");
    cleanups.push(() => adopted.kill());
    assert.equal(await adopted.runState(), "running");
    await adopted.waitRunning(1000);
    assert.ok((await adopted.blockCounters()).readOps >= 0n);
    assert.equal(await backend().adopt({ ...original.record, startTime: "1" }, spec.vmDir), undefined, "pid reused");

    const exit = await adopted.stop(2000);
    assert.match(exit.description, /exit status unknown/);
    assert.equal((await original.exited).code, 0);
    assert.equal(await backend().adopt(original.record, spec.vmDir), undefined, "gone");
  });

  test("a restarted worker adopting after a reboot fault takes the old vm:rebooting as history, not as the guest's reboot", async () => {
    const spec = await makeSpec();
    const original = await launch(spec);
    await original.waitRunning(2000);
    await original.reset!();
    const adopted = await backend().adopt(original.record, spec.vmDir);
    assert.ok(adopted, "adopted");
    cleanups.push(() => adopted.kill());
    await adopted.pause();
    await adopted.resume();
    assert.equal(await adopted.runState(), "running");
    await adopted.stop(2000);
    const sequence = callSequence(await requests(spec.vmDir));
    const afterAdoption = sequence.slice(sequence.lastIndexOf("/vm.reboot"));
    assert.ok(afterAdoption.includes("/vm.power-button"), afterAdoption.join(" "));
    assert.ok(!afterAdoption.includes("/vmm.shutdown"), `nothing shut the VMM down for an old reboot: ${afterAdoption.join(" ")}`);
    assert.equal((await original.exited).description, "exited with code 0 (guest powered off)");
  });

  test("a stale API socket (and lock file) left by a crash is removed; a live one is refused", async () => {
    const spec = await makeSpec();
    const { apiSocket } = chPaths(spec.vmDir);
    // A listener that dies without cleaning up leaves the socket file behind, as a crash would.
    const crashed = spawn(process.execPath, [
      "-e",
      `require("net").createServer().listen(${JSON.stringify(apiSocket)}, () => console.log("up"))`,
    ]);
    await new Promise((resolve) => crashed.stdout.once("data", resolve));
    crashed.kill("SIGKILL");
    await new Promise((resolve) => crashed.once("exit", resolve));
    assert.ok(existsSync(apiSocket));
    await writeFile(`${apiSocket}.lock`, "");
    const handle = await launch(spec);
    await handle.waitRunning(2000);
    assert.equal(existsSync(`${apiSocket}.lock`), false);
    await handle.kill();

    const busy = await makeSpec();
    const server = createServer().listen(chPaths(busy.vmDir).apiSocket);
    cleanups.push(() => new Promise((resolve) => server.close(resolve)));
    await new Promise((resolve) => server.once("listening", resolve));
    await rejectsWith(backend().launch(busy), "FAILED_PRECONDITION", /already serves the API socket/);
  });

  test("the API socket may come up late: vmm.ping is retried until it answers", async () => {
    process.env.FAKE_CH_LISTEN_DELAY_MS = "400";
    const spec = await makeSpec();
    const handle = await launch(spec, { apiReadyTimeoutMs: 5000 });
    await handle.waitRunning(2000);
    assert.deepEqual(callSequence(await requests(spec.vmDir)).slice(0, 3), ["/vmm.ping", "/vm.create", "/vm.boot"]);
  });

  describe("errors map to WorkerError codes", () => {
    test("binary not found: FAILED_PRECONDITION naming the binary", async () => {
      await rejectsWith(
        backend({ binary: "/nonexistent/cloud-hypervisor" }).launch(await makeSpec()),
        "FAILED_PRECONDITION",
        /\/nonexistent\/cloud-hypervisor/,
      );
    });

    test("failed to start: FAILED_PRECONDITION with the VMM's last words", async () => {
      process.env.FAKE_CH_FAIL_AT_START = "Error: cannot open /dev/kvm: permission denied";
      await rejectsWith(
        backend().launch(await makeSpec()),
        "FAILED_PRECONDITION",
        /failed to start: exited with code 1: Error: cannot open \/dev\/kvm/,
      );
    });

    test("API error: CH's error text is in the message, and the VMM is cleaned up", async () => {
      const spec = await makeSpec();
      await rm(spec.kernel);
      let pid = 0;
      await rejectsWith(
        backend()
          .launch(spec)
          .then((handle) => (pid = handle.record.pid)),
        "INTERNAL",
        new RegExp(
          /vm\.boot: cloud-hypervisor answered HTTP 500: Error from API: /.source +
            /The VM could not boot: Error loading kernel: Cannot open kernel file/.source,
        ),
      );
      assert.equal(pid, 0);
      assert.deepEqual(callSequence(await requests(spec.vmDir)), ["/vmm.ping", "/vm.create", "/vm.boot"]);
      assert.deepEqual(await processesMentioning(spec.vmDir), [], "the VMM was killed");
      assert.equal(existsSync(chPaths(spec.vmDir).apiSocket), false, "socket removed");
    });

    test("boot timeout: DEADLINE_EXCEEDED, VMM killed", async () => {
      process.env.FAKE_CH_BOOT_DELAY_MS = "60000";
      const spec = await makeSpec();
      const started = Date.now();
      await rejectsWith(backend({ bootRequestTimeoutMs: 1000 }).launch(spec), "DEADLINE_EXCEEDED", /vm\.boot.*no answer within 1000 ms/);
      assert.ok(Date.now() - started < 30_000, "did not wait for the slow boot");
      assert.deepEqual(await processesMentioning(spec.vmDir), [], "the VMM was killed");
    });

    test("API never answers: DEADLINE_EXCEEDED", async () => {
      process.env.FAKE_CH_LISTEN_DELAY_MS = "5000";
      const spec = await makeSpec();
      await rejectsWith(backend({ apiReadyTimeoutMs: 300 }).launch(spec), "DEADLINE_EXCEEDED", /did not answer within 300 ms/);
      assert.deepEqual(await processesMentioning(spec.vmDir), [], "the VMM was killed");
    });
  });

  describe("snapshots for pools: vm.snapshot, then vm.restore into another VM's TAP, console and vsock", () => {
    /** A pooled VM's spec: parked TAP, its agent's vsock socket, a read-only root image. */
    async function pooledSpec(tap: string, extra: Partial<VmLaunchSpec> = {}): Promise<VmLaunchSpec> {
      const spec = await makeSpec({ net: { tap, mac: PARKED_MAC }, ...extra });
      const image = join(spec.vmDir, "root.img");
      await writeFile(image, "");
      return { ...spec, image: extra.image ?? image, agentSocket: join(spec.vmDir, "agent.sock") };
    }

    /** A template saved into a committed snapshot of the store, as a +disk pool does; the template is gone after. */
    async function savedSnapshot() {
      const template = await pooledSpec("pcrt-template");
      const handle = await launch(template);
      await handle.waitRunning(2000);
      const store = new FileSnapshots(await mkdtemp(join(tmpdir(), "pcr-ch-snapshots-")));
      const id = { key: "0123456789abcdef", backend: "cloud-hypervisor", version: await backend().version!() };
      const saved = await handle.saveSnapshot!(await store.draft(id));
      const file = await store.commit(id);
      cleanups.push(() => rm(dirname(file.path), { recursive: true, force: true }));
      assert.equal(await handle.runState(), "paused", "saved paused, and left so");
      await handle.kill();
      return { template, saved, file, store, id };
    }

    test("the template is paused and saved; a VM restored from it has its own TAP, console, vsock and disks, and runs", async () => {
      const { template, saved, file } = await savedSnapshot();
      assert.match(file.version, /^cloud-hypervisor v\d+/, "snapshots are keyed by `cloud-hypervisor --version`");
      assert.deepEqual((await readdir(file.path)).sort(), ["config.json", "memory-ranges", "state.json"]);
      assert.equal(saved.bytes, file.bytes);
      const templateLog = await requests(template.vmDir);
      assertAllValid(templateLog);
      assert.deepEqual(
        callSequence(templateLog)
          .filter((call) => call !== "/vm.info")
          .slice(-2),
        ["/vm.pause", "/vm.snapshot"],
      );
      // Written inside the VM's own directory (all a caged VMM may write to), then moved to the store.
      assert.deepEqual(templateLog.find((r) => r.path === "/vm.snapshot")!.body, {
        destination_url: `file://${chPaths(template.vmDir).snapshotDir}`,
      });
      assert.equal(existsSync(chPaths(template.vmDir).snapshotDir), false);

      const clone = await pooledSpec("pcrt-clone", { restoreFrom: file.path });
      const handle = await launch(clone);
      await handle.waitRunning(2000);
      assert.equal(await handle.runState(), "running");
      const log = await requests(clone.vmDir);
      assertAllValid(log);
      assert.deepEqual(callSequence(log).slice(0, 2), ["/vmm.ping", "/vm.restore"], "restored, neither created nor booted");
      assert.ok(!log.some((r) => r.path === "/vm.create" || r.path === "/vm.boot"));
      const restoreDir = chPaths(clone.vmDir).restoreDir;
      assert.deepEqual(log.find((r) => r.path === "/vm.restore")!.body, { source_url: `file://${restoreDir}`, resume: true });

      // What the restored VM runs with: the clone's own parts, the template's nowhere.
      const client = new ChApiClient(handle.record.controlSocket);
      const config = (await client.info().finally(() => client.close())).config as unknown as ReturnType<typeof buildVmConfig>;
      assert.deepEqual(config, buildVmConfig(clone));
      assert.ok(!JSON.stringify(config).includes(template.vmDir), JSON.stringify(config));
      assert.match(await readFile(clone.consolePath, "utf8"), /restored/, "the clone's console is its own file");
      assert.ok(existsSync(clone.agentSocket!), "the clone's vsock socket is bound in its own directory");
      // The snapshot itself is untouched: read-only, still the template's.
      assert.ok(
        "found" in
          (await new FileSnapshots(dirname(file.path)).find(
            { key: file.key, backend: file.backend, version: file.version },
            { verify: true },
          )),
      );
      assert.equal(JSON.parse(await readFile(join(file.path, "config.json"), "utf8")).net[0].tap, "pcrt-template");
      await handle.stop(2000);
    });

    test("caged (the worker's default): the template saves from inside its cage, a clone restores inside its own", {
      skip: (process.getuid?.() !== 0 && "the cage needs root") || (!existsSync(defaultCageHelper()) && "the cage helper is not built"),
    }, async () => {
      const runtimeDir = await mkdtemp(join(tmpdir(), "pcr-ch-cage-"));
      cleanups.push(() => rm(runtimeDir, { recursive: true, force: true }));
      const cage = testCage(runtimeDir, 45100);
      /** A spec with no TAP (none to hand over here), caged; the stand-in is a Node script of this checkout. */
      const caged = async (id: string, extra: Partial<VmLaunchSpec> = {}) => {
        const spec = await makeSpec({ id, ...extra });
        const image = join(spec.vmDir, "root.img");
        await writeFile(image, "");
        const made = await cage.prepare(id, { memoryBytes: spec.memoryBytes, vmDir: spec.vmDir, storePaths: [] });
        cleanups.push(() => cage.release(id));
        return { ...spec, image, agentSocket: join(spec.vmDir, "agent.sock"), cage: { ...made, readOnly: [...made.readOnly, REPO_ROOT] } };
      };
      const template = await caged("vm-ch-template");
      const handle = await launch(template);
      await handle.waitRunning(5000);
      await cage.seal(template.id);
      const store = new FileSnapshots(await mkdtemp(join(tmpdir(), "pcr-ch-snapshots-")));
      const id = { key: "0123456789abcdef", backend: "cloud-hypervisor", version: await backend().version!() };
      await handle.saveSnapshot!(await store.draft(id));
      const file = await store.commit(id);
      cleanups.push(() => rm(dirname(file.path), { recursive: true, force: true }));
      await handle.kill();
      assert.deepEqual((await readdir(file.path)).sort(), ["config.json", "memory-ranges", "state.json"]);
      assert.equal((await stat(join(file.path, "memory-ranges"))).uid, 0, "the snapshot is root's, not the template VMM's");

      const clone = await caged("vm-ch-clone", { restoreFrom: file.path });
      const restored = await launch(clone);
      await restored.waitRunning(5000);
      assert.equal(await restored.runState(), "running");
      const inside = Number(
        (await readFile(`/proc/${restored.record.pid}/task/${restored.record.pid}/children`, "utf8")).trim().split(" ")[0],
      );
      const status = await readFile(`/proc/${inside}/status`, "utf8");
      assert.match(status, new RegExp(`^Uid:\\s+${clone.cage.uid}\\s`, "m"), "the stand-in VMM runs as the clone's uid");
      assert.match(status, /^Seccomp:\s+2$/m);
      const log = await requests(clone.vmDir);
      assertAllValid(log);
      assert.deepEqual(callSequence(log).slice(0, 2), ["/vmm.ping", "/vm.restore"]);
      assert.match(await readFile(clone.consolePath, "utf8"), /restored/);
      assert.ok(existsSync(clone.agentSocket), "the clone's vsock socket, bound inside its cage");
      await restored.stop(2000);
    });

    test("caged with a share: virtiofsd runs in the VM's cage, as its uid, beside the VMM", {
      skip: (process.getuid?.() !== 0 && "the cage needs root") || (!existsSync(defaultCageHelper()) && "the cage helper is not built"),
    }, async () => {
      const runtimeDir = await mkdtemp(join(tmpdir(), "pcr-ch-cage-"));
      cleanups.push(() => rm(runtimeDir, { recursive: true, force: true }));
      const hostDir = await mkdtemp(join(tmpdir(), "pcr-ch-share-"));
      cleanups.push(() => rm(hostDir, { recursive: true, force: true }));
      await writeFile(join(hostDir, "token"), "s3cret", { mode: 0o400 });
      const cage = testCage(runtimeDir, 45100);
      const spec = await makeSpec({ id: "vm-ch-share", share: { tag: "secrets", hostDir } });
      const made = await cage.prepare(spec.id, { memoryBytes: spec.memoryBytes, vmDir: spec.vmDir, shared: hostDir, storePaths: [] });
      cleanups.push(() => cage.release(spec.id));
      const handle = await launch(
        { ...spec, cage: { ...made, readOnly: [...made.readOnly, REPO_ROOT] } },
        { virtiofsdBinary: FAKE_RUST_VIRTIOFSD },
      );
      await handle.waitRunning(5000);
      const [vmm, virtiofsd] = [handle.record.pid, handle.record.helpers[0]!.pid];
      for (const helperPid of [vmm, virtiofsd]) {
        const inside = Number((await readFile(`/proc/${helperPid}/task/${helperPid}/children`, "utf8")).trim().split(" ")[0]);
        const status = await readFile(`/proc/${inside}/status`, "utf8");
        assert.match(status, new RegExp(`^Uid:\\s+${made.uid}\\s`, "m"));
        assert.match(status, /^Seccomp:\s+2$/m);
      }
      assert.match(await readFile(chPaths(spec.vmDir).virtiofsdLog, "utf8"), /"sandbox":"none".*"share":\{"token":"s3cret"\}/);
      await handle.stop(2000);
    });

    test("a snapshot of another machine, or not Cloud Hypervisor's, is refused before vm.restore; nothing is left", async () => {
      const { file } = await savedSnapshot();
      const bigger = await pooledSpec("pcrt-big", { restoreFrom: file.path, cpu: 2 });
      await rejectsWith(backend().launch(bigger), "FAILED_PRECONDITION", /another machine: its vCPU count is \[1,1\], this VM's \[2,2\]/);
      const noNet = await makeSpec({ restoreFrom: file.path, image: join(tmpdir(), "none.img"), agentSocket: "/tmp/x.sock" });
      await rejectsWith(backend().launch(noNet), "FAILED_PRECONDITION", /another machine: its net are \[net0\], this VM's \[\]/);
      const empty = await mkdtemp(join(tmpdir(), "pcr-ch-empty-"));
      cleanups.push(() => rm(empty, { recursive: true, force: true }));
      const fromEmpty = await pooledSpec("pcrt-empty", { restoreFrom: empty });
      await rejectsWith(backend().launch(fromEmpty), "FAILED_PRECONDITION", /has no config.json/);
      await writeFile(join(empty, "config.json"), JSON.stringify({ payload: { kernel: "/k" } }));
      await rejectsWith(backend().launch(fromEmpty), "FAILED_PRECONDITION", /is not a Cloud Hypervisor VmConfig/);
      for (const spec of [bigger, noNet, fromEmpty]) {
        assert.deepEqual(await processesMentioning(spec.vmDir), [], "no VMM left");
        assert.ok(!(await requests(spec.vmDir)).some((r) => r.path === "/vm.restore"), "vm.restore never sent");
      }
    });

    test("a restore Cloud Hypervisor refuses (a disk gone) is an error, and the VMM is killed", async () => {
      const { file } = await savedSnapshot();
      const clone = await pooledSpec("pcrt-clone", { restoreFrom: file.path });
      await rm(clone.image!);
      await rejectsWith(
        backend().launch(clone),
        "INTERNAL",
        /vm\.restore: cloud-hypervisor answered HTTP 500: .*could not be restored: Error opening disk file/,
      );
      assert.deepEqual(await processesMentioning(clone.vmDir), []);
    });
  });

  test("with a share and QEMU's C virtiofsd (no read-only mode): FAILED_PRECONDITION before any process starts", {
    skip: !existsSync(C_VIRTIOFSD) && `${C_VIRTIOFSD} missing (Debian package qemu-system-common)`,
  }, async () => {
    const hostDir = await mkdtemp(join(tmpdir(), "pcr-ch-share-"));
    cleanups.push(() => rm(hostDir, { recursive: true, force: true }));
    const spec = await makeSpec({ share: { tag: "secrets", hostDir } });
    await rejectsWith(backend().launch(spec), "FAILED_PRECONDITION", /cannot export a share read-only/);
    assert.deepEqual(await processesMentioning(spec.vmDir), [], "neither virtiofsd nor the VMM runs");
  });

  test("with a share: one real virtiofsd (read-only capable) tied to the VM's life, its socket in the fs config", {
    skip: !existsSync(C_VIRTIOFSD) && `${C_VIRTIOFSD} missing (Debian package qemu-system-common)`,
  }, async () => {
    const hostDir = await mkdtemp(join(tmpdir(), "pcr-ch-share-"));
    cleanups.push(() => rm(hostDir, { recursive: true, force: true }));
    // No Rust virtiofsd here: a stand-in that speaks its argv (with --readonly) and runs the C daemon,
    // so the process plumbing is real; what it serves is not mounted by the contract fake anyway.
    const rustLike = join(hostDir, "..", `${basename(hostDir)}-virtiofsd`);
    await writeFile(
      rustLike,
      [
        "#!/bin/sh",
        'if [ "$1" = --help ]; then echo "Usage: virtiofsd [OPTIONS] --shared-dir <shared-dir>"; echo "      --readonly"; exit 0; fi',
        'while [ $# -gt 0 ]; do case "$1" in --socket-path) s=$2; shift;; --shared-dir) d=$2; shift;; esac; shift; done',
        `exec ${C_VIRTIOFSD} --socket-path="$s" -o source="$d" -o cache=none -o sandbox=namespace`,
      ].join("\n"),
      { mode: 0o755 },
    );
    cleanups.push(() => rm(rustLike, { force: true }));
    const spec = await makeSpec({ share: { tag: "secrets", hostDir } });
    const handle = await launch(spec, { virtiofsdBinary: rustLike });
    await handle.waitRunning(2000);
    assert.equal(handle.record.helpers.length, 1);
    const helper = handle.record.helpers[0]!;
    assert.equal(await isSameLiveProcess(helper.pid, helper.startTime), true, "virtiofsd runs");
    const create = (await requests(spec.vmDir)).find((r) => r.path === "/vm.create")!;
    const body = create.body as ReturnType<typeof buildVmConfig>;
    assert.deepEqual(body.fs, [{ tag: "secrets", socket: chPaths(spec.vmDir).virtiofsSocket, num_queues: 1, queue_size: 1024, id: "fs0" }]);
    assert.equal(body.memory.shared, true);
    assert.ok(existsSync(chPaths(spec.vmDir).virtiofsSocket));

    // Adoption carries the helper along; stopping the VM ends virtiofsd.
    const adopted = await backend({ virtiofsdBinary: rustLike }).adopt(handle.record, spec.vmDir);
    assert.ok(adopted);
    await adopted.stop(2000);
    await handle.exited;
    const deadline = Date.now() + 2000;
    while ((await isSameLiveProcess(helper.pid, helper.startTime)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(await isSameLiveProcess(helper.pid, helper.startTime), false, "virtiofsd ended with the VM");
  });
});

function realCloudHypervisor(): string | undefined {
  try {
    return execFileSync("sh", ["-c", "command -v cloud-hypervisor"], { encoding: "utf8" }).trim() || undefined;
  } catch {
    return undefined;
  }
}

const realBinary = realCloudHypervisor();
const guest = testGuest();
test("real Cloud Hypervisor boots the test guest", {
  skip: !realBinary ? "cloud-hypervisor not installed (cannot be installed on this machine)" : "skip" in guest ? guest.skip : false,
}, async () => {
  if (!realBinary || "skip" in guest) return;
  const spec = await makeSpec({
    kernel: guest.spec.kernel,
    initrd: guest.spec.initrd,
    image: guest.spec.image,
    cmdline: `${guest.spec.cmdline} console=ttyS0`,
    memoryBytes: 512 * 1024 * 1024,
  });
  const handle = await launch(spec, { binary: realBinary });
  await handle.waitRunning(30_000);
  const deadline = Date.now() + 60_000;
  while (!/pcr-guest: ready/.test(await readFile(spec.consolePath, "utf8").catch(() => "")) && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 200));
  assert.match(await readFile(spec.consolePath, "utf8"), /pcr-guest: ready/);
  const exit = await handle.stop(5000);
  assert.notEqual(exit.signal, "SIGKILL", exit.description);
});
