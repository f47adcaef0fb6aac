// A worker process joining a fleet (worker/fleet/member.ts) against a real single-node NATS: its
// HostInfo heartbeats into pcr_hosts, its VMs' locations into pcr_vms, its events into PCR_EVENTS,
// and its Worker interface answers on its host subject. Workers run `--vmm fake` (nothing boots),
// outside a network namespace (NATS listens in this one) with --no-network --no-cage.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { execa, type ResultPromise } from "execa";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { parseHostInfo } from "../../worker/fleet/host-info.js";
import { hostCallSubject, natsWorkerCaller } from "../../worker/fleet/nats-rpc.js";
import { parseFleetEvent, parseVmLocation } from "../../worker/fleet/records.js";
import { connectWorker, WorkerClient } from "../../worker/rpc/worker-client.js";
import { waitForOutput } from "../helpers/child-output.js";
import { waitFor } from "../helpers/vm.js";
import { startNats } from "../helpers/nats.js";
import { GATEWAY_BIN, testGuest, WORKER_BIN } from "../helpers/repo.js";

const HEARTBEAT_MS = 300;
const guest = testGuest();
let nats: Awaited<ReturnType<typeof startNats>>;
let nc: NatsConnection;
const cleanups: Array<() => Promise<unknown>> = [];

before(async () => {
  nats = await startNats({ jetstream: true });
  nc = await connect({ servers: nats.url });
});
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  await nc?.close();
  await nats?.stop();
});

interface Member {
  socket: string;
  dir: string;
  stop(signal?: NodeJS.Signals): Promise<void>;
  logs(): string;
  /** How it ended ("running" until stopped). */
  exit(): string;
}

/** A worker process with --nats, started as test/helpers/worker-process.ts does, minus the namespace. */
async function startMember(hostId: string, reuseDir?: string, extraArgs: string[] = [], readyMarker = "joined fleet at"): Promise<Member> {
  const dir = reuseDir ?? (await mkdtemp(join(tmpdir(), "pcr-fleet-member-")));
  if (!reuseDir) cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const socket = join(dir, "run", "worker.sock");
  const args = ["--socket", socket, "--state-dir", join(dir, "state"), "--runtime-dir", join(dir, "run")];
  args.push("--vmm", "fake", "--no-cage", "--no-network", "--http-listen", "off", "--stop-grace-ms", "0");
  args.push("--nats", nats.url, "--host-id", hostId, "--label", "zone=test", "--heartbeat-ms", String(HEARTBEAT_MS), ...extraArgs);
  let logText = "";
  let exit = "running";
  const child: ResultPromise = execa(process.execPath, [WORKER_BIN, ...args], { reject: false, buffer: false, stdin: "ignore" });
  cleanups.push(async () => {
    child.kill("SIGKILL");
    await child;
  });
  child.stderr!.on("data", (chunk: Buffer) => (logText += chunk.toString()));
  const out = await waitForOutput(child, readyMarker, "worker", 20_000, () => logText);
  if (readyMarker === "joined fleet at") assert.match(out, new RegExp(`pcr-worker: joined fleet at ${nats.url} as ${hostId}\\n`));
  return {
    socket,
    dir,
    logs: () => logText,
    async stop(signal = "SIGTERM") {
      child.kill(signal);
      const result = await child;
      exit = `exit code ${result.exitCode}, signal ${result.signal}`;
    },
    exit: () => exit,
  };
}

/** Polls `probe` every 50 ms until it returns something other than undefined, or fails at the deadline. */
const until = <T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> => waitFor(what, timeoutMs, probe, 50);

const kv = (name: string) => new Kvm(nc).open(name);

async function hostEntry(hostId: string) {
  const entry = await (await kv("pcr_hosts")).get(hostId);
  return entry?.operation === "PUT" ? { info: parseHostInfo(entry.value), revision: entry.revision, created: entry.created } : undefined;
}

async function eventsOf(hostId: string, vmId: string): Promise<string[]> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info("PCR_EVENTS");
  const statuses: string[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const msg = await jsm.streams.getMessage("PCR_EVENTS", { seq }).catch(() => undefined);
    if (!msg || msg.subject !== `pcr.events.${hostId}`) continue;
    const event = parseFleetEvent(msg.data);
    if (event.vmId === vmId) statuses.push(event.status);
  }
  return statuses;
}

