// A fleet for real: nats-server, worker processes in network namespaces joined with --nats, and
// pcr-gateway processes serving the Worker interface in front of them (docs/fleet.md).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { after, before, describe, test } from "node:test";
import type { VmSpecInput } from "../../worker/core/api.js";
import { WorkerError } from "../../worker/core/errors.js";
import { type WorkerClient, connectWorker } from "../../worker/rpc/worker-client.js";
import { type TestFleet, type FleetHost, startFleet } from "../helpers/fleet.js";
import { testGuest } from "../helpers/repo.js";
import { vmmPids, waitFor } from "../helpers/vm.js";

const guest = testGuest();
const skip = "skip" in guest ? guest.skip : false;
const spec = (overrides: Partial<VmSpecInput> = {}): VmSpecInput => ({ ...(guest as { input: VmSpecInput }).input, ...overrides });

const codeOf = async (call: Promise<unknown>): Promise<string> =>
  call.then(
    () => "OK",
    (err: unknown) => (err instanceof WorkerError ? err.code : `not a WorkerError: ${String(err)}`),
  );

/** Which host's own socket lists the VM (hosts that are down are passed over). */
async function hostOf(fleet: TestFleet, id: string): Promise<string | undefined> {
  for (const host of fleet.hosts) {
    const client = await connectWorker(host.worker.socket).catch(() => undefined);
    if (!client) continue;
    try {
      if ((await client.listVms()).some((vm) => vm.id === id)) return host.id;
    } finally {
      client.close();
    }
  }
  return undefined;
}

async function hostnamesOnHosts(fleet: TestFleet): Promise<string[]> {
  const names: string[] = [];
  for (const host of fleet.hosts) {
    const client = await connectWorker(host.worker.socket);
    names.push(...(await client.listVms()).map((vm) => vm.hostname));
    client.close();
  }
  return names;
}

async function vmsPerHost(fleet: TestFleet): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const host of fleet.hosts) {
    const client = await connectWorker(host.worker.socket);
    counts[host.id] = (await client.listVms()).length;
    client.close();
  }
  return counts;
}

