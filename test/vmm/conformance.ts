// The contract every VMM backend keeps (worker/ports.ts VmmBackend and VmmHandle), as one suite:
// launch, running, counters, pause/resume, stop, kill, exit reporting, adoption of what is gone.
// Each backend runs it from its own conformance-<backend>.test.ts with a target below. Two boots.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { WorkerError } from "../../worker/core/errors.js";
import type { VmLaunchSpec, VmmBackend, VmmExit, VmmHandle } from "../../worker/ports/index.js";

export interface ConformanceTarget {
  name: string;
  /** false, or why this backend cannot run here (the suite is skipped with that reason). */
  skip: string | false;
  /** A backend as a (re)started worker builds it; called more than once. */
  backend(): Promise<VmmBackend>;
  /** A launch spec for a VM of this id: a root image (so the counters move), no data disk; vmDir exists. */
  spec(backend: VmmBackend, id: string): VmLaunchSpec;
  /** Resolves once the guest can take the ACPI power button (a real guest must have booted that far). */
  guestReady(spec: VmLaunchSpec, handle: VmmHandle): Promise<void>;
  /** A spec (with whatever arranging the backend needs) whose launch fails at start. */
  brokenLaunch(backend: VmmBackend, id: string): VmLaunchSpec;
  /** For waitRunning and the guest's boot. */
  bootTimeoutMs: number;
  /** Given to stop(); a healthy guest powers off well within it. */
  graceMs: number;
}

