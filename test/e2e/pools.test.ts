// Warm pools end to end: a real worker (QEMU under TCG) keeps 2 guests booted and paused plus the
// machine saved on disk. Claims come back agent-ready with their own name, address, secrets, seed
// and machine id; the allowlist holds for a claimed VM as for a booted one; 20 claims in a row all
// succeed; a worker SIGKILLed mid-claim (and so mid-refill) leaves nothing half-done; a snapshot
// changed on disk is rebuilt, and the worker says so.
import assert from "node:assert/strict";
import { execa } from "execa";
import { existsSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { VmSpecInput } from "../../worker/core/api.js";
import { connectWorker, type WorkerClient } from "../../worker/rpc/worker-client.js";
import { TEST_GUEST_SPEC, testGuest, WORKER_BIN } from "../helpers/repo.js";
import { waitFor } from "../helpers/vm.js";
import { startWorker, type WorkerProcess } from "../helpers/worker-process.js";
import { ALLOWED_IP, DENIED_IP, LISTEN_PORT, RESOLVER, Topology, UPLINK } from "../net/topology.js";

const guest = testGuest();
const input = "skip" in guest ? ({} as VmSpecInput) : guest.input;
const skip = process.getuid?.() !== 0 ? "needs root for network namespaces" : "skip" in guest ? guest.skip : false;
const METRICS = "127.0.0.1:9464";

describe("warm pools on real guests", { skip }, () => {
  let topology: Topology;
  let worker: WorkerProcess;
  let client: WorkerClient;
  const base = { stateDir: "", runtimeDir: "" };

  const start = async () => {
    worker = await startWorker({
      reuse: { ...base, netns: topology.ns },
      extraArgs: ["--pool", `${TEST_GUEST_SPEC}:2+disk`, "--resolver", RESOLVER, "--uplink", UPLINK, "--http-listen", METRICS],
    });
    client = await connectWorker(worker.socket);
  };
  const metrics = async () => (await execa("ip", ["netns", "exec", topology.ns, "curl", "-s", `http://${METRICS}/metrics`])).stdout;
  const gauge = (text: string, name: string) => Number(new RegExp(`^${name}\\{pool="spec"\\} (\\d+)`, "m").exec(text)?.[1] ?? -1);
  const poolFull = () =>
    waitFor("the pool: 2 ready and a snapshot", 90_000, async () => {
      const text = await metrics().catch(() => "");
      return gauge(text, "pcr_pool_ready_vms") === 2 && gauge(text, "pcr_pool_snapshot_ready") === 1 ? text : undefined;
    }).catch((err: Error) => {
      throw new Error(`${err.message}; worker logs:\n${worker.logs().slice(-4000)}`);
    });
  const sh = async (id: string, script: string) => {
    const result = await client.exec(id, { argv: ["/bin/sh", "-c", script], timeoutMs: 15_000 });
    return Buffer.from(result.stdout).toString().trim();
  };
  const qemus = async () =>
    // QEMU itself (its argv[0]), not the cage helper that started it.
    (await execa("pgrep", ["-f", `^[^ ]*qemu-system.*${base.stateDir}`], { reject: false })).stdout.split("\n").filter(Boolean);

  before(async () => {
    if (skip) return;
    topology = await Topology.create();
    base.stateDir = join(topology.dir, "state");
    base.runtimeDir = join(topology.dir, "run");
    await start();
    await poolFull();
  });
  after(async () => {
    client?.close();
    await worker?.stop("SIGKILL").catch(() => undefined);
    await execa("pkill", ["-KILL", "-f", `qemu-system.*${base.stateDir}`], { reject: false });
    await topology?.destroy();
  });

  test("a claim is agent-ready at once, with its own name, address, secrets, seed and machine id", async (t) => {
    const claim = async (hostname: string, token: string) => {
      const started = performance.now();
      const id = await client.createVm(
        { ...input, hostname, allowedDomains: ["allowed.test"] },
        { waitReadyMs: 60_000, secrets: [{ name: "token", value: Buffer.from(token) }] },
      );
      const ms = Math.round(performance.now() - started);
      const vm = await client.getVm(id);
      console.log(`# claim of ${hostname}: ${ms} ms, origin ${vm.origin}`);
      return { id, vm };
    };
    const a = await claim("tenant-a", "secret-of-a");
    const b = await claim("tenant-b.example", "secret-of-b");
    // Whatever fails below, the tests after this one start without these two.
    t.after(async () => {
      for (const { id } of [a, b]) await client.deleteVm(id).catch(() => undefined);
    });
    for (const [{ id, vm }, hostname, token] of [
      [a, "tenant-a", "secret-of-a"],
      [b, "tenant-b.example", "secret-of-b"],
    ] as const) {
      assert.equal(vm.origin, "pool");
      assert.equal(vm.agentState, "ready");
      assert.equal(await sh(id, "hostname"), hostname);
      assert.equal(await sh(id, "ls /run/secrets; cat /run/secrets/token"), `token\n${token}`);
      assert.match(await sh(id, "ip -4 addr show dev eth0"), new RegExp(`inet ${vm.ip.replaceAll(".", "\\.")}/`));
      assert.equal(await sh(id, "cat /sys/class/net/eth0/address"), vm.mac);
    }
    const [idA, idB] = await Promise.all([a, b].map(({ id }) => sh(id, "cat /etc/machine-id")));
    assert.match(idA!, /^[0-9a-f]{32}$/);
    assert.notEqual(idA, idB, "two clones, two machine ids");
    const [randA, randB] = await Promise.all([a, b].map(({ id }) => sh(id, "head -c 32 /dev/urandom | od -An -tx1")));
    assert.notEqual(randA, randB, "two clones of one snapshot read different random bytes");
    // The allowlist applies as to a booted VM: the allowed name answers, the rest does not.
    const http = (address: string) => sh(a.id, `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${address} ${LISTEN_PORT}`);
    assert.match(await http("allowed.test"), new RegExp(`hello-${ALLOWED_IP}:${LISTEN_PORT}`));
    assert.equal(await http(DENIED_IP), "", "an address off the allowlist is dropped");
    assert.match(await sh(a.id, "nslookup denied.test 2>&1; true"), /REFUSED|can't resolve|NXDOMAIN/i);
    // Faults and counters as for a booted VM: a partition cuts the allowed host off, its clear restores it.
    const fault = await client.injectFault(a.id, { kind: "partition", cidrs: [`${ALLOWED_IP}/32`] });
    assert.equal(await http("allowed.test"), "", "partitioned");
    await client.clearFault(a.id, fault);
    assert.match(await http("allowed.test"), /hello-/);
    const counted = await client.getVm(a.id);
    assert.ok(counted.counters.netTxPackets > 0n && counted.counters.netRxBytes > 0n, "the claimed VM's traffic is counted");
    // Its console says where its own story starts (restored from the snapshot, it starts there).
    const consoleText = Buffer.from((await client.read(a.id, 0n, 1 << 20)).data).toString();
    assert.match(consoleText, /pcr-agent: personalized as tenant-a/);
    for (const { id } of [a, b]) await client.deleteVm(id);
    for (const { id } of [a, b]) assert.equal(existsSync(join(base.stateDir, "vms", id)), false, "a deleted claim leaves nothing");
  });

  test("20 claims in a row from a pool of 2: each one succeeds, from the pool, its snapshot, or a boot", async () => {
    const origins: Record<string, number> = {};
    for (let i = 0; i < 20; i++) {
      const id = await client.createVm(
        { ...input, hostname: `row-${i}` },
        { waitReadyMs: 60_000, secrets: [{ name: `token-${i}`, value: Buffer.from(`secret-${i}`) }] },
      );
      const vm = await client.getVm(id);
      origins[vm.origin!] = (origins[vm.origin!] ?? 0) + 1;
      // Its own name and secret, and no earlier tenant's.
      assert.equal(await sh(id, "hostname; ls /run/secrets; cat /run/secrets/*"), `row-${i}\ntoken-${i}\nsecret-${i}`);
      await client.deleteVm(id);
    }
    console.log(`# 20 claims: ${JSON.stringify(origins)}`);
    assert.equal(
      Object.values(origins).reduce((sum, count) => sum + count, 0),
      20,
    );
    assert.ok((origins.pool ?? 0) + (origins.snapshot ?? 0) >= 10, JSON.stringify(origins));
    await poolFull();
  });

  test("/metrics and the VM list: pooled VMs are counted there, never listed", async () => {
    const text = await poolFull();
    assert.equal(gauge(text, "pcr_pool_target_vms"), 2);
    assert.equal(gauge(text, "pcr_pool_memory_bytes"), 2 * Number(input.memoryBytes));
    assert.ok(gauge(text, "pcr_pool_snapshot_bytes") > 0);
    assert.deepEqual(await client.listVms(), []);
    assert.equal((await qemus()).length, 2, "two paused QEMUs, nothing else");
    const check = await execa(
      process.execPath,
      [WORKER_BIN, "--check", "--state-dir", base.stateDir, "--pool", `${TEST_GUEST_SPEC}:2+disk`],
      {
        reject: false,
      },
    );
    assert.match(check.stdout, /^ {2}spec: 2 hot \+ snapshot on disk; machine [0-9a-f]{16}/m);
    assert.match(check.stdout, /^ {2}[0-9a-f]{16}-qemu-[0-9a-f]{12}: [\d.]+ MiB, qemu QEMU emulator version [^;]+; pool spec$/m);
  });

  test("a worker SIGKILLed mid-claim (and mid-refill): after the restart no claim is half-applied and the pool refills", async () => {
    const logged = worker.logs().length;
    const creating = client.createVm({ ...input, hostname: "interrupted" }, { waitReadyMs: 60_000 }).then(
      (id) => ({ id }),
      (err: Error) => ({ err }),
    );
    await waitFor(
      "the claim to attach its network",
      30_000,
      async () => (/"network attached"/.test(worker.logs().slice(logged)) ? true : undefined),
      5,
    );
    await worker.stop("SIGKILL");
    const outcome = await creating;
    client.close();
    // A snapshot changed while the worker was down is not trusted: it is rebuilt.
    const state = readdirSync(join(base.stateDir, "snapshots")).find((file) => file.endsWith(".state"))!;
    writeFileSync(join(base.stateDir, "snapshots", state), "not a snapshot", { flag: "r+" });
    await start();
    const listed = await client.listVms();
    if ("id" in outcome) {
      // It finished before the kill: a whole VM, adopted.
      assert.deepEqual(
        listed.map((vm) => [vm.id, vm.status]),
        [[outcome.id, "running"]],
      );
    } else {
      // Unanswered: undone, or finished with its answer lost with the worker, and then whole.
      assert.ok(listed.length <= 1, `one claim, ${listed.length} VMs`);
      for (const vm of listed) assert.deepEqual([vm.hostname, vm.status, vm.origin], ["interrupted", "running", "pool"]);
    }
    const text = await poolFull();
    assert.equal(gauge(text, "pcr_pool_snapshot_rebuilds"), 1);
    assert.match(worker.logs(), /pool snapshot unusable; removing it and saving a new one/);
    assert.equal((await qemus()).length, 2 + listed.length, "the pool's two and the listed VMs, no more");
    const links = (await topology.linkNames()).filter((name) => name.startsWith("pcr-"));
    assert.equal(links.length, 2 + listed.length, `TAPs: ${links.join(" ")}`);
    for (const vm of listed) await client.deleteVm(vm.id);
  });

  test("a worker SIGKILLed while the pool refills after a claim: the claimed VM is adopted, the refill's VM removed", async () => {
    await poolFull();
    const claimed = await client.createVm({ ...input, hostname: "kept" }, { waitReadyMs: 60_000 });
    // The claim kicked a refill, whose restore (about 0.4 s) is under way when the kill lands.
    await worker.stop("SIGKILL");
    client.close();
    await start();
    const listed = await client.listVms();
    assert.deepEqual(
      listed.map((vm) => [vm.id, vm.status, vm.origin]),
      [[claimed, "running", "pool"]],
    );
    assert.equal(await sh(claimed, "hostname"), "kept", "adopted with its agent channel");
    await poolFull();
    assert.equal((await qemus()).length, 3, "the pool's two and the claimed VM");
    await client.deleteVm(claimed);
  });

  test("a snapshot deleted while the worker runs: the next restore finds it gone, and the pool saves it again and says so", async () => {
    const before = gauge(await poolFull(), "pcr_pool_snapshot_rebuilds");
    const state = readdirSync(join(base.stateDir, "snapshots")).find((file) => file.endsWith(".state"))!;
    rmSync(join(base.stateDir, "snapshots", state));
    const logged = worker.logs().length;
    // The claim takes a hot VM; its refill would restore from the missing file.
    const id = await client.createVm({ ...input, hostname: "after-rm" }, { waitReadyMs: 60_000 });
    assert.equal((await client.getVm(id)).origin, "pool");
    const text = await poolFull();
    assert.equal(gauge(text, "pcr_pool_snapshot_rebuilds"), before + 1);
    assert.match(
      worker.logs().slice(logged),
      /pool snapshot unusable; removing it and saving a new one.*is missing|is missing.*pool snapshot unusable/,
    );
    assert.ok(existsSync(join(base.stateDir, "snapshots", state)), "saved again under the same name");
    await client.deleteVm(id);
  });
});