test("a worker with --nats heartbeats its HostInfo, answers on its subject, and publishes its VMs and their events", {
  skip: "skip" in guest ? guest.skip : false,
  timeout: 60_000,
}, async () => {
  if ("skip" in guest) return;
  const member = await startMember("h1");
  const first = await until("h1 in pcr_hosts", () => hostEntry("h1"));
  assert.equal(first.info.backend, "fake");
  assert.deepEqual(first.info.labels, { zone: "test" });
  assert.deepEqual(first.info.used, { vms: 0, cpu: 0, memoryBytes: 0, diskBytes: 0 });
  await until("a later heartbeat", async () => {
    const now = await hostEntry("h1");
    return now && now.revision > first.revision && now.info.seenAtMs > first.info.seenAtMs ? true : undefined;
  });

  const local = await connectWorker(member.socket);
  cleanups.push(async () => local.close());
  const id = await local.createVm(guest.input).catch((err) => {
    throw new Error(`${(err as Error).message}; worker logs:\n${member.logs()}`);
  });
  const location = await until("the VM in pcr_vms", async () => {
    const entry = await (await kv("pcr_vms")).get(id);
    return entry?.operation === "PUT" ? parseVmLocation(entry.value) : undefined;
  });
  assert.equal(location.hostId, "h1");
  assert.equal(location.view.id, id);
  assert.equal(location.view.memoryBytes, String(guest.input.memoryBytes));
  const withVm = await until("the VM counted in h1's heartbeat", async () => {
    const now = await hostEntry("h1");
    return now?.info.used.vms === 1 ? now.info : undefined;
  });
  assert.equal(withVm.used.cpu, guest.input.cpu);
  assert.ok(withVm.store.count >= 1, "its store paths are in the summary");

  const remote = new WorkerClient(natsWorkerCaller(nc, hostCallSubject("h1"), { timeoutMs: 5_000 }));
  const views = await remote.listVms();
  assert.deepEqual(
    views.map((vm) => vm.id),
    [id],
  );
  assert.equal((await remote.getVm(id)).status, "running");

  await until("creating then running in PCR_EVENTS", async () => {
    const statuses = await eventsOf("h1", id);
    return statuses.includes("running") ? statuses : undefined;
  }).then((statuses) => assert.deepEqual(statuses.slice(0, 2), ["creating", "running"]));

  await remote.deleteVm(id);
  await until("the VM gone from pcr_vms", async () => ((await (await kv("pcr_vms")).get(id))?.operation === "PUT" ? undefined : true));
  const statuses = await eventsOf("h1", id);
  assert.deepEqual(statuses.slice(0, 2), ["creating", "running"], "in order");
  assert.ok(["stopped", "stopping"].includes(statuses.at(-1)!), `ends stopping or stopped: ${statuses.join(" ")}`);
  await member.stop("SIGTERM");
});

test("a host SIGKILLed stops heartbeating; restarted with its host id and state it heartbeats again", {
  skip: "skip" in guest ? guest.skip : false,
  timeout: 60_000,
}, async () => {
  if ("skip" in guest) return;
  const member = await startMember("h2");
  const local = await connectWorker(member.socket);
  const id = await local.createVm(guest.input);
  local.close();
  await until("h2's VM in pcr_vms", async () => ((await (await kv("pcr_vms")).get(id))?.operation === "PUT" ? true : undefined));

  await member.stop("SIGKILL");
  const last = (await hostEntry("h2"))!;
  // Three heartbeats' time with no new entry: it stopped (the entry's age grows).
  await new Promise((resolve) => setTimeout(resolve, 3 * HEARTBEAT_MS));
  const stale = (await hostEntry("h2"))!;
  assert.equal(stale.revision, last.revision, "no heartbeat after SIGKILL");
  assert.ok(Date.now() - stale.created.getTime() >= 3 * HEARTBEAT_MS - 50);

  const again = await startMember("h2", member.dir);
  const back = await until("h2 heartbeating again", async () => {
    const now = await hostEntry("h2");
    return now && now.revision > last.revision ? now.info : undefined;
  });
  assert.ok(back.startedAtMs > last.info.startedAtMs, "a new process");
  // The fake backend's VMMs live in the worker's memory: a restarted worker cannot adopt them, so
  // its VM is listed (its record survives) but failed, and still located on h2 until deleted.
  const remote = new WorkerClient(natsWorkerCaller(nc, hostCallSubject("h2"), { timeoutMs: 5_000 }));
  const vm = await remote.getVm(id);
  assert.equal(vm.id, id);
  assert.notEqual(vm.status, "running", "the fake VMM did not survive the worker");
  const location = parseVmLocation((await (await kv("pcr_vms")).get(id))!.value);
  assert.equal(location.hostId, "h2");
  assert.equal(back.used.vms, 0, "a VM whose VMM is gone takes nothing");
  await again.stop("SIGTERM");
});

