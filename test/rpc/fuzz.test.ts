// Fuzzing a live server in a child process: thousands of mutated valid frames and random byte
// streams. The server must not exit, must keep serving a healthy client, and its RSS must stay bounded.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import { bootstrapMessage, callMessage, finishMessage, releaseMessage, startMessage, MessageTag } from "../../worker/rpc/protocol.js";
import { Size, WORKER_INTERFACE_ID, WorkerMethod, writeSecrets, writeVmSpec } from "../../worker/rpc/worker-codec.js";
import { connectWorker } from "../../worker/rpc/worker-client.js";

const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 1_000_000);
const CONNECTIONS = 4000;
const MAX_FRAMES_PER_CONNECTION = 12;
const PARALLEL = 8;

/** mulberry32: small, seedable, good enough for fuzzing. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = prng(SEED);
const int = (n: number) => Math.floor(random() * n);

const target = { kind: "answer", questionId: 0 } as const;
function corpus(): Buffer[] {
  const spec = { hostname: "h", kernel: "/nix/store/k", initrd: "/nix/store/i", image: "/nix/store/r", cmdline: "c", cpu: 1, memoryBytes: 1n << 28n, allowedDomains: ["a.com", "*.b.org"] };
  const id = (text: string) => (b: Parameters<NonNullable<Parameters<typeof callMessage>[4]>>[0], at: number) => b.setText(b.initStruct(at, 0, 1), text);
  const provide = startMessage(MessageTag.Provide, 1, 2);
  return [
    bootstrapMessage(0),
    callMessage(1, target, WORKER_INTERFACE_ID, WorkerMethod.listVms, undefined),
    callMessage(2, { kind: "import", id: 0 }, WORKER_INTERFACE_ID, WorkerMethod.getVm, id("vm-000001")),
    callMessage(3, target, WORKER_INTERFACE_ID, WorkerMethod.deleteVm, id("nope")),
    callMessage(4, target, WORKER_INTERFACE_ID, WorkerMethod.read, (b, at) => {
      const s = b.initStruct(at, Size.ReadParams[0], Size.ReadParams[1]);
      b.setText(s + 16, "vm-1");
      b.setU32(s + 8, 100);
    }),
    callMessage(5, target, WORKER_INTERFACE_ID, WorkerMethod.createVm, (b, at) => {
      const s = b.initStruct(at, Size.CreateVmParams[0], Size.CreateVmParams[1]);
      writeVmSpec(b, s + 8, spec);
      writeSecrets(b, s + 16, [{ name: "k", value: new Uint8Array([1, 2, 3]) }]);
      b.setU32(s, 60);
    }),
    callMessage(6, target, WORKER_INTERFACE_ID, WorkerMethod.events, (b, at) => {
      const s = b.initStruct(at, 2, 0);
      b.setU32(s + 8, 5);
    }),
    finishMessage(1, true),
    releaseMessage(0, 1),
    provide.b.finish(),
  ];
}

const INTERESTING = [0, 1, 2, 3, 7, 0x7f, 0x80, 0xff];
const INTERESTING32 = [0, 1, 0xffffffff, 0x7fffffff, 0x80000000, 0xfffffffc, (2 ** 29 - 1) * 8 + 7, 0xffff0000, 0x10000];

function mutate(frame: Buffer): Buffer {
  const out = Buffer.from(frame);
  const mutations = 1 + int(4);
  let result = out;
  for (let m = 0; m < mutations; m++) {
    switch (int(6)) {
      case 0: // bit flip
        result[int(result.length)]! ^= 1 << int(8);
        break;
      case 1: // interesting byte
        result[int(result.length)] = INTERESTING[int(INTERESTING.length)]!;
        break;
      case 2: // interesting 32-bit word at a word-aligned spot (pointer halves)
        if (result.length >= 8) result.writeUInt32LE(INTERESTING32[int(INTERESTING32.length)]! >>> 0, 4 * int(Math.floor(result.length / 4)));
        break;
      case 3: // truncate (the rest of the stream then misframes)
        result = result.subarray(0, int(result.length));
        break;
      case 4: // random word
        if (result.length >= 8) {
          const at = 8 * int(Math.floor(result.length / 8));
          result.writeUInt32LE(int(2 ** 32), at);
          result.writeUInt32LE(int(2 ** 32), at + 4);
        }
        break;
      default: // insert random bytes
        result = Buffer.concat([result.subarray(0, int(result.length)), randomBytes(1 + int(16)), result.subarray(int(result.length))]);
    }
  }
  return result;
}

function randomBytes(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = int(256);
  return b;
}

function rss(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(match![1]) * 1024;
}

let dir: string;
let socketPath: string;
let child: ChildProcess;
let exited: string | undefined;
/** Error-level log lines of the server: a non-malformed-input failure inside the RPC layer is a bug. */
const serverErrors: string[] = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "pcr-fuzz-"));
  socketPath = join(dir, "worker.sock");
  const here = fileURLToPath(import.meta.url);
  const script = join(here, "..", here.endsWith(".ts") ? "serve-fake.ts" : "serve-fake.js");
  const execArgv = process.execArgv.filter((arg) => !arg.startsWith("--test"));
  child = spawn(process.execPath, [...execArgv, script, socketPath, "100"], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, LOG_LEVEL: "error" },
  });
  child.once("exit", (code, signal) => (exited = `server exited: code ${code} signal ${signal}`));
  await new Promise<void>((resolve, reject) => {
    let ready = false;
    let pending = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      pending += chunk.toString();
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) {
        if (line === "ready" && !ready) {
          ready = true;
          resolve();
        } else if (line.includes('"level":50') || line.includes('"level":60')) serverErrors.push(line);
      }
    });
    child.once("exit", () => reject(new Error(exited)));
  });
});

