// Limits and orderly ends: host capacity (VM count, vCPUs, memory) -> RESOURCE_EXHAUSTED, even for
// racing creates; a failing create step rolls back every earlier one and names itself; the boot
// timeout; the time-to-live (across a worker restart too); SIGTERM with and without stopping VMs.
import assert from "node:assert/strict";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { destroyWorker, type WorkerProcess } from "../helpers/worker-process.js";
import { client, guestSpec, logTail, report, restartWorker, skip, startChaosWorker, waitFor } from "./harness.js";
import { checkInvariants, vmmProcesses } from "./invariants.js";

const MIB = 1024n * 1024n;

async function expectCode(promise: Promise<unknown>, code: string, message?: RegExp): Promise<string> {
  let error: { code?: string; message?: string } | undefined;
  try {
    await promise;
  } catch (err) {
    error = err as { code?: string; message?: string };
  }
  assert.ok(error, `expected ${code}, the call succeeded`);
  assert.equal(error.code, code, error.message);
  if (message) assert.match(error.message ?? "", message);
  return error.message ?? "";
}

/** A stand-in for qemu-system-x86_64: a shell script that ends in exec'ing it; `args` go after the worker's. */
async function qemuWrapper(before: string, args = ""): Promise<{ path: string; remove: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), "pcr-chaos-qemu-"));
  const path = join(dir, "qemu");
  await writeFile(path, `#!/bin/sh\n${before}exec qemu-system-x86_64 "$@"${args}\n`);
  await chmod(path, 0o755);
  return { path, remove: () => rm(dir, { recursive: true, force: true }) };
}

async function assertClean(worker: WorkerProcess, context = ""): Promise<void> {
  const { problems } = await checkInvariants(worker);
  assert.deepEqual(problems, [], `${context}\n${logTail(worker)}`);
}

