// Hosts that left for good are forgotten (worker/fleet/forget.ts), against a real NATS: an entry
// lost past the limit with no VMs goes; one that heartbeats again, or whose host still has VMs in
// pcr_vms, stays; a delete races a heartbeat safely (revision-checked); junk entries are no hosts.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { pino } from "pino";
import { type FleetBuckets, openFleetBuckets } from "../../worker/fleet/buckets.js";
import { FleetDirectory } from "../../worker/fleet/directory.js";
import { forgetHost, forgetLostHosts } from "../../worker/fleet/forget.js";
import { encodeHostInfo } from "../../worker/fleet/host-info.js";
import { encodeVmLocation } from "../../worker/fleet/records.js";
import { startNats } from "../helpers/nats.js";
import { host } from "./fleet-hosts.js";

const logger = pino({ level: process.env.PCR_TEST_LOG ?? "silent" });
const FORGET_AFTER_MS = 600;
let nats: Awaited<ReturnType<typeof startNats>>;
let nc: NatsConnection;
let buckets: FleetBuckets;
let directory: FleetDirectory;

before(async () => {
  nats = await startNats({ jetstream: true });
  nc = await connect({ servers: nats.url });
  buckets = await openFleetBuckets(nc, { replicas: 1, logger });
  directory = new FleetDirectory(buckets, logger, 300);
  await directory.start();
});
after(async () => {
  directory?.stop();
  await nc?.close();
  await nats?.stop();
});

const heartbeat = (hostId: string) => buckets.hosts.put(hostId, encodeHostInfo(host(hostId)));
const present = async (key: string) => (await buckets.hosts.get(key))?.operation === "PUT";
const pass = () => forgetLostHosts({ hosts: buckets.hosts, directory, forgetAfterMs: FORGET_AFTER_MS, logger });
const olderThanTheLimit = () => new Promise((resolve) => setTimeout(resolve, FORGET_AFTER_MS + 300));

function location(hostId: string, id: string) {
  return encodeVmLocation({
    hostId,
    view: {
      id,
      hostname: "web",
      cpu: 1,
      memoryBytes: "268435456",
      group: "",
      ip: "",
      mac: "",
      backend: "fake",
      createdAtMs: "1",
      specHash: "",
      idempotencyKey: "k-1",
    },
  });
}

async function until(what: string, probe: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

test("a host lost past the limit with no VMs is forgotten; one that heartbeat again in between is not", async () => {
  await heartbeat("gone");
  await heartbeat("back");
  await olderThanTheLimit();
  await heartbeat("back");
  assert.deepEqual(await pass(), ["gone"]);
  assert.equal(await present("gone"), false);
  assert.equal(await present("back"), true);
  await until("gateways' directories dropping it", () => directory.host("gone") === undefined);
  // It may come back whenever it likes, as a new entry.
  await heartbeat("gone");
  assert.equal(await present("gone"), true);
  assert.deepEqual(await pass(), []);
});

test("a lost host whose VMs are still in pcr_vms is kept: its VMs stay lost, never vanish", async () => {
  await heartbeat("keeper");
  await buckets.vms.put("vm-00000000000000aa", location("keeper", "vm-00000000000000aa"));
  await until("the VM in the directory", () => directory.vmsOn("keeper").length === 1);
  await olderThanTheLimit();
  assert.ok(!(await pass()).includes("keeper"));
  assert.equal(await present("keeper"), true);
  // Its VM deleted (by the host come back, or an operator): the next pass forgets it.
  await buckets.vms.delete("vm-00000000000000aa");
  await until("the VM gone from the directory", () => directory.vmsOn("keeper").length === 0);
  assert.ok((await pass()).includes("keeper"));
});

test("the delete is revision-checked: a heartbeat stored after the lost entry was read wins", async () => {
  const stale = await heartbeat("racer");
  await heartbeat("racer"); // the host came back between a gateway's read and its delete
  assert.equal(await forgetHost(buckets.hosts, "racer", stale), false);
  assert.equal(await present("racer"), true);
  // Two gateways deleting the same lost entry: one does, the other finds it gone.
  const current = (await buckets.hosts.get("racer"))!.revision;
  const both = await Promise.all([forgetHost(buckets.hosts, "racer", current), forgetHost(buckets.hosts, "racer", current)]);
  assert.deepEqual(both.sort(), [false, true]);
  assert.equal(await present("racer"), false);
});

test("hostile entries: junk in pcr_hosts is nobody's heartbeat and goes; junk in pcr_vms keeps no host", async () => {
  await buckets.hosts.put("junk", new TextEncoder().encode("{not json"));
  await heartbeat("shielded");
  // A pcr_vms entry that names the host but does not parse: the directory skips it, so does this.
  await buckets.vms.put("vm-00000000000000bb", new TextEncoder().encode(JSON.stringify({ hostId: "shielded", view: "x" })));
  await olderThanTheLimit();
  const forgotten = await pass();
  assert.ok(forgotten.includes("junk") && forgotten.includes("shielded"), forgotten.join(","));
  // A fresh junk entry is not old enough: left alone, as a live host's would be.
  await buckets.hosts.put("junk2", new TextEncoder().encode("\u0000"));
  assert.ok(!(await pass()).includes("junk2"));
  await buckets.hosts.delete("junk2");
});

test("forgetAfterMs 0 forgets nothing", async () => {
  await heartbeat("forever");
  await olderThanTheLimit();
  assert.deepEqual(await forgetLostHosts({ hosts: buckets.hosts, directory, forgetAfterMs: 0, logger }), []);
  assert.equal(await present("forever"), true);
});