describe("a fleet of three hosts (fake VMMs) behind two gateways, one NATS node", { skip }, () => {
  let fleet: TestFleet;
  let a: WorkerClient;
  let b: WorkerClient;
  const fake = ["--vmm", "fake", "--no-cage", "--max-vms", "2"];
  /** Each test starts from an empty fleet, whatever the one before it left. */
  const empty = async () => {
    for (const vm of await a.listVms()) await a.deleteVm(vm.id).catch(() => undefined);
  };

  before(async () => {
    fleet = await startFleet();
    try {
      await fleet.addHost("h1", fake);
      await fleet.addHost("h2", [...fake, "--label", "zone=b"]);
      await fleet.addHost("h3", fake);
      a = await (await fleet.addGateway()).client();
      b = await (await fleet.addGateway()).client();
      await waitFor("three hosts in the fleet", 10_000, async () => ((await a.listVms()) && fleet.hosts.length === 3 ? true : undefined));
    } catch (err) {
      await fleet.destroy();
      throw err;
    }
  });
  after(async () => fleet?.destroy());

  test("bad input at a gateway gets the same typed errors as at a worker", async () => {
    const direct = await connectWorker(fleet.hosts[0]!.worker.socket);
    try {
      for (const bad of [spec({ cpu: 0 }), spec({ kernel: "/etc/passwd" }), spec({ hostname: "a b" })]) {
        const atWorker = await codeOf(direct.createVm(bad));
        assert.equal(atWorker, "INVALID_ARGUMENT");
        assert.equal(await codeOf(a.createVm(bad)), atWorker, JSON.stringify({ cpu: bad.cpu, hostname: bad.hostname }));
      }
      for (const id of ["vm-0123456789abcdef", "../../etc", "vm-", "x".repeat(5000)]) {
        assert.equal(await codeOf(a.getVm(id)), "NOT_FOUND", id.slice(0, 20));
        assert.equal(await codeOf(b.deleteVm(id)), "NOT_FOUND", id.slice(0, 20));
      }
      assert.equal(await codeOf(a.createVm(spec(), { placement: { host: "nope" } })), "FAILED_PRECONDITION");
      assert.deepEqual(await vmsPerHost(fleet), { h1: 0, h2: 0, h3: 0 }, "nothing made");
    } finally {
      direct.close();
    }
  });

  test("placement: a host, locality over load, a group on one host, labels, then capacity until RESOURCE_EXHAUSTED", async () => {
    await empty();
    const onH3 = await a.createVm(spec(), { placement: { host: "h3" } });
    assert.equal(await hostOf(fleet, onH3), "h3");
    const local = await b.createVm(spec({ hostname: "local" }));
    assert.equal(await hostOf(fleet, local), "h3", "the host holding the closure wins over two empty ones");
    // h3 is full; h1 and h2 hold nothing and are equal: h1 by id. The group's second member follows the first.
    const first = await a.createVm(spec({ hostname: "g1", group: "ring" }));
    const second = await b.createVm(spec({ hostname: "g2", group: "ring" }));
    assert.equal(await hostOf(fleet, first), "h1");
    assert.equal(await hostOf(fleet, second), "h1", "a group's members on one host");
    assert.equal(await codeOf(a.createVm(spec({ hostname: "g3", group: "ring" }))), "RESOURCE_EXHAUSTED", "the group's host is full");
    const zoneB = await b.createVm(spec({ hostname: "zb" }), { placement: { labels: { zone: "b" } } });
    assert.equal(await hostOf(fleet, zoneB), "h2");
    const last = await a.createVm(spec({ hostname: "last" }));
    assert.deepEqual(await vmsPerHost(fleet), { h1: 2, h2: 2, h3: 2 });
    assert.equal(await codeOf(a.createVm(spec({ hostname: "full" }))), "RESOURCE_EXHAUSTED");
    assert.equal((await a.listVms()).length, 6, "listVms covers the fleet");
    const more = [local, last];

    // Every VM through the gateway that did not create it: get, a fault, delete.
    for (const id of [onH3, zoneB, first, second, ...more]) {
      assert.equal((await b.getVm(id)).status, "running");
      const fault = await b.injectFault(id, { kind: "pause" });
      assert.ok(fault);
      await b.deleteVm(id);
      assert.equal(await codeOf(a.getVm(id)), "NOT_FOUND");
    }
    assert.deepEqual(await vmsPerHost(fleet), { h1: 0, h2: 0, h3: 0 });
  });

  test("an idempotency key makes one VM: a repeat answers it, at once or concurrently; another request under it is refused", async () => {
    await empty();
    const key = "test-key-0001";
    const id = await a.createVm(spec({ hostname: "once" }), { idempotencyKey: key });
    assert.equal(await b.createVm(spec({ hostname: "once" }), { idempotencyKey: key }), id);
    assert.equal(await codeOf(a.createVm(spec({ hostname: "other" }), { idempotencyKey: key })), "INVALID_ARGUMENT");
    const racing = await Promise.all(
      [a, b, a, b].map((client) => client.createVm(spec({ hostname: "race" }), { idempotencyKey: "race-1" })),
    );
    assert.equal(new Set(racing).size, 1, "four concurrent creates with one key, one VM");
    assert.equal((await a.listVms()).length, 2);
    for (const vm of await a.listVms()) await a.deleteVm(vm.id);
  });

  test("a repeat of a keyed create that was made answers its VM though no host has room now", async () => {
    await empty();
    const key = "made-then-full-1";
    // Each once h1's heartbeat no longer counts VMs gone (a gateway's view lags by a heartbeat; a
    // create refused by placement records no intent, so it may be tried again). Then h1 is full
    // (2 VMs) in gateway a's view, which counts what it placed since h1's last heartbeat.
    const onH1 = (hostname: string, idempotencyKey?: string) => () =>
      a.createVm(spec({ hostname }), { idempotencyKey, placement: { host: "h1" } }).catch(() => undefined);
    await waitFor("room on h1 for a first VM", 10_000, onH1("filler"));
    const id = await waitFor("room on h1 for a second VM", 10_000, onH1("made", key));
    assert.equal(await codeOf(b.createVm(spec({ hostname: "new" }), { placement: { host: "h1" } })), "RESOURCE_EXHAUSTED", "h1 is full");
    // Its answer was lost, say: the client retries, at either gateway, and gets its VM, not "full".
    for (const gateway of [a, b]) {
      assert.equal(await gateway.createVm(spec({ hostname: "made" }), { idempotencyKey: key, placement: { host: "h1" } }), id);
    }
    for (const vm of await a.listVms()) await a.deleteVm(vm.id);
  });

  test("one request print at a gateway and its host: ttl and placement count, spelling does not; getVm shows host and key", async () => {
    await empty();
    const key = "print-1";
    const options = { idempotencyKey: key, ttlSeconds: 600, placement: { host: "h2", labels: { zone: "b" } } };
    const id = await a.createVm(spec({ hostname: "print" }), options);
    // Another ttl under the key: refused at either gateway and at the host itself, alike.
    const direct = await connectWorker(fleet.hosts[1]!.worker.socket);
    try {
      assert.equal(await codeOf(b.createVm(spec({ hostname: "print" }), { ...options, ttlSeconds: 601 })), "INVALID_ARGUMENT");
      assert.equal(await codeOf(direct.createVm(spec({ hostname: "print" }), { ...options, ttlSeconds: 601 })), "INVALID_ARGUMENT");
      // Placeable (h2 still fits), but other constraints: another request. (Unplaceable ones are
      // refused by placement first, FAILED_PRECONDITION, before the key's intent is read.)
      const fewerLabels = { ...options, placement: { host: "h2" } };
      assert.equal(await codeOf(b.createVm(spec({ hostname: "print" }), fewerLabels)), "INVALID_ARGUMENT", "other labels");
      assert.equal(await codeOf(direct.createVm(spec({ hostname: "print" }), fewerLabels)), "INVALID_ARGUMENT", "other labels");
      // The very request, straight at the host the gateway placed it on: the same VM.
      assert.equal(await direct.createVm(spec({ hostname: "PRINT" }), options), id);
      assert.equal(await b.createVm(spec({ hostname: "PRINT" }), options), id, "the hostname's case is the spec's spelling");
      const view = await b.getVm(id);
      assert.equal(view.host, "h2");
      assert.equal(view.idempotencyKey, key);
      assert.equal((await direct.getVm(id)).host, "h2", "a fleet member fills it itself");
      const listed = (await a.listVms()).find((vm) => vm.id === id);
      assert.deepEqual([listed?.host, listed?.idempotencyKey], ["h2", key]);
      const unkeyed = await a.createVm(spec({ hostname: "nokey" }), { placement: { host: "h1" } });
      assert.deepEqual(
        [(await b.getVm(unkeyed)).host, (await b.getVm(unkeyed)).idempotencyKey?.startsWith("gateway-")],
        ["h1", true],
        "without a key, the one the gateway made for it",
      );
    } finally {
      direct.close();
    }
    assert.equal((await a.listVms()).length, 2, "no VM made by any refused request");
  });

  test("an intent in NATS that is not one (junk, or another gateway's broken write) is INTERNAL; nothing is made", async () => {
    await empty();
    const nc = await connect({ servers: fleet.nats.urls });
    try {
      const intents = await new Kvm(nc).open("pcr_intents");
      const key = "junk-intent";
      await intents.put(createHash("sha256").update(key).digest("hex"), new TextEncoder().encode("{not json"));
      assert.equal(await codeOf(a.createVm(spec({ hostname: "junk" }), { idempotencyKey: key })), "INTERNAL");
      assert.deepEqual(await vmsPerHost(fleet), { h1: 0, h2: 0, h3: 0 });
    } finally {
      await nc.close();
    }
  });

  test("events cover every host, ordered per VM", async () => {
    await empty();
    const start = (await a.events(0n, 100_000, 0)).nextSeq;
    const ids = [await a.createVm(spec(), { placement: { host: "h1" } }), await a.createVm(spec(), { placement: { host: "h2" } })];
    for (const id of ids) await b.deleteVm(id);
    const seen = await waitFor("both VMs' events", 10_000, async () => {
      const { events } = await b.events(start, 1000, 1000);
      const statuses = (id: string) => events.filter((event) => event.vmId === id).map((event) => event.status);
      return ids.every((id) => statuses(id).at(-1) === "stopped") ? ids.map(statuses) : undefined;
    });
    for (const statuses of seen) assert.deepEqual(statuses.slice(0, 2), ["creating", "running"]);
  });
});

