// Worker calls over NATS request/reply against a real nats-server: the typed client round-trips
// through the real WorkerService (on the fake world), errors cross as the same WorkerError, and
// hostile requests get typed replies while the host keeps serving.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import pino from "pino";
import type { CallerInfo, VmView } from "../../worker/core/api.js";
import { WorkerError } from "../../worker/core/errors.js";
import { hostCallSubject, type NatsWorkerServer, natsWorkerCaller, serveWorkerOverNats } from "../../worker/fleet/nats-rpc.js";
import { RpcException } from "../../worker/rpc/connection.js";
import { MessageBuilder } from "../../worker/rpc/wire.js";
import { WORKER_INTERFACE_ID, WorkerMethod } from "../../worker/rpc/worker-codec.js";
import { WorkerClient } from "../../worker/rpc/worker-client.js";
import { specInput, until, utf8, World } from "../core/fakes.js";
import { rejectsWith } from "../helpers/errors.js";
import { type NatsCluster, startNats } from "../helpers/nats.js";
import { FakeWorker, sampleVm } from "../rpc/fake-worker.js";

/** A view without what changes between two looks. */
const steady = (vm: VmView): VmView => ({ ...vm, uptimeMs: 0n });
const logger = pino({ level: process.env.PCR_TEST_LOG ?? "silent" });

