// Our RPC layer against the reference C++ implementation (capnp EzRpc), in both directions.
import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import pino from "pino";
import type { VmView } from "../../worker/core/api.js";
import { VM_ORIGINS, VM_STATUSES } from "../../worker/core/api.js";
import { WorkerError } from "../../worker/core/errors.js";
import { RpcServer } from "../../worker/rpc/server.js";
import { type WorkerClient, connectWorker } from "../../worker/rpc/worker-client.js";
import { workerDispatcher } from "../../worker/rpc/worker-service.js";
import { FakeWorker, sampleVm } from "../rpc/fake-worker.js";
import { type CppPrograms, buildCppPrograms, cppToolchainMissing } from "./cpp-build.js";

const run = promisify(execFile);
const missing = await cppToolchainMissing();
const skip = missing ? `C++ toolchain unavailable: ${missing}` : false;

/** The same text the C++ client prints per VM (see cpp/sample.h describeVm). */
function describeVm(vm: VmView): string {
  const c = vm.counters;
  const counters = [
    c.blockReadBytes,
    c.blockWriteBytes,
    c.blockReadOps,
    c.blockWriteOps,
    c.netRxBytes,
    c.netTxBytes,
    c.netRxPackets,
    c.netTxPackets,
  ];
  return [
    vm.id,
    vm.hostname,
    VM_STATUSES.indexOf(vm.status),
    vm.failure,
    vm.ip,
    vm.mac,
    vm.cpu,
    vm.memoryBytes,
    vm.specHash,
    vm.createdAtMs,
    vm.uptimeMs,
    counters.join(","),
    vm.egressDrops,
    vm.backend,
    (vm.faults ?? []).map((f) => `${f.id},${f.kind},${f.description},${f.injectedAtMs},${f.expiresAtMs};`).join(""),
    vm.agentState,
    vm.agentReadyMs,
    vm.group,
    VM_ORIGINS.indexOf(vm.origin ?? "boot"),
    vm.host,
    vm.idempotencyKey,
  ].join("|");
}

const expectedSpec = {
  hostname: "web-1",
  kernel: "/nix/store/aaa-kernel/bzImage",
  initrd: "/nix/store/bbb-initrd/initrd",
  image: "/nix/store/ccc-image/root.img",
  cmdline: "console=ttyS0 quiet",
  cpu: 3,
  memoryBytes: 5n * 1024n ** 3n,
  allowedDomains: ["example.com", "*.nixos.org", "1.1.1.1", "10.0.0.0/8", "ünïcödé.example"],
  group: "web",
};