function workerError(code: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof WorkerError, `a WorkerError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

function assertCounters(counters: Awaited<ReturnType<VmmHandle["blockCounters"]>>): void {
  for (const key of ["readBytes", "writeBytes", "readOps", "writeOps"] as const) {
    assert.equal(typeof counters[key], "bigint", `${key} is a bigint`);
    assert.ok(counters[key] >= 0n, `${key} >= 0`);
  }
}

/** What every handle answers once its VMM is gone. */
async function assertGone(handle: VmmHandle, exit: VmmExit, graceMs: number): Promise<void> {
  assert.deepEqual(await handle.exited, exit, "exited resolves to the same exit");
  assert.deepEqual(await handle.stop(graceMs), exit, "stop after the end returns the exit");
  assert.deepEqual(await handle.kill(), exit, "kill after the end returns the exit");
  assert.equal(await handle.runState(), "shutdown");
  await assert.rejects(handle.pause(), workerError("FAILED_PRECONDITION"), "pause after the end");
  await assert.rejects(handle.resume(), workerError("FAILED_PRECONDITION"), "resume after the end");
  await assert.rejects(handle.blockCounters(), workerError("FAILED_PRECONDITION"), "counters after the end");
  await assert.rejects(handle.waitRunning(1000), workerError("FAILED_PRECONDITION"), "waitRunning after the end");
}

export function vmmConformance(target: ConformanceTarget): void {
  describe(`VMM contract: ${target.name}`, { skip: target.skip, concurrency: false }, () => {
    const started: VmmHandle[] = [];
    after(async () => {
      await Promise.all(started.map((handle) => handle.kill().catch(() => undefined)));
    });

    async function launch(backend: VmmBackend, spec: VmLaunchSpec): Promise<VmmHandle> {
      const handle = await backend.launch(spec);
      started.push(handle);
      return handle;
    }

    test("launch → running → counters → pause/resume → stop: the guest powers off, the exit is reported once", async (t) => {
      const backend = await target.backend();
      const spec = target.spec(backend, "vm-conf-a");
      const t0 = performance.now();
      const handle = await launch(backend, spec);
      assert.equal(handle.record.backend, backend.name);
      assert.ok(Number.isInteger(handle.record.pid) && handle.record.pid > 0, "a pid");
      assert.ok(handle.record.startTime.length > 0, "a start time");
      assert.ok(handle.record.controlSocket.length > 0, "a control socket");
      assert.ok(Array.isArray(handle.record.helpers));

      await handle.waitRunning(target.bootTimeoutMs);
      t.diagnostic(`launch -> running ${Math.round(performance.now() - t0)} ms`);
      await handle.waitRunning(1000); // again, at once
      assert.equal(await handle.runState(), "running");

      await target.guestReady(spec, handle);
      const first = await handle.blockCounters();
      assertCounters(first);
      assert.ok(
        first.readBytes > 0n && first.readOps > 0n,
        `the guest read its root disk: ${first.readBytes} bytes in ${first.readOps} ops`,
      );
      assert.equal(first.writeBytes, 0n, "the root disk is read-only");
      const second = await handle.blockCounters();
      for (const key of ["readBytes", "writeBytes", "readOps", "writeOps"] as const)
        assert.ok(second[key] >= first[key], `${key} never goes back`);

      await handle.pause();
      assert.equal(await handle.runState(), "paused");
      await assert.rejects(handle.waitRunning(200), workerError("DEADLINE_EXCEEDED"), "a paused guest is not running");
      await handle.resume();
      assert.equal(await handle.runState(), "running");
      await handle.waitRunning(1000);

      let settled = false;
      void handle.exited.then(() => (settled = true));
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(settled, false, "exited is pending while the VMM runs");

      const s0 = performance.now();
      const [exit, again] = await Promise.all([handle.stop(target.graceMs), handle.stop(target.graceMs)]);
      const stopMs = Math.round(performance.now() - s0);
      t.diagnostic(`stop ${stopMs} ms: ${exit.description}`);
      assert.deepEqual(again, exit, "stop is idempotent");
      assert.ok(stopMs < target.graceMs, `the guest powered off within the grace (${stopMs} ms)`);
      assert.equal(exit.code, 0, exit.description);
      assert.equal(exit.signal, null);
      assert.equal(exit.failed, undefined, "a clean power-off is no failure");
      assert.ok(exit.description.length > 0);
      await assertGone(handle, exit, target.graceMs);

      const restarted = await target.backend();
      assert.equal(await restarted.adopt(handle.record, spec.vmDir), undefined, "a dead VMM is not adopted");
    });

    test("kill: a paused VM dies at once by SIGKILL; kill and stop after it are idempotent; nothing gone is adopted", async (t) => {
      const backend = await target.backend();
      const spec = target.spec(backend, "vm-conf-b");
      const handle = await launch(backend, spec);
      await handle.waitRunning(target.bootTimeoutMs);
      await handle.pause();

      const k0 = performance.now();
      const [exit, again] = await Promise.all([handle.kill(), handle.kill()]);
      const killMs = Math.round(performance.now() - k0);
      t.diagnostic(`kill ${killMs} ms: ${exit.description}`);
      assert.deepEqual(again, exit, "kill is idempotent");
      assert.ok(killMs < 3000, `kill is prompt (${killMs} ms)`);
      assert.equal(exit.signal, "SIGKILL");
      assert.equal(exit.code, null);
      assert.match(exit.description, /SIGKILL/);
      await assertGone(handle, exit, target.graceMs);

      const restarted = await target.backend();
      assert.equal(await restarted.adopt(handle.record, spec.vmDir), undefined, "a killed VMM is not adopted");
      const other = backend.name === "qemu" ? "cloud-hypervisor" : "qemu";
      assert.equal(
        await restarted.adopt({ ...handle.record, backend: other }, spec.vmDir),
        undefined,
        "another backend's record is not adopted",
      );
    });

    test("a VMM that cannot start fails launch with FAILED_PRECONDITION", async () => {
      const backend = await target.backend();
      const spec = target.brokenLaunch(backend, "vm-conf-c");
      await assert.rejects(
        backend.launch(spec).then((handle) => {
          started.push(handle);
          return handle;
        }),
        workerError("FAILED_PRECONDITION"),
      );
    });
  });
}