describe("worker calls over nats", { timeout: 50_000 }, () => {
  let nats: (NatsCluster & { url: string }) | undefined;
  const connections: NatsConnection[] = [];
  const servers: NatsWorkerServer[] = [];
  let hostNc: NatsConnection;
  let clientNc: NatsConnection;
  let world: World;
  let fake: FakeWorker;
  const worldSubject = hostCallSubject("world-1");
  const fakeSubject = hostCallSubject("fake-1");
  const client = (subject: string, timeoutMs = 5000) => new WorkerClient(natsWorkerCaller(clientNc, subject, { timeoutMs }));

  /** A raw request, as a hostile or broken peer would send it. */
  const raw = async (body: Uint8Array, set: Record<string, string>): Promise<{ error: string; text: string }> => {
    const hdrs = headers();
    for (const [key, value] of Object.entries(set)) hdrs.set(key, value);
    const reply = await clientNc.request(worldSubject, body, { timeout: 5000, headers: hdrs });
    return { error: reply.headers?.get("Pcr-Error") ?? "", text: Buffer.from(reply.data).toString("utf8") };
  };

  before(async () => {
    nats = await startNats();
    hostNc = await connect({ servers: nats.url });
    connections.push(hostNc); // each at once: a connection left open would keep reconnecting
    clientNc = await connect({ servers: nats.url });
    connections.push(clientNc);
    world = new World();
    fake = new FakeWorker();
    servers.push(serveWorkerOverNats(hostNc, worldSubject, world.service, { logger }));
    servers.push(serveWorkerOverNats(hostNc, fakeSubject, fake, { logger }));
    await hostNc.flush(); // the subscriptions are on the server before the first request
  });

  after(async () => {
    await Promise.all(servers.map((server) => server.drain()));
    await Promise.all(connections.map((nc) => nc.close()));
    world?.service.detachAll();
    await nats?.stop();
  });

  test("createVm, getVm, listVms, read, injectFault, deleteVm round-trip through WorkerClient", async () => {
    const worker = client(worldSubject);
    const id = await worker.createVm(specInput({ allowedDomains: ["example.com"] }), {
      secrets: [{ name: "token", value: utf8("s3cret") }],
      ttlSeconds: 3600,
    });
    assert.match(id, /^vm-[0-9a-f]{16}$/);
    assert.equal(world.secrets.dirs.get(id)?.get("token"), "s3cret");
    assert.deepEqual(steady(await worker.getVm(id)), steady(await world.service.getVm(id)));
    assert.deepEqual((await worker.listVms()).map(steady), (await world.service.listVms()).map(steady));
    const chunk = await worker.read(id, 0n, 4096);
    assert.match(Buffer.from(chunk.data).toString(), /fake-guest: ready/);
    assert.equal(chunk.nextOffset, BigInt(chunk.data.length));

    const faultId = await worker.injectFault(id, { kind: "pause" });
    assert.deepEqual(
      (await worker.listFaults(id)).map((fault) => [fault.id, fault.kind]),
      [[faultId, "pause"]],
    );
    assert.equal((await worker.getVm(id)).status, "paused");
    await worker.clearFault(id, faultId);
    assert.equal((await worker.getVm(id)).status, "running");

    await worker.deleteVm(id);
    world.assertGone(id);
    await rejectsWith(worker.getVm(id), "NOT_FOUND", new RegExp(id));
  });

  test("NOT_FOUND and INVALID_ARGUMENT cross as the same typed errors", async () => {
    const worker = client(worldSubject);
    const direct = await world.service.getVm("vm-0000000000").then(
      () => assert.fail("no such vm"),
      (err: unknown) => err,
    );
    const remote = await worker.getVm("vm-0000000000").then(
      () => assert.fail("no such vm"),
      (err: unknown) => err,
    );
    assert.ok(direct instanceof WorkerError && remote instanceof WorkerError);
    assert.deepEqual([remote.code, remote.message], [direct.code, direct.message]);
    assert.equal(remote.code, "NOT_FOUND");
    await rejectsWith(worker.createVm(specInput({ cpu: 0 })), "INVALID_ARGUMENT", /cpu 0 is out of range/);
    await rejectsWith(worker.injectFault("vm-0000000000", { kind: "pause" }), "NOT_FOUND", /vm-0000000000/);
  });

  test("the host sees who called: nats:<subject>, the caller's request id, a deadline signal", async () => {
    await client(fakeSubject).createVm(specInput());
    const caller = fake.created.at(-1)!.caller!;
    assert.equal(caller.connection, `nats:${fakeSubject}`);
    assert.match(caller.requestId, /^[0-9a-f-]{36}$/);
    assert.ok(caller.signal instanceof AbortSignal);
    assert.equal(caller.signal.aborted, false);
  });

  test("malformed requests get INVALID_ARGUMENT replies, and the host keeps serving", async () => {
    const getVm = String(WorkerMethod.getVm);
    // A params struct whose text pointer points far beyond the message.
    const b = new MessageBuilder();
    const s = b.initStruct(b.root, 0, 1);
    b.setU32(s, (1000 << 2) | 1);
    b.setU32(s + 4, (8 << 3) | 2);
    const outOfBounds = b.finish();
    const method = { "Pcr-Method": getVm };
    const cases: Array<[string, Uint8Array, Record<string, string>, RegExp]> = [
      ["empty body", new Uint8Array(0), method, /truncated message/],
      ["garbage", utf8("definitely not capnp"), method, /segments \(limit 512\)/],
      ["truncated", outOfBounds.subarray(0, 12), method, /truncated message/],
      ["trailing bytes", Buffer.concat([outOfBounds, Buffer.alloc(3)]), method, /bytes after the message/],
      ["2^32 segments", Buffer.from([255, 255, 255, 255, 1, 0, 0, 0]), method, /4294967296 segments/],
      ["pointer out of bounds", outOfBounds, method, /list pointer out of bounds/],
      ["no method header", outOfBounds, {}, /Pcr-Method header/],
      ["a method that is no number", outOfBounds, { "Pcr-Method": "getVm" }, /Pcr-Method header/],
      ["a method beyond 16 bits", outOfBounds, { "Pcr-Method": "70000" }, /Pcr-Method header/],
    ];
    for (const [what, body, set, pattern] of cases) {
      const reply = await raw(body, set);
      assert.equal(reply.error, "failed", what);
      assert.match(reply.text, /^INVALID_ARGUMENT: /, what);
      assert.match(reply.text, pattern, what);
    }
    const worker = client(worldSubject);
    assert.ok(Array.isArray(await worker.listVms()), "still serving");
  });

  test("an unknown method or interface gets an unimplemented reply, typed on the client", async () => {
    const body = new MessageBuilder();
    body.initStruct(body.root, 0, 0);
    const unknown = await raw(body.finish(), { "Pcr-Method": "999" });
    assert.equal(unknown.error, "unimplemented");
    assert.match(unknown.text, /^Method not implemented: interface 0x[0-9a-f]+ method 999 \(this subject serves Worker\)$/);
    const otherInterface = await raw(body.finish(), { "Pcr-Method": "0", "Pcr-Interface": "abc" });
    assert.equal(otherInterface.error, "unimplemented");

    const caller = natsWorkerCaller(clientNc, worldSubject, { timeoutMs: 5000 });
    await assert.rejects(caller.call(WORKER_INTERFACE_ID, 999), (err: unknown) => {
      assert.ok(err instanceof RpcException);
      assert.equal(err.type, "unimplemented");
      return true;
    });
    // WorkerClient turns it into INTERNAL "Method not implemented: …", as over a stream connection.
    assert.ok(Array.isArray(await client(worldSubject).listVms()), "still serving");
  });

  test("a publish without a reply subject is ignored", async () => {
    clientNc.publish(worldSubject, utf8("nobody waits for this")); // same connection: it arrives before the call
    assert.ok(Array.isArray(await client(worldSubject).listVms()));
  });

  test("a host nobody serves fails fast with UNAVAILABLE", async () => {
    const started = Date.now();
    await rejectsWith(client(hostCallSubject("nobody"), 10_000).listVms(), "UNAVAILABLE", /no responder/);
    assert.ok(Date.now() - started < 2000, `failed in ${Date.now() - started} ms, not at the timeout`);
  });

  test("a call slower than the caller's timeout fails with DEADLINE_EXCEEDED, and the host's signal aborts", async () => {
    const seen: AbortSignal[] = [];
    // getVm waits for its deadline signal, as a well-behaved long call would.
    const slow = new (class extends FakeWorker {
      override async getVm(id: string, caller?: CallerInfo) {
        seen.push(caller!.signal!);
        await new Promise((resolve) => caller!.signal!.addEventListener("abort", resolve));
        return super.getVm(id);
      }
    })();
    const subject = hostCallSubject("slow-1");
    servers.push(serveWorkerOverNats(hostNc, subject, slow, { logger }));
    await hostNc.flush();
    await rejectsWith(client(subject, 50).getVm("vm-slow"), "DEADLINE_EXCEEDED", /did not answer within 50 ms/);
    assert.equal(seen.length, 1);
    if (!seen[0]!.aborted) await new Promise((resolve) => seen[0]!.addEventListener("abort", resolve));
    assert.equal(seen[0]!.aborted, true);
  });

  test("results and requests beyond the message limit are RESOURCE_EXHAUSTED, not lost", async () => {
    const big = new FakeWorker();
    big.vms = Array.from({ length: 200 }, (_, i) => sampleVm(i));
    const subject = hostCallSubject("big-1");
    servers.push(serveWorkerOverNats(hostNc, subject, big, { logger, limits: { maxMessageBytes: 16 * 1024 } }));
    await hostNc.flush();
    await rejectsWith(client(subject).listVms(), "RESOURCE_EXHAUSTED", /results of \d+ bytes exceed the 16384-byte message limit/);
    const small = new WorkerClient(natsWorkerCaller(clientNc, subject, { timeoutMs: 5000, limits: { maxMessageBytes: 4096 } }));
    const secrets = [{ name: "blob", value: new Uint8Array(8192) }];
    await rejectsWith(small.createVm(specInput(), { secrets }), "RESOURCE_EXHAUSTED", /request of \d+ bytes exceeds the 4096-byte/);
    assert.equal(big.created.length, 0, "nothing was sent");
    assert.equal((await client(subject).getVm(big.vms[3]!.id)).id, big.vms[3]!.id, "still serving");
  });

  test("drain answers the calls under way, then the host has no responder", async () => {
    const gate = new FakeWorker();
    gate.vms = [sampleVm(1)];
    gate.getVmDelayMs = 100;
    const subject = hostCallSubject("drain-1");
    const server = serveWorkerOverNats(hostNc, subject, gate, { logger });
    await hostNc.flush();
    const worker = client(subject);
    const pending = worker.getVm(gate.vms[0]!.id);
    await until(() => server.callsInFlight === 1, "the call reached the host", 1_000_000);
    await server.drain();
    assert.equal(server.callsInFlight, 0);
    assert.equal((await pending).id, gate.vms[0]!.id);
    await rejectsWith(worker.listVms(), "UNAVAILABLE", /no responder/);
  });
});

