// A gateway's view of the fleet (worker/fleet/directory.ts) against a real NATS: what a host may not
// say about another host is not believed.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { pino } from "pino";
import { type FleetBuckets, openFleetBuckets } from "../../worker/fleet/buckets.js";
import { FleetDirectory } from "../../worker/fleet/directory.js";
import { encodeHostInfo } from "../../worker/fleet/host-info.js";
import { startNats } from "../helpers/nats.js";
import { waitFor } from "../helpers/vm.js";
import { host } from "./fleet-hosts.js";

const logger = pino({ level: process.env.PCR_TEST_LOG ?? "silent" });
let nats: Awaited<ReturnType<typeof startNats>>;
let nc: NatsConnection;
let buckets: FleetBuckets;

before(async () => {
  nats = await startNats({ jetstream: true });
  nc = await connect({ servers: nats.url });
  buckets = await openFleetBuckets(nc, { replicas: 1, logger });
});
after(async () => {
  await nc?.close();
  await nats?.stop();
});

test("a pcr_hosts entry naming another host than its key is no host: neither read at start nor followed", async () => {
  // Under narrow NATS permissions a host writes only its own key; inside it, it could name another
  // host, which the gateway would then count twice and send that host's creates and calls.
  await buckets.hosts.put("real", encodeHostInfo(host("real")));
  await buckets.hosts.put("impostor", encodeHostInfo(host("real")));
  const directory = new FleetDirectory(buckets, logger);
  try {
    await directory.start();
    assert.deepEqual(
      directory.hosts().map((known) => known.info.hostId),
      ["real"],
    );
    await buckets.hosts.put("impostor-later", encodeHostInfo(host("real")));
    // A marker written after it: once the watch brought the marker, it brought the impostor too.
    await buckets.hosts.put("marker", encodeHostInfo(host("marker")));
    await waitFor("the marker in the directory", 10_000, async () => directory.host("marker"));
    assert.deepEqual(
      directory
        .hosts()
        .map((known) => known.info.hostId)
        .sort(),
      ["marker", "real"],
    );
    assert.equal(directory.host("impostor-later"), undefined);
  } finally {
    directory.stop();
  }
});
