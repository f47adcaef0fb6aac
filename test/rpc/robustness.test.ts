// Hostile and sloppy peers against a live in-process server: each problem stays on its connection.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { MessageTag, bootstrapMessage, callMessage, finishMessage, releaseMessage, startMessage } from "../../worker/rpc/protocol.js";
import { RpcServer } from "../../worker/rpc/server.js";
import { WORKER_INTERFACE_ID, WorkerMethod } from "../../worker/rpc/worker-codec.js";
import { connectWorker } from "../../worker/rpc/worker-client.js";
import { workerDispatcher } from "../../worker/rpc/worker-service.js";
import { FakeWorker, sampleVm } from "./fake-worker.js";
import { RawPeer } from "./raw-peer.js";
import {
  type MessageBuilder,
  listStruct,
  readCapabilityIndex,
  readStruct,
  readStructList,
  readU16,
  readU32,
} from "../../worker/rpc/wire.js";

const bootstrapTarget = { kind: "answer", questionId: 0 } as const;

describe("rpc robustness", () => {
  let dir: string;
  let socketPath: string;
  let server: RpcServer;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "pcr-rpc-robust-"));
    socketPath = join(dir, "worker.sock");
    const fake = new FakeWorker();
    fake.vms = [sampleVm(1)];
    server = await RpcServer.listen({ dispatcher: workerDispatcher(fake), logger: pino({ level: "silent" }), socketPath });
  });

  after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function healthy(): Promise<void> {
    const client = await connectWorker(socketPath);
    assert.equal((await client.listVms()).length, 1);
    client.close();
  }

  test("the bootstrap answer carries a senderHosted capability in its capTable", async () => {
    const peer = await RawPeer.connect(socketPath);
    peer.send(bootstrapMessage(7));
    await peer.until((p) => p.returnFor(7) !== undefined);
    const reply = peer.replies.find((r) => r.tag === MessageTag.Return)!;
    const payload = readStruct(reply.body!, 0)!;
    assert.equal(readCapabilityIndex(payload, 0), 0);
    const table = readStructList(payload, 1)!;
    assert.equal(table.length, 1);
    const descriptor = listStruct(table, 0);
    assert.equal(readU16(descriptor, 0), 1); // senderHosted
    assert.equal(readU32(descriptor, 4), 0); // export id
    peer.close();
  });

  test("stray Finish and Release for unknown ids are ignored", async () => {
    const peer = await RawPeer.connect(socketPath);
    peer.send(finishMessage(12345, true));
    peer.send(releaseMessage(777, 3));
    peer.send(bootstrapMessage(0));
    peer.send(callMessage(1, bootstrapTarget, WORKER_INTERFACE_ID, WorkerMethod.listVms, undefined));
    await peer.until((p) => p.returnFor(1) !== undefined);
    assert.equal(peer.returnFor(1)!.exception, false);
    peer.close();
  });

  test("a params list claiming 2^29 elements gets INVALID_ARGUMENT; the connection lives", async () => {
    const peer = await RawPeer.connect(socketPath);
    peer.send(bootstrapMessage(0));
    peer.send(
      callMessage(1, bootstrapTarget, WORKER_INTERFACE_ID, WorkerMethod.createVm, (b, at) => {
        const s = b.initStruct(at, 1, 2);
        b.setU32(s + 16, 1);
        b.setU32(s + 20, (7 | ((2 ** 29 - 1) << 3)) >>> 0);
      }),
    );
    peer.send(callMessage(2, bootstrapTarget, WORKER_INTERFACE_ID, WorkerMethod.listVms, undefined));
    await peer.until((p) => p.returnFor(2) !== undefined);
    const bad = peer.returnFor(1)!;
    assert.equal(bad.exception, true);
    assert.match(bad.reason, /^INVALID_ARGUMENT: malformed parameters/);
    assert.equal(peer.returnFor(2)!.exception, false);
    peer.close();
  });

  test("zero-sized list elements cannot amplify a small message into millions of objects", async () => {
    const peer = await RawPeer.connect(socketPath);
    peer.send(bootstrapMessage(0));
    const secrets = (count: number, ptrCount: number) => (b: MessageBuilder, at: number) => {
      const s = b.initStruct(at, 1, 2);
      b.initStructList(s + 16, count, 0, ptrCount);
    };
    // Real (if empty) secrets, just too many of them; then 2^26 zero-word secrets in a few bytes.
    peer.send(callMessage(1, bootstrapTarget, WORKER_INTERFACE_ID, WorkerMethod.createVm, secrets(1100, 2)));
    peer.send(callMessage(2, bootstrapTarget, WORKER_INTERFACE_ID, WorkerMethod.createVm, secrets(2 ** 26, 0)));
    await peer.until((p) => p.returnFor(1) !== undefined && p.returnFor(2) !== undefined);
    assert.match(peer.returnFor(1)!.reason, /^INVALID_ARGUMENT: malformed parameters: list of 1100 elements exceeds the limit of 1024/);
    assert.match(peer.returnFor(2)!.reason, /^INVALID_ARGUMENT: malformed parameters: traversal limit exceeded/);
    peer.close();
  });

  test("a duplicate question id aborts that connection only", async () => {
    const peer = await RawPeer.connect(socketPath);
    peer.send(bootstrapMessage(0));
    peer.send(bootstrapMessage(0));
    await peer.waitClosed();
    assert.ok(peer.replies.some((r) => r.tag === MessageTag.Abort));
    await healthy();
  });

  test("unsupported message types get an `unimplemented` echo", async () => {
    const peer = await RawPeer.connect(socketPath);
    const { b, body } = startMessage(MessageTag.Provide, 1, 2);
    b.setU32(body, 42);
    peer.send(b.finish());
    peer.send(bootstrapMessage(0));
    await peer.until((p) => p.returnFor(0) !== undefined);
    const echo = peer.replies.find((r) => r.tag === MessageTag.Unimplemented);
    assert.ok(echo, "expected an unimplemented reply");
    peer.close();
  });

  test("garbage framing and bad envelopes close that connection; the server goes on", async () => {
    const inputs: Buffer[] = [
      Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), // 2^32 segments
      Buffer.from([0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f]), // ~16 GiB message
      Buffer.from([0, 0, 0, 0, 1, 0, 0, 0, 0x40, 0, 0, 0, 1, 0, 1, 0]), // root struct out of bounds
      Buffer.from([0, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]), // root is a capability
    ];
    for (const input of inputs) {
      const peer = await RawPeer.connect(socketPath);
      peer.send(input);
      await peer.waitClosed();
      await healthy();
    }
  });

  test("calls to a promised answer that is not a capability get an exception", async () => {
    const peer = await RawPeer.connect(socketPath);
    peer.send(bootstrapMessage(0));
    peer.send(callMessage(1, bootstrapTarget, WORKER_INTERFACE_ID, WorkerMethod.listVms, undefined));
    peer.send(callMessage(2, { kind: "answer", questionId: 1 }, WORKER_INTERFACE_ID, WorkerMethod.listVms, undefined));
    peer.send(callMessage(3, { kind: "import", id: 99 }, WORKER_INTERFACE_ID, WorkerMethod.listVms, undefined));
    await peer.until((p) => p.returnFor(3) !== undefined && p.returnFor(2) !== undefined);
    assert.equal(peer.returnFor(2)!.exception, true);
    assert.equal(peer.returnFor(3)!.exception, true);
    assert.equal(peer.returnFor(1)!.exception, false);
    peer.close();
  });
});