after(() => {
  child?.kill("SIGKILL");
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function healthy(): Promise<void> {
  const client = await connectWorker(socketPath);
  try {
    const vms = await client.listVms();
    assert.ok(vms.length > 0);
    await assert.rejects(client.getVm("missing"), { code: "NOT_FOUND" });
  } finally {
    client.close();
  }
}

/** One hostile connection: a bootstrap, then mutated frames or noise; waits until the server reacts. */
function hostileConnection(frames: Buffer[]): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath);
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve();
    };
    const timer = setTimeout(done, 300);
    socket.on("error", done);
    socket.on("close", done);
    socket.on("data", () => undefined);
    socket.on("connect", () => {
      socket.write(Buffer.concat(frames));
      socket.end();
    });
  });
}

test(`fuzzing a server in a child process (seed ${SEED})`, { timeout: 120_000 }, async () => {
  const valid = corpus();
  await healthy();
  const baseline = rss(child.pid!);
  let sent = 0;
  const started = Date.now();
  for (let batch = 0; batch < CONNECTIONS / PARALLEL; batch++) {
    await Promise.all(
      Array.from({ length: PARALLEL }, (_, i) => {
        if ((batch + i) % 5 === 0) {
          sent++;
          return hostileConnection([randomBytes(1 + int(4096))]);
        }
        const frames = [valid[0]!];
        const count = 1 + int(MAX_FRAMES_PER_CONNECTION);
        for (let f = 0; f < count; f++) {
          const frame = valid[int(valid.length)]!;
          frames.push(random() < 0.85 ? mutate(frame) : frame);
        }
        sent += frames.length;
        return hostileConnection(frames);
      }),
    );
    assert.equal(exited, undefined);
    if (batch % 15 === 0) await healthy();
  }
  await healthy();
  const grown = rss(child.pid!) - baseline;
  console.log(`fuzz: ${sent} frames/streams in ${Date.now() - started} ms, rss +${(grown / 1e6).toFixed(1)} MB (seed ${SEED})`);
  assert.equal(exited, undefined);
  assert.deepEqual(serverErrors.slice(0, 5), []);
  assert.ok(grown < 100 * 1024 * 1024, `rss grew by ${grown} bytes`);
});