test("NATS down and back: the member reconnects, heartbeats again and answers on its subject", {
  skip: "skip" in guest ? guest.skip : false,
  timeout: 60_000,
}, async () => {
  const member = await startMember("h3");
  const before = await until("h3 in pcr_hosts", () => hostEntry("h3"));
  await nats.kill(0);
  await new Promise((resolve) => setTimeout(resolve, 1_000)); // a few missed heartbeats
  await nats.restart(0);
  const after = await until(
    "h3 heartbeating after the outage",
    async () => {
      const now = await hostEntry("h3").catch(() => undefined); // the test's own client reconnects too
      return now && now.revision > before.revision ? now.info : undefined;
    },
    20_000,
  );
  assert.equal(after.startedAtMs, before.info.startedAtMs, "the same process, not a restart");
  const remote = new WorkerClient(natsWorkerCaller(nc, hostCallSubject("h3"), { timeoutMs: 5_000 }));
  const views = await until("h3 answering on its subject", () => remote.listVms().catch(() => undefined), 20_000);
  assert.deepEqual(views, []);
  await member.stop("SIGTERM");
});

test("a clean shutdown with no VMs left removes the host from pcr_hosts; with VMs alive it stays (they show lost)", {
  skip: "skip" in guest ? guest.skip : false,
  timeout: 60_000,
}, async () => {
  if ("skip" in guest) return;
  const empty = await startMember("leaver");
  await until("leaver in pcr_hosts", () => hostEntry("leaver"));
  await empty.stop("SIGTERM");
  // Deleted before the worker exits; the read may race the exit's last acknowledgements by a moment.
  await until("leaver gone from pcr_hosts", async () => ((await hostEntry("leaver")) ? undefined : true), 3_000).catch((err) => {
    throw new Error(`${(err as Error).message}; worker ${empty.exit()}, logs:\n${empty.logs()}`);
  });

  const holder = await startMember("holder");
  const local = await connectWorker(holder.socket);
  const id = await local.createVm(guest.input);
  local.close();
  await until("holder's VM in pcr_vms", async () => ((await (await kv("pcr_vms")).get(id))?.operation === "PUT" ? true : undefined));
  await holder.stop("SIGINT");
  assert.ok(await hostEntry("holder"), "a host whose VMs outlive the worker stays");
  assert.equal(parseVmLocation((await (await kv("pcr_vms")).get(id))!.value).hostId, "holder");

  // --stop-vms-on-exit: its VMs end with it, so it leaves the fleet whole, pcr_vms entries too.
  const stopper = await startMember("stopper", undefined, ["--stop-vms-on-exit"]);
  const client = await connectWorker(stopper.socket);
  const doomed = await client.createVm(guest.input);
  client.close();
  await until("stopper's VM in pcr_vms", async () => ((await (await kv("pcr_vms")).get(doomed))?.operation === "PUT" ? true : undefined));
  await stopper.stop("SIGTERM");
  assert.equal(await hostEntry("stopper"), undefined, stopper.logs());
  // Its VM's end is in PCR_EVENTS before the worker exits: the shutdown published it.
  const ended = await eventsOf("stopper", doomed);
  assert.equal(ended.at(-1), "stopped", `the events of a VM the shutdown stopped: ${ended.join(" ")}`);
  assert.notEqual((await (await kv("pcr_vms")).get(doomed))?.operation, "PUT", "its VM's entry is gone too");
});