test("a call in flight when the NATS connection drops fails at once (UNAVAILABLE, outcome unknown), not at its timeout", async () => {
  const nats = await startNats();
  const connections: NatsConnection[] = [];
  try {
    const host = await connect({ servers: nats.url, reconnectTimeWait: 100 });
    const caller = await connect({ servers: nats.url, reconnectTimeWait: 100 });
    connections.push(host, caller);
    const stuck = new (class extends FakeWorker {
      override async getVm(id: string) {
        await new Promise((resolve) => setTimeout(resolve, 20_000).unref());
        return super.getVm(id);
      }
    })();
    const subject = hostCallSubject("stuck-1");
    const server = serveWorkerOverNats(host, subject, stuck, { logger });
    await host.flush();
    const started = Date.now();
    const call = new WorkerClient(natsWorkerCaller(caller, subject, { timeoutMs: 60_000 })).getVm("vm-stuck");
    const settled = call.then(
      () => undefined,
      (err: unknown) => err,
    );
    await new Promise((resolve) => setTimeout(resolve, 200));
    await nats.kill(0);
    await rejectsWith(
      settled.then((err) => Promise.reject(err)),
      "UNAVAILABLE",
      /dropped during the call: its outcome is unknown/,
    );
    assert.ok(Date.now() - started < 5_000, `failed after ${Date.now() - started} ms`);
    void server;
  } finally {
    await Promise.all(connections.map((nc) => nc.close()));
    await nats.stop();
  }
});
