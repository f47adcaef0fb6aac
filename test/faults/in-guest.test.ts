// In-guest faults against a real test guest (QEMU, TCG) through a real worker's RPC and the guest
// agent: each is observed from inside the guest (exec) and undone on clear, and a worker SIGKILLed
// with faults active leaves a guest whose agent the next worker tells to undo them. One VM for all.
// Every clock and kill fault here goes to the guest, never to the host.
import assert from "node:assert/strict";
import { execa } from "execa";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { FaultInput } from "../../worker/core/api.js";
import { connectWorker, type WorkerClient } from "../../worker/rpc/worker-client.js";
import { rejectsWith } from "../helpers/errors.js";
import { testGuest } from "../helpers/repo.js";
import { waitFor } from "../helpers/vm.js";
import { destroyWorker, startWorker, type WorkerProcess } from "../helpers/worker-process.js";

const guest = testGuest();
const skip = process.getuid?.() !== 0 ? "needs root for network namespaces" : "skip" in guest ? guest.skip : false;
const HOUR_MS = 3_600_000;
/** How far apart two readings of the guest's clock offset may be and still count as equal (TCG is slow). */
const SLACK_S = 5;

describe("in-guest faults on a real guest", { skip, concurrency: false }, () => {
  let worker: WorkerProcess;
  let client: WorkerClient;
  let id: string;
  /** The guest's clock minus the host's, in seconds, before any clock fault. */
  let baseOffset: number;

  /** Runs a shell command in the guest; its stdout (it must exit 0). */
  const sh = async (command: string, timeoutMs = 30_000): Promise<string> => {
    const result = await client.exec(id, { argv: ["/bin/sh", "-c", command], timeoutMs });
    const stdout = Buffer.from(result.stdout).toString();
    assert.equal(result.exitCode, 0, `${command}: exit ${result.exitCode} ${Buffer.from(result.stderr).toString()}`);
    return stdout;
  };
  /** A `sleep` in the background (not the exec's child: it outlives the exec); its pid. */
  const startSleep = async () => Number((await sh("sleep 1000 >/dev/null 2>&1 </dev/null & echo $!")).trim());
  /** The process's state letter (R, S, T, Z), or "gone". */
  const stateOf = async (pid: number) => {
    const stat = await sh(`cat /proc/${pid}/stat 2>/dev/null || echo gone`);
    return stat.startsWith("gone") ? "gone" : stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  };
  /** The guest's clock minus the host's, in seconds, at one exec. */
  const clockOffset = async () => Number((await sh("date +%s")).trim()) - Date.now() / 1000;
  /** Samples the guest's clock every 100 ms inside the guest for `count` samples; offsets from the host's. */
  const clockSamples = async (count: number) => {
    const started = Date.now() / 1000;
    const lines = (await sh(`for i in $(seq ${count}); do date +%s; usleep 100000; done`)).trim().split("\n");
    // Host time at each sample, roughly: the samples are 100 ms apart (plus the exec's own start).
    return lines.map((line, i) => Number(line) - (started + i * 0.1));
  };
  const inject = (fault: FaultInput) => client.injectFault(id, fault);

  before(async () => {
    if ("skip" in guest) return;
    worker = await startWorker();
    client = await connectWorker(worker.socket);
    id = await client.createVm(guest.input);
    await waitFor("the agent to be ready", 90_000, async () => ((await client.getVm(id)).agentState === "ready" ? true : undefined));
    baseOffset = await clockOffset();
  });

  after(async () => {
    if (!worker) return;
    await client?.deleteVm(id).catch(() => undefined);
    client?.close();
    // Any VMM left (a failed test before the delete): ours, found by its state directory.
    const left = await execa("pgrep", ["-f", `qemu-system.*${worker.stateDir}`], { reject: false });
    for (const pid of left.stdout.split("\n").filter(Boolean)) process.kill(Number(pid), "SIGKILL");
    await destroyWorker(worker);
  });

  test("killProcess by name: every `sleep` gets the signal; an instant fault, never listed", async () => {
    const pid = await startSleep();
    assert.equal(await stateOf(pid), "S");
    const fault = await inject({ kind: "killProcess", pid: 0, name: "sleep", signal: 15 });
    assert.match(fault, /^fault-/);
    // Gone, or a zombie until init reaps it.
    await waitFor("the sleep to die", 10_000, async () => (["gone", "Z"].includes(await stateOf(pid)) ? true : undefined));
    assert.deepEqual(await client.listFaults(id), []);
    await rejectsWith(inject({ kind: "killProcess", pid: 0, name: "no-such-process", signal: 9 }), "NOT_FOUND", /no process named/);
    await rejectsWith(inject({ kind: "killProcess", pid: 1, name: "", signal: 9 }), "INVALID_ARGUMENT", /pid 1/);
    // The agent's own answer for what the worker cannot know: pid 2 is kthreadd.
    await rejectsWith(inject({ kind: "killProcess", pid: 2, name: "", signal: 9 }), "INVALID_ARGUMENT", /kernel thread/);
  });

  test("freezeProcess stops the process (state T); clearing it continues it", async () => {
    const pid = await startSleep();
    const fault = await inject({ kind: "freezeProcess", pid, name: "" });
    assert.equal(await stateOf(pid), "T");
    const [listed] = await client.listFaults(id);
    assert.equal(listed?.description, `frozen: pid ${pid} (pids ${pid})`);
    await client.clearFault(id, fault);
    assert.equal(await stateOf(pid), "S");
    await sh(`kill ${pid}`);
  });

  test("clockShift +1 h shows in the guest's `date`, and clearing it puts the clock back", async (t) => {
    const fault = await inject({ kind: "clockShift", deltaMs: HOUR_MS });
    const shifted = await clockOffset();
    t.diagnostic(`offset before ${baseOffset.toFixed(2)} s, shifted ${shifted.toFixed(2)} s`);
    assert.ok(Math.abs(shifted - baseOffset - 3600) < SLACK_S, `shifted by ${shifted - baseOffset} s`);
    await client.clearFault(id, fault);
    const back = await clockOffset();
    assert.ok(Math.abs(back - baseOffset) < SLACK_S, `after clear off by ${back - baseOffset} s`);
  });

  test("clockStrobe flips the clock +1 h and back; clearing it leaves the clock where it began", async (t) => {
    const fault = await inject({ kind: "clockStrobe", deltaMs: HOUR_MS, periodMs: 300 });
    const samples = (await clockSamples(20)).map((offset) => offset - baseOffset);
    t.diagnostic(`strobed offsets (s): ${samples.map((s) => s.toFixed(0)).join(" ")}`);
    assert.ok(
      samples.some((s) => Math.abs(s - 3600) < SLACK_S),
      "some samples an hour ahead",
    );
    assert.ok(
      samples.some((s) => Math.abs(s) < SLACK_S),
      "some samples at the right time",
    );
    assert.ok(
      samples.every((s) => Math.abs(s - 3600) < SLACK_S || Math.abs(s) < SLACK_S),
      "nothing in between",
    );
    await client.clearFault(id, fault);
    const settled = (await clockSamples(8)).map((offset) => offset - baseOffset);
    assert.ok(
      settled.every((s) => Math.abs(s) < SLACK_S),
      `after clear: ${settled.join(" ")}`,
    );
  });

  test("fillDisk fills a filesystem until writes fail with ENOSPC; clearing it frees the space", async () => {
    await sh("mkdir -p /mnt/fill && mount -t tmpfs -o size=4m tmpfs /mnt/fill && echo ok >/mnt/fill/before");
    const fault = await inject({ kind: "fillDisk", dir: "/mnt/fill" });
    const [listed] = await client.listFaults(id);
    const written = Number(/\((\d+) bytes written\)/.exec(listed?.description ?? "")?.[1]);
    assert.ok(written > 3.5 * 1024 * 1024 && written <= 4 * 1024 * 1024, `wrote ${written} bytes: ${listed?.description}`);
    // (busybox head exits 0 after a failed write; dd does not)
    const full = await client.exec(id, { argv: ["/bin/sh", "-c", "dd if=/dev/zero of=/mnt/fill/after bs=4096 count=1"] });
    assert.notEqual(full.exitCode, 0);
    assert.match(Buffer.from(full.stderr).toString(), /No space left on device/);
    assert.match(await sh("df /mnt/fill | tail -1"), /\s100%\s/);

    await client.clearFault(id, fault);
    await sh("dd if=/dev/zero of=/mnt/fill/after bs=4096 count=1");
    assert.equal((await sh("ls -A /mnt/fill")).trim().split("\n").sort().join(" "), "after before", "the fill file is gone");
  });

  test("the agent and then the worker killed with in-guest faults active: the next worker has the new agent undo them all", async () => {
    const pid = await startSleep();
    await inject({ kind: "freezeProcess", pid, name: "" });
    await inject({ kind: "clockShift", deltaMs: -HOUR_MS });
    // Its first step is at once; a long period keeps the agent's death away from a step.
    await inject({ kind: "clockStrobe", deltaMs: 2 * HOUR_MS, periodMs: 60_000 });
    await inject({ kind: "fillDisk", dir: "/mnt/fill" });
    assert.equal((await client.listFaults(id)).length, 4);
    assert.equal(await stateOf(pid), "T");
    assert.ok(Math.abs((await clockOffset()) - baseOffset - 3600) < SLACK_S, "-1 h +2 h");

    // The agent dies (init starts another): what it did survives only in /run/pcr-agent.
    const agentPid = (await sh("pidof pcr-agent")).trim();
    await sh("(usleep 300000; kill -9 $(pidof pcr-agent)) >/dev/null 2>&1 </dev/null &");
    await waitFor("a new agent", 30_000, async () => {
      const now = await sh("pidof pcr-agent").catch(() => "");
      return now.trim() && now.trim() !== agentPid ? true : undefined;
    });

    client.close();
    await worker.stop("SIGKILL");
    const { stateDir, runtimeDir, netns } = worker;
    worker = await startWorker({ reuse: { stateDir, runtimeDir, netns } });
    client = await connectWorker(worker.socket);
    assert.equal((await client.getVm(id)).status, "running", "the VM was re-adopted");
    assert.deepEqual(await client.listFaults(id), []);

    await waitFor("the agent to thaw the sleep", 60_000, async () => {
      if ((await client.getVm(id)).agentState !== "ready") return undefined;
      return (await stateOf(pid)) === "S" ? true : undefined;
    });
    const settled = (await clockSamples(6)).map((offset) => offset - baseOffset);
    assert.ok(
      settled.every((s) => Math.abs(s) < SLACK_S),
      `the clock is back: ${settled.join(" ")}`,
    );
    assert.equal((await sh("ls -A /mnt/fill")).trim().split("\n").sort().join(" "), "after before", "the fill file is gone");
    assert.match(worker.logs(), /in-guest faults a previous worker left were undone/);
    await sh(`kill ${pid}`);
  });

  test("the audit log has every in-guest inject and clear, with the fault, its parameters and its id", async () => {
    const lines = (await readFile(join(worker.stateDir, "audit.log"), "utf8"))
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    const injected = lines.filter((entry) => entry.method === "injectFault" && entry.code === "OK");
    for (const kind of ["killProcess", "freezeProcess", "clockShift", "clockStrobe", "fillDisk"]) {
      assert.ok(
        injected.some((entry) => entry.fault === kind && String(entry.faultId).startsWith("fault-")),
        `${kind} audited`,
      );
    }
    const fill = injected.find((entry) => entry.fault === "fillDisk")!;
    assert.deepEqual(fill.faultSpec, { kind: "fillDisk", dir: "/mnt/fill", durationMs: 0 });
    assert.ok(lines.some((entry) => entry.method === "clearFault" && entry.code === "OK" && entry.faultId === fill.faultId));
  });
});
