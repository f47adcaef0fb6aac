// Watching a VM: counters, the event feed, logs --follow, /metrics, health and the audit log,
// against a real worker and a real guest.
import assert from "node:assert/strict";
import { execa } from "execa";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { CLI_BIN, testGuest, type TestGuestSpec } from "../helpers/repo.js";
import { assertNothingLeft, createFromSpec, waitFor, waitForConsole, withCommand } from "../helpers/vm.js";
import { destroyWorker, startWorker, type WorkerProcess } from "../helpers/worker-process.js";

const guest = testGuest();
const skip = "skip" in guest ? guest.skip : false;
const HTTP = "127.0.0.1:9464";

/** GET inside the worker's namespace (its loopback listener is not visible from here). */
async function httpGet(worker: WorkerProcess, path: string): Promise<{ status: number; body: string }> {
  const script = "fetch(process.argv[1]).then(async (r) => process.stdout.write(r.status + '\\n' + (await r.text())))";
  const result = await execa("ip", ["netns", "exec", worker.netns, process.execPath, "-e", script, `http://${HTTP}${path}`]);
  const newline = result.stdout.indexOf("\n");
  return { status: Number(result.stdout.slice(0, newline)), body: result.stdout.slice(newline + 1) };
}

/** Prometheus text format -> { 'name{labels}': value }. */
function parseMetrics(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    assert.ok(match, `not a Prometheus sample line: ${line}`);
    samples.set(match[1]!, Number(match[2]));
  }
  return samples;
}

function sample(samples: Map<string, number>, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const [key, value] of samples) {
    if (!key.startsWith(`${name}{`) && key !== name) continue;
    if (Object.entries(labels).every(([label, want]) => key.includes(`${label}="${want}"`))) return value;
  }
  return undefined;
}

/** What `get-vm` prints, as far as these tests read it. */
interface VmJson {
  status: string;
  cpu: number;
  memoryBytes: number;
  specHash: string;
  counters: Record<string, number>;
  egressDrops: number;
  uptimeMs: number;
  [field: string]: unknown;
}

async function getVm(worker: WorkerProcess, id: string): Promise<VmJson> {
  const result = await worker.cli(["get-vm", id]);
  assert.equal(result.exitCode, 0, result.stderr);
  return JSON.parse(result.stdout) as VmJson;
}

