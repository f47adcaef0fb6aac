import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { spawn } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { WorkerError } from "../../worker/core/errors.js";
import { RpcException } from "../../worker/rpc/connection.js";
import { connectRpc } from "../../worker/rpc/client.js";
import { RpcServer, startRpcServer } from "../../worker/rpc/server.js";
import { WORKER_INTERFACE_ID, WorkerMethod } from "../../worker/rpc/worker-codec.js";
import { connectWorker } from "../../worker/rpc/worker-client.js";
import { workerDispatcher } from "../../worker/rpc/worker-service.js";
import { FakeWorker, sampleVm } from "./fake-worker.js";

const logger = pino({ level: "silent" });
const spec = {
  hostname: "web-1",
  kernel: "/nix/store/aaa-kernel/bzImage",
  initrd: "/nix/store/bbb-initrd/initrd",
  image: "/nix/store/ccc-image/root.img",
  cmdline: "console=ttyS0 quiet",
  cpu: 3,
  memoryBytes: 5n * 1024n ** 3n,
  allowedDomains: ["example.com", "*.nixos.org", "1.1.1.1", "10.0.0.0/8", "ünïcödé.example"],
};

describe("rpc over unix socket and tcp", () => {
  let dir: string;
  let socketPath: string;
  let server: RpcServer;
  let fake: FakeWorker;
  let tcp: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "pcr-rpc-"));
    socketPath = join(dir, "worker.sock");
    fake = new FakeWorker();
    fake.vms = Array.from({ length: 2000 }, (_, i) => sampleVm(i));
    server = await RpcServer.listen({ dispatcher: workerDispatcher(fake), logger, socketPath, tcp: "127.0.0.1:0" });
    tcp = `tcp://127.0.0.1:${server.tcpAddress!.port}`;
  });

  after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("socket file has mode 0660", () => {
    assert.equal(statSync(socketPath).mode & 0o777, 0o660);
  });

  test("all methods round-trip over the unix socket", async () => {
    const client = await connectWorker(socketPath);
    try {
      const vms = await client.listVms();
      assert.equal(vms.length, 2000);
      assert.deepEqual(vms, fake.vms);
      assert.deepEqual(await client.getVm("vm-000007"), fake.vms[7]);
      const chunk = await client.read("vm-1", 5n, 10);
      assert.equal(Buffer.from(chunk.data).toString(), "console of");
      assert.equal(chunk.nextOffset, 15n);
      const secrets = [
        { name: "token", value: new Uint8Array([0, 1, 2, 255]) },
        { name: "empty", value: new Uint8Array(0) },
      ];
      const id = await client.createVm(spec, { secrets, ttlSeconds: 3600 });
      assert.equal(id, `vm-created-${fake.created.length}`);
      const record = fake.created.at(-1)!;
      assert.deepEqual(record.spec, spec);
      assert.deepEqual(record.options.secrets, secrets);
      assert.equal(record.options.ttlSeconds, 3600);
      assert.match(record.caller!.connection, /^unix#\d+$/);
      assert.ok(record.caller!.requestId.startsWith(record.caller!.connection));
      const events = await client.events(10n, 2, 0);
      assert.equal(events.events.length, 2);
      assert.deepEqual(events.events[1], { seq: 11n, vmId: "vm-1", status: "running", atMs: 1_700_000_000_000n, reason: "event 1" });
      assert.equal(events.nextSeq, 12n);
    } finally {
      client.close();
    }
  });

  test("exec: every field of the command and of the result crosses intact", async () => {
    const client = await connectWorker(socketPath);
    try {
      const stdin = new Uint8Array([0, 1, 2, 255, 10]);
      const result = await client.exec("vm-1", {
        argv: ["/bin/sh", "-c", "echo é", "--big"],
        env: ["A=1", "B=two words"],
        cwd: "/tmp",
        stdin,
        timeoutMs: 1,
      });
      assert.deepEqual(fake.execs.at(-1), {
        id: "vm-1",
        request: { argv: ["/bin/sh", "-c", "echo é", "--big"], env: ["A=1", "B=two words"], cwd: "/tmp", stdin, timeoutMs: 1 },
      });
      assert.equal(result.exitCode, 4);
      assert.equal(result.signal, 0);
      assert.equal(result.timedOut, true);
      assert.deepEqual(result.stdout, stdin);
      assert.equal(Buffer.from(result.stderr).toString(), "/tmp|A=1,B=two words");
      assert.equal(result.stdoutTruncated, true);
      assert.equal(result.stderrTruncated, false);
      assert.equal(result.durationMs, 2 ** 33);
      const crashed = await client.exec("vm-1", { argv: ["crash"] });
      assert.equal(crashed.exitCode, -1, "Int32 keeps its sign");
      assert.equal(crashed.signal, 11);
      await assert.rejects(
        client.exec("vm-missing", { argv: ["true"] }),
        (err: unknown) => err instanceof WorkerError && err.code === "NOT_FOUND",
      );
    } finally {
      client.close();
    }
  });

  test("files: every field of each call and answer crosses intact", async () => {
    const client = await connectWorker(socketPath);
    try {
      const data = new Uint8Array([0, 255, 1, 10]);
      const written = await client.writeFile("vm-1", { path: "/a/é", offset: 2 ** 40, data, mode: 0o750, truncate: true });
      assert.equal(written.size, 2 ** 40 + 4);
      assert.deepEqual(fake.guestCalls.at(-1), {
        method: "writeFile",
        args: ["vm-1", { path: "/a/é", offset: 2 ** 40, data, mode: 0o750, truncate: true }],
      });
      const chunk = await client.readFile("vm-1", "/etc/x", 12345, 7);
      assert.deepEqual(fake.guestCalls.at(-1), { method: "readFile", args: ["vm-1", "/etc/x", 12345, 7] });
      assert.deepEqual(chunk, { data: new TextEncoder().encode("/etc/x"), size: 12352, eof: true });
      assert.deepEqual(await client.statFile("vm-1", "/s"), { name: "/s", type: "symlink", size: 2 ** 40, mode: 0o4755, mtimeMs: -5 });
      const listing = await client.listDir("vm-1", "/d", 3);
      assert.deepEqual(fake.guestCalls.at(-1), { method: "listDir", args: ["vm-1", "/d", 3] });
      assert.equal(listing.truncated, true);
      assert.deepEqual(
        listing.entries.map((e) => [e.name, e.type, e.size, e.mode, e.mtimeMs]),
        [
          ["/d-0", "file", 0, 0o600, 1_700_000_000_000],
          ["/d-1", "dir", 1, 0o601, 1_700_000_000_001],
          ["/d-2", "file", 2, 0o602, 1_700_000_000_002],
        ],
      );
      await assert.rejects(client.statFile("vm-missing", "/"), (err: unknown) => err instanceof WorkerError && err.code === "NOT_FOUND");
    } finally {
      client.close();
    }
  });

  test("processes: every field of each call and answer crosses intact", async () => {
    const client = await connectWorker(socketPath);
    try {
      const command = { argv: ["/bin/sh", "-i"], env: ["TERM=xterm"], cwd: "/root", tty: { rows: 40, cols: 132 } };
      assert.equal(await client.startProcess("vm-1", command), 1002);
      assert.deepEqual(fake.guestCalls.at(-1), { method: "startProcess", args: ["vm-1", command] });
      assert.equal(await client.startProcess("vm-1", { argv: ["true"], env: [], cwd: "" }), 1001);
      assert.deepEqual(fake.guestCalls.at(-1)?.args[1], { argv: ["true"], env: [], cwd: "" }, "no tty stays no tty");
      const output = await client.readProcess("vm-1", 77, "stderr", 2 ** 35, 4096, 0);
      assert.deepEqual(fake.guestCalls.at(-1), { method: "readProcess", args: ["vm-1", 77, "stderr", 2 ** 35, 4096, 0] });
      assert.deepEqual(output, { data: new TextEncoder().encode("stderr"), offset: 2 ** 35 + 1, nextOffset: 2 ** 35 + 7, eof: true });
      const stdin = new Uint8Array([4, 3, 2]);
      await client.writeProcess("vm-1", 77, stdin, true);
      assert.deepEqual(fake.guestCalls.at(-1), { method: "writeProcess", args: ["vm-1", 77, stdin, true] });
      await client.signalProcess("vm-1", 77, 15);
      assert.deepEqual(fake.guestCalls.at(-1), { method: "signalProcess", args: ["vm-1", 77, 15] });
      assert.deepEqual(await client.waitProcess("vm-1", 77, 1009), { pid: 77, running: true, exitCode: -1, signal: 49 });
      await client.resizeProcess("vm-1", 77, 50, 200);
      assert.deepEqual(fake.guestCalls.at(-1), { method: "resizeProcess", args: ["vm-1", 77, 50, 200] });
    } finally {
      client.close();
    }
  });

  test("tcp works the same", async () => {
    const client = await connectWorker(tcp);
    try {
      assert.deepEqual(await client.getVm("vm-000042"), fake.vms[42]);
      assert.equal((await client.listVms()).length, 2000);
    } finally {
      client.close();
    }
  });

  test("createVm carries the idempotency key and the placement; none of either arrives as absent", async () => {
    const client = await connectWorker(socketPath);
    try {
      const placement = { host: "h1-eu", labels: { zone: "eu-1", "example.com/gpu": "a100" } };
      await client.createVm(spec, { idempotencyKey: "req 7/é?".replace("é", "e"), placement });
      let { options } = fake.created.at(-1)!;
      assert.equal(options.idempotencyKey, "req 7/e?");
      assert.deepEqual(options.placement, placement);
      await client.createVm(spec, { placement: { labels: { zone: "x" } } });
      assert.deepEqual(fake.created.at(-1)!.options.placement, { labels: { zone: "x" } });
      await client.createVm(spec, { idempotencyKey: "", placement: {} });
      ({ options } = fake.created.at(-1)!);
      assert.equal("idempotencyKey" in options, false);
      assert.equal("placement" in options, false);
    } finally {
      client.close();
    }
  });

  test("createVm's key and placement are bounded: over is INVALID_ARGUMENT, nothing reaches the worker", async () => {
    const client = await connectWorker(socketPath);
    const before = fake.created.length;
    try {
      const labels = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, "v"]));
      await assert.rejects(client.createVm(spec, { idempotencyKey: "k".repeat(129) }), { code: "INVALID_ARGUMENT" });
      await assert.rejects(client.createVm(spec, { placement: { labels } }), { code: "INVALID_ARGUMENT", message: /33 labels/ });
      await assert.rejects(client.createVm(spec, { placement: { labels: { "bad key": "v" } } }), { code: "INVALID_ARGUMENT" });
      await assert.rejects(client.createVm(spec, { placement: { labels: { k: "v".repeat(129) } } }), { code: "INVALID_ARGUMENT" });
      await assert.rejects(client.createVm(spec, { placement: { host: "no/such host" } }), { code: "INVALID_ARGUMENT" });
      await assert.rejects(client.createVm(spec, { placement: { host: "h1.eu" } }), { code: "INVALID_ARGUMENT", message: /no host id/ });
      assert.equal(fake.created.length, before);
      // 32 labels and a 128-byte key are within bounds.
      delete labels.k32;
      await client.createVm(spec, { idempotencyKey: "k".repeat(128), placement: { labels } });
      assert.equal(Object.keys(fake.created.at(-1)!.options.placement!.labels!).length, 32);
    } finally {
      client.close();
    }
  });

  test("errors come back as WorkerError with code and text", async () => {
    const client = await connectWorker(socketPath);
    try {
      await assert.rejects(client.deleteVm("nope"), (err: unknown) => {
        assert.ok(err instanceof WorkerError);
        assert.equal(err.code, "NOT_FOUND");
        assert.equal(err.message, "no vm nope");
        return true;
      });
      await assert.rejects(client.getVm("throw-plain"), { name: "WorkerError", code: "INTERNAL", message: "plain failure" });
      await assert.rejects(client.createVm({ ...spec, hostname: "" }), { code: "INVALID_ARGUMENT" });
      assert.equal((await client.getVm("vm-000001")).id, "vm-000001");
    } finally {
      client.close();
    }
  });

  test("calls pipelined on the bootstrap answer before its reply", async () => {
    const { connection, bootstrap } = await connectRpc(socketPath);
    try {
      assert.equal(bootstrap.importId, undefined);
      const calls = [0, 1, 2].map(() => connection.call(bootstrap, WORKER_INTERFACE_ID, WorkerMethod.listVms));
      assert.deepEqual(bootstrap.target, { kind: "answer", questionId: bootstrap.bootstrapQuestion });
      await Promise.all(calls);
      await bootstrap.ready;
      assert.notEqual(bootstrap.importId, undefined);
      await connection.call(bootstrap, WORKER_INTERFACE_ID, WorkerMethod.listVms);
    } finally {
      connection.close();
    }
  });

  test("unknown method or interface gets `unimplemented` and the connection lives on", async () => {
    const { connection, bootstrap } = await connectRpc(socketPath);
    try {
      await assert.rejects(connection.call(bootstrap, WORKER_INTERFACE_ID, 99), (err: unknown) => {
        assert.ok(err instanceof RpcException);
        assert.equal(err.type, "unimplemented");
        return true;
      });
      await assert.rejects(connection.call(bootstrap, 0x1234n, 0), { type: "unimplemented" });
      await connection.call(bootstrap, WORKER_INTERFACE_ID, WorkerMethod.listVms);
      assert.equal(connection.closed, false);
    } finally {
      connection.close();
    }
  });

  test("200 calls in flight", async () => {
    fake.getVmDelayMs = 20;
    const client = await connectWorker(socketPath);
    try {
      const results = await Promise.all(Array.from({ length: 200 }, (_, i) => client.getVm(fake.vms[i]!.id)));
      for (const [i, vm] of results.entries()) assert.equal(vm.id, fake.vms[i]!.id);
    } finally {
      fake.getVmDelayMs = 0;
      client.close();
    }
  });

  test("beyond the in-flight limit calls get RESOURCE_EXHAUSTED, not a crash", async () => {
    fake.getVmDelayMs = 100;
    const client = await connectWorker(socketPath);
    try {
      const settled = await Promise.allSettled(Array.from({ length: 300 }, () => client.getVm("vm-000003")));
      const ok = settled.filter((s) => s.status === "fulfilled").length;
      const exhausted = settled.filter((s) => s.status === "rejected" && (s.reason as WorkerError).code === "RESOURCE_EXHAUSTED").length;
      assert.equal(ok, 256);
      assert.equal(exhausted, 44);
      fake.getVmDelayMs = 0;
      assert.equal((await client.getVm("vm-000003")).id, "vm-000003");
    } finally {
      fake.getVmDelayMs = 0;
      client.close();
    }
  });

  test("pending calls are rejected at once when the connection closes", async () => {
    fake.getVmDelayMs = 10_000;
    const client = await connectWorker(socketPath);
    try {
      await client.listVms();
      const pending = client.getVm("vm-000001");
      const started = Date.now();
      setTimeout(() => client.close(), 20);
      await assert.rejects(pending, { name: "WorkerError", code: "UNAVAILABLE" });
      assert.ok(Date.now() - started < 1000);
      await assert.rejects(client.listVms(), { code: "UNAVAILABLE" });
    } finally {
      fake.getVmDelayMs = 0;
    }
  });

  test("server going away rejects pending calls with UNAVAILABLE", async () => {
    const path = join(dir, "short.sock");
    const slow = new FakeWorker();
    slow.getVmDelayMs = 10_000;
    const shortServer = await RpcServer.listen({ dispatcher: workerDispatcher(slow), logger, socketPath: path });
    const client = await connectWorker(path);
    await client.listVms();
    const pending = assert.rejects(client.getVm("x"), { code: "UNAVAILABLE" });
    await shortServer.close(50); // grace shorter than the call
    await pending;
  });

  test("closing the server lets running calls answer and refuses new ones", async () => {
    const path = join(dir, "graceful.sock");
    const slow = new FakeWorker();
    slow.vms = [sampleVm(1)];
    slow.getVmDelayMs = 200;
    const graceful = await startRpcServer({ api: slow, logger, socketPath: path });
    const client = await connectWorker(path);
    await client.listVms();
    const running = client.getVm("vm-000001");
    await new Promise((resolve) => setTimeout(resolve, 50));
    const closing = graceful.close();
    await assert.rejects(client.listVms(), { code: "UNAVAILABLE", message: "the worker is shutting down" });
    assert.equal((await running).id, "vm-000001");
    await closing;
    await assert.rejects(client.listVms(), { code: "UNAVAILABLE" });
  });

  test("results larger than the message limit become RESOURCE_EXHAUSTED", async () => {
    const path = join(dir, "small.sock");
    const small = await RpcServer.listen({
      dispatcher: workerDispatcher(fake),
      logger,
      socketPath: path,
      limits: { maxMessageBytes: 64 * 1024 },
    });
    const client = await connectWorker(path);
    try {
      await assert.rejects(client.listVms(), { code: "RESOURCE_EXHAUSTED" });
      assert.equal((await client.getVm("vm-000002")).id, "vm-000002");
    } finally {
      client.close();
      await small.close();
    }
  });

  test("a stale socket file is replaced; a live one is refused", async () => {
    const path = join(dir, "stale.sock");
    // A crashed owner: a child listens, then dies by SIGKILL and leaves its socket file behind.
    const owner = spawn(process.execPath, ["-e", `require("net").createServer().listen(${JSON.stringify(path)}, () => console.log("up"))`]);
    await new Promise((resolve) => owner.stdout.once("data", resolve));
    await assert.rejects(RpcServer.listen({ dispatcher: workerDispatcher(fake), logger, socketPath: path }), /already listening/);
    owner.kill("SIGKILL");
    await new Promise((resolve) => owner.once("exit", resolve));
    assert.ok(statSync(path).isSocket());
    const replacement = await RpcServer.listen({ dispatcher: workerDispatcher(fake), logger, socketPath: path });
    const client = await connectWorker(path);
    assert.equal((await client.listVms()).length, 2000);
    client.close();
    await replacement.close();
  });
});