describe("limits, rollback, timeouts and SIGTERM", { skip }, () => {
  const workers: WorkerProcess[] = [];
  const figures: Record<string, unknown> = {};

  after(async () => {
    for (const worker of workers) await destroyWorker(worker).catch(() => undefined);
    report("limits", figures);
  });

  test("capacity: VM count, total vCPUs and total memory give RESOURCE_EXHAUSTED; 3 racing creates for 1 free slot: exactly 1 wins", {
    timeout: 120_000,
  }, async () => {
    const worker = await startChaosWorker(["--max-vms", "2", "--max-total-cpu", "2", "--max-total-memory-bytes", String(640n * MIB)]);
    workers.push(worker);
    const c = await client(worker);
    const first = await c.createVm(guestSpec());
    await expectCode(c.createVm(guestSpec({ cpu: 2 })), "RESOURCE_EXHAUSTED", /vCPU limit 2/);
    await expectCode(c.createVm(guestSpec({ memoryBytes: 512n * MIB })), "RESOURCE_EXHAUSTED", /memory limit/);
    const racing = await Promise.allSettled([0, 1, 2].map(() => c.createVm(guestSpec())));
    const won = racing.filter((result) => result.status === "fulfilled");
    const refused = racing.filter(
      (result) => result.status === "rejected" && (result.reason as { code?: string }).code === "RESOURCE_EXHAUSTED",
    );
    assert.equal(won.length, 1);
    assert.equal(refused.length, 2);
    await expectCode(c.createVm(guestSpec()), "RESOURCE_EXHAUSTED", /limit of 2 VMs/);
    await assertClean(worker);
    await c.deleteVm(first);
    await c.deleteVm((won[0] as PromiseFulfilledResult<string>).value);
    // Refused creates reserved nothing for good: the slots are free again.
    await c.deleteVm(await c.createVm(guestSpec()));
    await assertClean(worker);
    c.close();
    figures.capacity = { racingCreates: 3, won: won.length, refused: refused.length };
  });

  test("a create failing at a step rolls back every earlier step, and the error names the step", { timeout: 120_000 }, async () => {
    const worker = workers[0]!;
    const c = await client(worker);
    const missing = "/nix/store/00000000000000000000000000000000-pcr-chaos-missing";
    await expectCode(c.createVm(guestSpec({ image: missing })), "NOT_FOUND", /^fetch store paths: /);
    await assertClean(worker, "after a failed fetch");
    // The root image is no kernel: QEMU is never started, after the directory, record, secrets and network were made.
    const secrets = [{ name: "token", value: new TextEncoder().encode("s3cret") }];
    const message = await expectCode(
      c.createVm(guestSpec({ kernel: guestSpec().image }), { secrets }),
      "FAILED_PRECONDITION",
      /^start vmm: /,
    );
    await assertClean(worker, "after a failed launch");
    assert.deepEqual(await c.listVms(), []);
    c.close();
    figures.rollback = { steps: ["fetch store paths", "start vmm"], lastError: message.slice(0, 120) };
  });

  test("a create whose call deadline passes is undone: the caller got DEADLINE_EXCEEDED, so no VM may stay", {
    timeout: 120_000,
  }, async () => {
    // A QEMU that takes a second to start: the 400 ms call deadline passes during "start vmm".
    const wrapper = await qemuWrapper("sleep 1\n");
    const worker = await startChaosWorker(["--qemu-binary", wrapper.path, "--accel", "tcg", "--call-deadline-ms", "400"]);
    workers.push(worker);
    try {
      const c = await client(worker);
      const t = performance.now();
      await expectCode(c.createVm(guestSpec()), "DEADLINE_EXCEEDED", /call deadline/);
      const answeredMs = performance.now() - t;
      // The create goes on in the worker until its next step, then rolls back; the service's own
      // DEADLINE_EXCEEDED is logged last.
      const ended = /"method":"createVm","code":"DEADLINE_EXCEEDED"/;
      await waitFor("the late create undone", 15_000, async () =>
        ended.test(worker.logs()) && (await c.listVms()).length === 0 && vmmProcesses(worker).live.size === 0 ? true : undefined,
      );
      await assertClean(worker);
      c.close();
      figures.callDeadlineCreate = { deadlineMs: 400, answeredAfterMs: Math.round(answeredMs), leftBehind: 0 };
    } finally {
      await wrapper.remove();
    }
  });

  test("boot timeout: a VMM that never reports the guest running fails the create (DEADLINE_EXCEEDED) and is killed", {
    timeout: 120_000,
  }, async () => {
    // A QEMU that starts the guest paused (-S) never reports it running.
    const wrapper = await qemuWrapper("", " -S");
    const worker = await startChaosWorker(["--qemu-binary", wrapper.path, "--accel", "tcg", "--boot-timeout-ms", "1500"]);
    workers.push(worker);
    try {
      const c = await client(worker);
      const t = performance.now();
      await expectCode(c.createVm(guestSpec()), "DEADLINE_EXCEEDED", /^wait for vmm running: .*1500 ms/);
      const ms = performance.now() - t;
      assert.ok(ms >= 1500 && ms < 6000, `answered after ${Math.round(ms)} ms`);
      assert.equal(vmmProcesses(worker).live.size, 0, "the paused QEMU was left running");
      await assertClean(worker);
      c.close();
      figures.bootTimeout = { timeoutMs: 1500, answeredAfterMs: Math.round(ms) };
    } finally {
      await wrapper.remove();
    }
  });

  test("ttlSeconds: the worker deletes the VM when it expires, also when the worker was restarted meanwhile", {
    timeout: 120_000,
  }, async () => {
    let worker = workers[0]!;
    let c = await client(worker);
    const t = performance.now();
    const short = await c.createVm(guestSpec(), { ttlSeconds: 1 });
    await waitFor("ttl delete", 5000, async () => ((await c.listVms()).length === 0 ? true : undefined));
    const ttlMs = performance.now() - t;
    await assertClean(worker);
    // Its TTL must outlast a SIGKILL and a worker start, which take seconds on a loaded 2-core host.
    const survivor = await c.createVm(guestSpec(), { ttlSeconds: 6 });
    c.close();
    await worker.stop("SIGKILL");
    worker = await restartWorker(worker, ["--max-vms", "2", "--max-total-cpu", "2", "--max-total-memory-bytes", String(640n * MIB)]);
    workers[0] = worker;
    c = await client(worker);
    assert.equal((await c.getVm(survivor)).status, "running");
    await waitFor("ttl delete after restart", 11_000, async () => ((await c.listVms()).length === 0 ? true : undefined));
    await assertClean(worker);
    c.close();
    // A client's delete racing the expiry: whichever comes second is a no-op, not an error.
    c = await client(worker);
    const ids = await Promise.all([0, 1].map(() => c.createVm(guestSpec(), { ttlSeconds: 1 })));
    await Promise.all(
      ids.map(async (id, i) => {
        await new Promise((resolve) => setTimeout(resolve, 880 + 80 * i));
        await c.deleteVm(id).catch((err: { code?: string }) => assert.equal(err.code, "NOT_FOUND"));
      }),
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(
      worker
        .logs()
        .split("\n")
        .filter((line) => /"level":50/.test(line)),
      [],
    );
    await assertClean(worker);
    c.close();
    figures.ttl = { ttlSeconds: 1, deletedAfterMs: Math.round(ttlMs), restartedVmDeleted: true, ids: [short, survivor].length };
  });

  test("SIGTERM: a create in flight finishes, new calls are refused, VMs keep running and are re-adopted", {
    timeout: 120_000,
  }, async () => {
    let worker = workers[0]!;
    const c = await client(worker);
    const running = await c.createVm(guestSpec());
    const inFlight = c.createVm(guestSpec());
    await new Promise((resolve) => setTimeout(resolve, 20));
    const stopping = worker.stop("SIGTERM");
    const created = await inFlight;
    await stopping;
    await assert.rejects(c.listVms());
    c.close();
    const pids = [...vmmProcesses(worker).live.keys()];
    assert.equal(pids.length, 2, "both VMMs outlive the worker");
    worker = await restartWorker(worker);
    workers[0] = worker;
    const d = await client(worker);
    const vms = await d.listVms();
    assert.deepEqual(vms.map((vm) => vm.id).sort(), [running, created].sort());
    assert.ok(
      vms.every((vm) => vm.status === "running"),
      JSON.stringify(vms.map((vm) => [vm.id, vm.status, vm.failure])),
    );
    await assertClean(worker);
    d.close();
  });

  test("SIGTERM with --stop-vms-on-exit: every VM is stopped and forgotten, nothing is left", { timeout: 120_000 }, async () => {
    let worker = workers[0]!;
    await worker.stop("SIGTERM");
    worker = await restartWorker(worker, ["--stop-vms-on-exit"]);
    workers[0] = worker;
    const c = await client(worker);
    assert.equal((await c.listVms()).length, 2);
    c.close();
    await worker.stop("SIGTERM");
    assert.equal(vmmProcesses(worker).live.size, 0, "VMMs still run after --stop-vms-on-exit");
    worker = await restartWorker(worker);
    workers[0] = worker;
    const d = await client(worker);
    assert.deepEqual(await d.listVms(), []);
    await assertClean(worker);
    d.close();
    figures.sigterm = { inFlightCreateFinished: true, vmsKeptRunning: 2, stopVmsOnExitLeftVmms: 0 };
  });
});