test("a signal while the worker joins the fleet still shuts it down cleanly, and it leaves pcr_hosts", {
  skip: "skip" in guest ? guest.skip : false,
  timeout: 60_000,
}, async () => {
  // SIGTERM as soon as its sockets listen, before its join is done: once the handlers came only
  // after the join, the signal killed it there, its first heartbeat left behind in pcr_hosts.
  const early = await startMember("early-leaver", undefined, [], "listening on unix:");
  await early.stop("SIGTERM");
  assert.equal(early.exit(), "exit code 0, signal undefined", early.logs());
  assert.equal(await hostEntry("early-leaver"), undefined, early.logs());
});

test("pcr-gateway: a lost host's VM shows its host and key; a host lost past --forget-lost-after-ms with no VMs is forgotten", {
  skip: "skip" in guest ? guest.skip : false,
  timeout: 60_000,
}, async () => {
  if ("skip" in guest) return;
  const dir = await mkdtemp(join(tmpdir(), "pcr-fleet-gw-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const socket = join(dir, "gateway.sock");
  const args = ["--nats", nats.url, "--socket", socket, "--lost-after-ms", "1000", "--forget-lost-after-ms", "2500"];
  const gateway: ResultPromise = execa(process.execPath, [GATEWAY_BIN, ...args], { reject: false, buffer: false, stdin: "ignore" });
  cleanups.push(async () => {
    gateway.kill("SIGKILL");
    await gateway;
  });
  let gatewayLogs = "";
  gateway.stderr!.on("data", (chunk: Buffer) => (gatewayLogs += chunk.toString()));
  await waitForOutput(gateway, "listening on", "gateway", 20_000, () => gatewayLogs);
  const client = await connectWorker(socket);
  cleanups.push(async () => client.close());

  const withVm = await startMember("gw-keeps");
  const empty = await startMember("gw-forgets");
  // The key makes the retry safe while the gateway's watch has not brought the host yet.
  const id = await until("a create on gw-keeps", () =>
    client.createVm(guest.input, { placement: { host: "gw-keeps" }, idempotencyKey: "gw-key-1" }).catch(() => undefined),
  );
  const live = await client.getVm(id);
  assert.equal(live.host, "gw-keeps");
  assert.equal(live.idempotencyKey, "gw-key-1");
  // Earlier tests' hosts left VMs in pcr_vms (lost now): only this one is looked at.
  assert.deepEqual(
    (await client.listVms()).filter((vm) => vm.id === id).map((vm) => vm.host),
    ["gw-keeps"],
  );
  await until("gw-keeps's own pcr_vms entry, with the key", async () => {
    const entry = await (await kv("pcr_vms")).get(id);
    return entry?.operation === "PUT" && parseVmLocation(entry.value).view.idempotencyKey === "gw-key-1" ? true : undefined;
  });
  await withVm.stop("SIGKILL");
  await empty.stop("SIGKILL");
  const lost = await until("the VM lost", async () => {
    const vm = await client.getVm(id);
    return vm.status === "lost" ? vm : undefined;
  });
  assert.equal(lost.host, "gw-keeps");
  assert.equal(lost.idempotencyKey, "gw-key-1");
  assert.deepEqual(
    (await client.listVms()).filter((vm) => vm.id === id).map((vm) => [vm.status, vm.host, vm.idempotencyKey]),
    [["lost", "gw-keeps", "gw-key-1"]],
  );
  await until("gw-forgets forgotten", async () => ((await hostEntry("gw-forgets")) ? undefined : true), 15_000);
  assert.ok(await hostEntry("gw-keeps"), "a lost host with a VM in pcr_vms is kept");
});

test("bad fleet flags stop the worker at start, naming them", { timeout: 30_000 }, async () => {
  const result = await execa(process.execPath, [WORKER_BIN, "--nats", nats.url, "--host-id", "a.b", "--label", "novalue"], {
    reject: false,
    timeout: 20_000,
  });
  assert.equal(result.exitCode, 2, result.stderr);
  assert.match(result.stderr, /--host-id: must be 1-64 of A-Z a-z 0-9 _ -/);
  assert.match(result.stderr, /--label item 0: must be key=value/);
});