describe("observability (real worker, real guest)", { skip }, () => {
  let worker: WorkerProcess;
  let spec: TestGuestSpec;

  before(async () => {
    if ("skip" in guest) return;
    spec = guest.spec;
    worker = await startWorker({ extraArgs: ["--counter-interval-ms", "500"] });
  });

  after(async () => {
    if (worker) await destroyWorker(worker);
  });

  test("logs --follow shows lines as the guest prints them", async () => {
    const id = await createFromSpec(worker, withCommand(spec, "for i in 1 2 3 4; do echo tick-$i; sleep 1; done"));
    const follower = execa(
      "ip",
      ["netns", "exec", worker.netns, process.execPath, CLI_BIN, "--worker", worker.socket, "logs", id, "--follow"],
      {
        reject: false,
        buffer: false,
      },
    );
    const seenAt = new Map<string, number>();
    let text = "";
    follower.stdout!.on("data", (chunk: Buffer) => {
      text += chunk.toString();
      for (const match of text.matchAll(/tick-(\d)/g)) if (!seenAt.has(match[1]!)) seenAt.set(match[1]!, Date.now());
    });
    await waitFor("tick-4 through logs --follow", 90_000, async () => (seenAt.has("4") ? true : undefined));
    const spread = seenAt.get("4")! - seenAt.get("1")!;
    assert.ok(spread >= 2_000, `ticks printed a second apart arrived ${spread} ms apart: streamed, not at the end`);
    assert.equal((await worker.cli(["delete-vm", id])).exitCode, 0);
    const ended = await Promise.race([follower, new Promise((resolve) => setTimeout(() => resolve("still running"), 10_000))]);
    assert.notEqual(ended, "still running", "logs --follow ends when the VM is gone");
    await assertNothingLeft(worker);
  });

  test("counters grow as the guest reads its disk and sends packets; events in order; /metrics and the audit log agree", async () => {
    const workload = [
      "dd if=/dev/vda of=/dev/null bs=64k count=64 2>/dev/null",
      'gw=$(ip route | awk "/default/ {print \\$3}")',
      "ping -c 4 -W 1 $gw >/dev/null 2>&1",
      "echo workload-done",
    ].join("; ");
    const id = await createFromSpec(worker, withCommand(spec, workload));
    const ready = await getVm(worker, id);
    assert.equal(ready.status, "running");
    assert.equal(ready.cpu, spec.cpu);
    assert.equal(ready.memoryBytes, spec.memoryBytes);
    assert.match(ready.specHash, /^[0-9a-f]{16,}$/);
    await waitForConsole(worker, id, "workload-done");
    const vm = await waitFor("counters sampled", 10_000, async () => {
      const current = await getVm(worker, id);
      return current.counters.netTxPackets >= 4 ? current : undefined;
    });
    assert.ok(vm.counters.blockReadBytes >= 64 * 65536, `block read bytes ${vm.counters.blockReadBytes}`);
    assert.ok(vm.counters.blockReadOps > ready.counters.blockReadOps, "block read ops grew");
    assert.ok(vm.counters.netTxBytes > ready.counters.netTxBytes, "net tx bytes grew");
    // The host is not on the allowlist: the pings were dropped and counted.
    assert.ok(vm.egressDrops >= 4, `egress drops ${vm.egressDrops}`);
    assert.ok(vm.uptimeMs > 0);

    const metrics = parseMetrics((await httpGet(worker, "/metrics")).body);
    assert.equal(sample(metrics, "pcr_vms", { status: "running" }), 1);
    assert.ok(sample(metrics, "pcr_vm_block_read_bytes", { vm: id })! >= 64 * 65536);
    assert.ok(sample(metrics, "pcr_vm_net_tx_packets", { vm: id })! >= 4);
    assert.ok(sample(metrics, "pcr_vm_egress_drops", { vm: id })! >= 4);
    assert.ok(sample(metrics, "pcr_rpc_calls_total", { method: "createVm", code: "OK" })! >= 1);
    assert.ok(sample(metrics, "pcr_create_vm_seconds_count")! >= 1);

    assert.equal((await worker.cli(["delete-vm", id])).exitCode, 0);
    const bad = await worker.cli(["delete-vm", id]);
    assert.match(bad.stderr, /^NOT_FOUND/);

    const events = (await worker.cli(["events"])).stdout
      .split("\n")
      .filter(Boolean)
      .map((line) => JSON.parse(line) as { seq: number; vmId: string; status: string; atMs: number });
    const mine = events.filter((event) => event.vmId === id);
    assert.deepEqual(
      mine.map((event) => event.status),
      ["creating", "running", "stopping", "stopped"],
    );
    for (let i = 1; i < events.length; i++) {
      assert.ok(events[i]!.seq > events[i - 1]!.seq, "seq increases");
      assert.ok(events[i]!.atMs >= events[i - 1]!.atMs, "time does not go back");
    }

    const after = parseMetrics((await httpGet(worker, "/metrics")).body);
    assert.equal(sample(after, "pcr_vms", { status: "running" }) ?? 0, 0);
    assert.ok(sample(after, "pcr_delete_vm_seconds_count")! >= 1);
    assert.ok(sample(after, "pcr_rpc_errors_total", { method: "deleteVm", code: "NOT_FOUND" })! >= 1);
    assert.equal((await httpGet(worker, "/healthz")).status, 200);
    assert.equal((await httpGet(worker, "/readyz")).status, 200);

    const audit = readFileSync(join(worker.stateDir, "audit.log"), "utf8")
      .split("\n")
      .filter(Boolean)
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((entry) => entry.vmId === id);
    assert.deepEqual(
      audit.map((entry) => [entry.method, entry.code]),
      [
        ["createVm", "OK"],
        ["deleteVm", "OK"],
        ["deleteVm", "NOT_FOUND"],
      ],
    );
    for (const entry of audit) {
      // The CLI process that called, by pid and uid (unix socket peer, from SO_PEERCRED).
      assert.match(String(entry.caller), /^unix#\d+ pid=\d+ uid=0 node$/);
      assert.ok(typeof entry.durationMs === "number");
    }
    // Every log line of a call names its VM and request.
    const callLines = worker
      .logs()
      .split("\n")
      .filter((line) => line.includes('"msg":"call"'));
    assert.ok(callLines.length >= 3);
    for (const line of callLines) assert.match(line, /"requestId":"[^"]+"/);
    await assertNothingLeft(worker);
  });
});