describe("hosts lost and back, a gateway killed mid-create (real QEMU VMs)", { skip }, () => {
  let fleet: TestFleet;
  let h1: FleetHost;
  before(async () => {
    fleet = await startFleet();
    try {
      h1 = await fleet.addHost("h1");
      await fleet.addHost("h2");
    } catch (err) {
      await fleet.destroy();
      throw err;
    }
  });
  after(async () => fleet?.destroy());

  test("a host SIGKILLed with its link cut: its VMs turn lost within 10 s, creates go elsewhere; restarted, they run again", async () => {
    const gateway = await (await fleet.addGateway()).client();
    const id = await gateway.createVm(spec(), { placement: { host: "h1" } });
    assert.equal((await gateway.getVm(id)).status, "running");
    const cutAt = Date.now();
    await fleet.killHost(h1);
    await h1.link.cut();
    await waitFor("the VM reported lost", 12_000, async () => ((await gateway.getVm(id)).status === "lost" ? true : undefined));
    const lostAfterMs = Date.now() - cutAt;
    assert.ok(lostAfterMs <= 11_000, `lost after ${lostAfterMs} ms`);
    assert.equal((await gateway.listVms()).find((vm) => vm.id === id)?.status, "lost");
    assert.equal(await codeOf(gateway.deleteVm(id)), "UNAVAILABLE", "a lost host's VMs cannot be deleted");
    const elsewhere = await gateway.createVm(spec({ hostname: "elsewhere" }));
    assert.equal(await hostOf(fleet, elsewhere), "h2");
    assert.equal((await vmmPids(id)).length > 0, true, "the lost host's VM runs on");

    await h1.link.restore();
    await fleet.restartHost(h1);
    await waitFor("the VM running again", 15_000, async () => ((await gateway.getVm(id)).status === "running" ? true : undefined));
    for (const vm of [id, elsewhere]) await gateway.deleteVm(vm);
  });

  test("a gateway killed mid-create: a retry with the key at another gateway answers the one VM, which runs exec through it", async () => {
    const doomed = await fleet.addGateway();
    const survivor = await (await fleet.addGateway()).client();
    const key = "mid-create-1";
    // waitReadyMs keeps the create in flight until the guest's agent says hello (seconds under TCG).
    const inFlight = (await doomed.client()).createVm(spec({ hostname: "midcreate" }), { idempotencyKey: key, waitReadyMs: 60_000 });
    inFlight.catch(() => undefined);
    await waitFor("the create reaching a host", 20_000, async () =>
      (await hostnamesOnHosts(fleet)).includes("midcreate") ? true : undefined,
    );
    await doomed.stop("SIGKILL");
    const id = await survivor.createVm(spec({ hostname: "midcreate" }), { idempotencyKey: key, waitReadyMs: 60_000 });
    const all = await survivor.listVms();
    assert.deepEqual(
      all.filter((vm) => vm.hostname === "midcreate").map((vm) => vm.id),
      [id],
      "one VM for the request",
    );
    assert.equal((await vmmPids(id)).length > 0, true);
    // Exec reaches the owning host through a gateway other than the one that made the VM.
    const ran = await survivor.exec(id, { argv: ["/bin/sh", "-c", "echo from the guest; exit 3"], timeoutMs: 60_000 });
    assert.equal(Buffer.from(ran.stdout).toString(), "from the guest\n");
    assert.equal(ran.exitCode, 3);
    await survivor.deleteVm(id);
  });
});