describe("interop with the C++ reference implementation", { skip, timeout: 600_000 }, () => {
  let programs: CppPrograms;
  let dir: string;

  before(async () => {
    programs = await buildCppPrograms();
    dir = mkdtempSync(join(tmpdir(), "pcr-interop-"));
  });

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  describe("C++ client -> our server", () => {
    let server: RpcServer;
    let fake: FakeWorker;
    let address: string;
    const cpp = async (...args: string[]) => (await run(programs.client, [address, ...args], { timeout: 60_000 })).stdout;

    before(async () => {
      fake = new FakeWorker();
      fake.vms = Array.from({ length: 2000 }, (_, i) => sampleVm(i));
      const socketPath = join(dir, "ours.sock");
      server = await RpcServer.listen({ dispatcher: workerDispatcher(fake), logger: pino({ level: "silent" }), socketPath });
      address = `unix:${socketPath}`;
    });

    after(() => server.close());

    test("createVm with every field set arrives intact", async () => {
      const out = await cpp("create-all");
      assert.equal(out, `id vm-created-1\n`);
      const record = fake.created[0]!;
      assert.deepEqual(record.spec, expectedSpec);
      assert.deepEqual(record.options.secrets, [
        { name: "token", value: new Uint8Array([0, 1, 2, 255]) },
        { name: "empty", value: new Uint8Array(0) },
      ]);
      assert.equal(record.options.ttlSeconds, 3600);
      assert.equal(record.options.idempotencyKey, "create-web-1");
      assert.deepEqual(record.options.placement, { host: "h1", labels: { zone: "eu-1", "example.com/gpu": "a100" } });
    });

    test("listVms returns 2,000 entries, field by field", async () => {
      const indices = [0, 1, 5, 777, 1999];
      const lines = (await cpp("list", ...indices.map(String))).trimEnd().split("\n");
      assert.equal(lines[0], "count 2000");
      assert.deepEqual(
        lines.slice(1),
        indices.map((i) => describeVm(fake.vms[i]!)),
      );
    });

    test("deleteVm of an unknown id: the C++ side gets the exception text", async () => {
      const out = await cpp("delete", "no-such-vm");
      assert.match(out, /^exception type=0 .*NOT_FOUND: no vm no-such-vm\n$/);
    });

    test("a method we lack gets `unimplemented` and the next call on that connection works", async () => {
      const out = await cpp("unimplemented");
      assert.match(out, /^exception type=3 unimplemented=1 /m);
      assert.match(out, /^next call ok, 2000 vms$/m);
    });

    test("exec: the command arrives field by field, the result comes back field by field", async () => {
      const out = await cpp("exec");
      assert.deepEqual(fake.execs.at(-1), {
        id: "vm-000001",
        request: {
          argv: ["/bin/sh", "-c", "echo \u00e9", "--big"],
          env: ["A=1", "B=two words"],
          cwd: "/tmp",
          stdin: new Uint8Array([0, 1, 2, 255, 10]),
          timeoutMs: 1,
        },
      });
      assert.equal(out, "exit 4 signal 0 timedOut 1 stdout 0,1,2,255,10 stderr /tmp|A=1,B=two words truncated 1,0 duration 8589934592\n");
    });

    test("files: each call arrives field by field, each answer comes back field by field", async () => {
      const out = await cpp("files");
      const calls = fake.guestCalls.slice(-4);
      assert.deepEqual(calls[0], {
        method: "writeFile",
        args: ["vm-000001", { path: "/a/\u00e9", offset: 2 ** 40, data: new Uint8Array([0, 255, 1, 10]), mode: 0o750, truncate: true }],
      });
      assert.deepEqual(calls[1], { method: "readFile", args: ["vm-000001", "/etc/x", 12345, 7] });
      assert.deepEqual(calls[2], { method: "statFile", args: ["vm-000001", "/s"] });
      assert.deepEqual(calls[3], { method: "listDir", args: ["vm-000001", "/d", 3] });
      assert.equal(
        out,
        "written 1099511627780\nread /etc/x size 12352 eof 1\nstat /s type 2 size 1099511627776 mode 4755 mtime -5\n" +
          "list truncated 1 /d-0:0:0 /d-1:1:1 /d-2:0:2\n",
      );
    });

    test("processes: each call arrives field by field, each answer comes back field by field", async () => {
      const out = await cpp("processes");
      const calls = fake.guestCalls.slice(-6);
      assert.deepEqual(calls[0], {
        method: "startProcess",
        args: ["vm-000001", { argv: ["/bin/sh", "-i"], env: ["TERM=xterm"], cwd: "/root", tty: { rows: 40, cols: 132 } }],
      });
      assert.deepEqual(calls[1], { method: "readProcess", args: ["vm-000001", 77, "stderr", 2 ** 35, 4096, 0] });
      assert.deepEqual(calls[2], { method: "writeProcess", args: ["vm-000001", 77, new Uint8Array([4, 3, 2]), true] });
      assert.deepEqual(calls[3], { method: "signalProcess", args: ["vm-000001", 77, 15] });
      assert.deepEqual(calls[4], { method: "waitProcess", args: ["vm-000001", 77, 1009] });
      assert.deepEqual(calls[5], { method: "resizeProcess", args: ["vm-000001", 77, 50, 200] });
      assert.equal(out, `pid 1002\noutput stderr ${2 ** 35 + 1}..${2 ** 35 + 7} eof 1\nstatus pid 77 running 1 exit -1 signal 49\ndone\n`);
    });

    test("in-guest faults: every new Fault member arrives field by field; inject, then clear", async () => {
      const before = fake.injected.length;
      const out = await cpp("guest-faults");
      assert.deepEqual(fake.injected.slice(before), [
        { id: "vm-000001", fault: { kind: "killProcess", durationMs: 0, pid: 0, name: "sl\u00e9ep", signal: 15 } },
        { id: "vm-000001", fault: { kind: "freezeProcess", durationMs: 1000, pid: 4194304, name: "" } },
        { id: "vm-000001", fault: { kind: "clockShift", durationMs: 2000, deltaMs: -3_600_000 } },
        { id: "vm-000001", fault: { kind: "clockStrobe", durationMs: 3000, deltaMs: 2 ** 40, periodMs: 250 } },
        { id: "vm-000001", fault: { kind: "fillDisk", durationMs: 4000, dir: "/var/lib/data" } },
      ]);
      const ids = Array.from({ length: 5 }, (_, i) => `fault-${before + i + 1}`);
      assert.match(out, new RegExp(`^injected ${ids.join(" ")}\ncleared ${ids[3]}\nexception .*NOT_FOUND: no fault fault-none\n$`));
    });

    test("200 calls in flight", async () => {
      fake.getVmDelayMs = 20; // keeps all 200 running on our side at once
      try {
        assert.equal(await cpp("inflight", "200"), "inflight ok 200\n");
      } finally {
        fake.getVmDelayMs = 0;
      }
    });
  });

  describe("our client -> C++ server", () => {
    let child: ChildProcess;
    let client: WorkerClient;

    before(async () => {
      const socketPath = join(dir, "cpp.sock");
      child = spawn(programs.server, [`unix:${socketPath}`, "2000"], { stdio: ["ignore", "pipe", "inherit"] });
      await new Promise<void>((resolve, reject) => {
        child.once("error", reject);
        child.once("exit", (code) => reject(new Error(`C++ server exited with ${code}`)));
        child.stdout!.once("data", () => resolve());
      });
      client = await connectWorker(socketPath);
    });

    after(() => {
      client?.close();
      child?.kill("SIGKILL");
    });

    test("listVms", async () => {
      const vms = await client.listVms();
      assert.equal(vms.length, 2000);
      assert.deepEqual(
        vms,
        Array.from({ length: 2000 }, (_, i) => sampleVm(i)),
      );
    });

    test("getVm and read, events", async () => {
      assert.deepEqual(await client.getVm("vm-000001"), sampleVm(1));
      const chunk = await client.read("vm-7", 100n, 4096);
      assert.equal(Buffer.from(chunk.data).toString(), "console of vm-7");
      assert.equal(chunk.nextOffset, 115n);
      const events = await client.events(41n, 10, 0);
      assert.deepEqual(events, {
        events: [{ seq: 41n, vmId: "vm-1", status: "running", atMs: 1_700_000_000_123n, reason: "started" }],
        nextSeq: 42n,
      });
    });

    test("createVm: every field reaches C++", async () => {
      const id = await client.createVm(expectedSpec, {
        secrets: [
          { name: "token", value: new Uint8Array([0, 1, 2, 255]) },
          { name: "empty", value: new Uint8Array(0) },
        ],
        ttlSeconds: 3600,
        idempotencyKey: "create-web-1",
        placement: { host: "h1", labels: { zone: "eu-1", "example.com/gpu": "a100" } },
      });
      assert.equal(
        id,
        "web-1|/nix/store/aaa-kernel/bzImage|/nix/store/bbb-initrd/initrd|/nix/store/ccc-image/root.img|console=ttyS0 quiet|3|5368709120|" +
          "example.com,*.nixos.org,1.1.1.1,10.0.0.0/8,ünïcödé.example,|web|token=0.1.2.255.;empty=;|3600|create-web-1|h1|" +
          "zone=eu-1,example.com/gpu=a100,",
      );
    });

    test("deleteVm exception round-trip", async () => {
      await assert.rejects(client.deleteVm("gone"), (err: unknown) => {
        assert.ok(err instanceof WorkerError);
        assert.equal(err.code, "NOT_FOUND");
        assert.equal(err.message, "no vm gone");
        return true;
      });
      await assert.rejects(client.getVm("missing"), { code: "NOT_FOUND" });
      assert.equal((await client.getVm("vm-000009")).id, "vm-000009");
    });

    test("200 calls in flight", async () => {
      const ids = Array.from({ length: 200 }, (_, i) => `vm-${i}`);
      const vms = await Promise.all(ids.map((id) => client.getVm(id)));
      assert.deepEqual(
        vms.map((vm) => vm.id),
        ids,
      );
    });
  });
});
