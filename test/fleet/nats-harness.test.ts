// The test harness's nats-server cluster: it is ready for JetStream R3 when it says so, and it
// survives what the fleet tests will do to it (a node killed, then restarted).
import assert from "node:assert/strict";
import { test } from "node:test";
import { type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { type NatsCluster, startNats, startNatsCluster } from "../helpers/nats.js";

const STREAM = "HARNESS";

/** Retries `attempt` while a stream is electing a leader; fails after `timeoutMs`. */
async function eventually<T>(what: string, timeoutMs: number, attempt: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await attempt();
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: ${(err as Error).message}`, { cause: err });
    }
    await new Promise((resolve) => setTimeout(resolve, 50)); // a polling interval, not synchronization
  }
}

async function replicasCurrent(jsm: JetStreamManager, messages: number): Promise<void> {
  const info = await jsm.streams.info(STREAM);
  const replicas = info.cluster?.replicas ?? [];
  if (info.state.messages !== messages) throw new Error(`${info.state.messages} of ${messages} messages`);
  if (replicas.length !== 2 || !replicas.every((peer) => peer.current && !peer.offline)) {
    throw new Error(`replicas not current: ${JSON.stringify(replicas)}`);
  }
}

test("a single JetStream node starts, serves and stops", { timeout: 30_000 }, async () => {
  const nats = await startNats({ jetstream: true });
  let nc: NatsConnection | undefined;
  try {
    nc = await connect({ servers: nats.url });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: "ONE", subjects: ["one.>"] });
    const ack = await jetstream(nc).publish("one.x", "hello");
    assert.equal(ack.seq, 1);
  } finally {
    await nc?.close();
    await nats.stop();
  }
  assert.equal(nats.nodes[0]!.running, false);
});

test("a 3-node cluster takes an R3 stream, stays writable with a node killed, and takes it back", { timeout: 50_000 }, async () => {
  let cluster: NatsCluster | undefined;
  const connections: NatsConnection[] = [];
  try {
    cluster = await startNatsCluster(3);
    assert.equal(cluster.urls.length, 3);
    // Ready means R3 works at once: no retry around the first stream.
    const first = await connect({ servers: cluster.urls[0] });
    connections.push(first);
    const jsm = await jetstreamManager(first);
    const info = await jsm.streams.add({ name: STREAM, subjects: ["harness.>"], num_replicas: 3 });
    assert.equal(info.config.num_replicas, 3);
    const js = jetstream(first);
    for (let i = 0; i < 5; i++) await js.publish("harness.a", `m${i}`);

    // Kill the stream's leader (not the node the client talks to, unless it must be).
    const leader = (await jsm.streams.info(STREAM)).cluster?.leader;
    const victim = cluster.nodes.findIndex((node) => node.name === leader);
    assert.ok(victim >= 0, `leader ${leader} is one of the nodes`);
    const survivor = victim === 0 ? 1 : 0;
    const client = victim === 0 ? await connect({ servers: cluster.urls[survivor] }) : first;
    if (client !== first) connections.push(client);
    await cluster.kill(victim);
    assert.equal(cluster.nodes[victim]!.running, false);

    // Two of three keep a quorum: after the re-election the stream takes writes again.
    const ack = await eventually("publish with a node down", 20_000, () =>
      jetstream(client).publish("harness.a", "after", { timeout: 1000 }),
    );
    assert.equal(ack.seq, 6);

    await cluster.restart(victim);
    assert.equal(cluster.nodes[victim]!.running, true);
    const back = await connect({ servers: cluster.urls[victim] });
    connections.push(back);
    const backJsm = await jetstreamManager(back);
    await eventually("the restarted node catches up", 20_000, () => replicasCurrent(backJsm, 6));
    const last = await eventually("publish through the restarted node", 10_000, () => jetstream(back).publish("harness.b", "x"));
    assert.equal(last.seq, 7);
  } finally {
    await Promise.all(connections.map((nc) => nc.close()));
    await cluster?.stop();
  }
});