describe("a 3-node NATS cluster: a node killed under load loses no request and makes no duplicate", { skip }, () => {
  let fleet: TestFleet;
  before(async () => {
    fleet = await startFleet({ natsNodes: 3 });
    try {
      for (const id of ["h1", "h2", "h3"])
        await fleet.addHost(id, ["--vmm", "fake", "--no-cage", "--no-network", "--max-vms", "20", "--max-total-cpu", "40"]);
    } catch (err) {
      await fleet.destroy();
      throw err;
    }
  });
  after(async () => fleet?.destroy());

  test("24 creates, node 0 killed among them; each retried with its key until answered: 24 VMs", async () => {
    const gateway = await (await fleet.addGateway()).client();
    const create = async (n: number): Promise<string> => {
      for (let attempt = 0; ; attempt++) {
        try {
          return await gateway.createVm(spec({ hostname: `load${n}` }), { idempotencyKey: `load-${n}` });
        } catch (err) {
          const retryable = err instanceof WorkerError && (err.code === "UNAVAILABLE" || err.code === "DEADLINE_EXCEEDED");
          if (!retryable || attempt >= 20) throw err;
          await new Promise((resolve) => setTimeout(resolve, 250));
        }
      }
    };
    const creates = Array.from({ length: 24 }, (_, n) => create(n));
    await new Promise((resolve) => setTimeout(resolve, 50));
    await fleet.nats.kill(0);
    const ids = await Promise.all(creates);
    assert.equal(new Set(ids).size, 24);
    const counts = await vmsPerHost(fleet);
    assert.equal(
      Object.values(counts).reduce((x, y) => x + y, 0),
      24,
      JSON.stringify(counts),
    );
  });
});
