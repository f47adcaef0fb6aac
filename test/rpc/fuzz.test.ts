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
import { connectWorker } from "../../worker/rpc/worker-client.js";
import { frameCorpus, frameMutator, prng } from "./frame-fuzz.js";

const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 1_000_000);
const CONNECTIONS = 4000;
const MAX_FRAMES_PER_CONNECTION = 12;
const PARALLEL = 8;

const random = prng(SEED);
const mutate = frameMutator(random);
const int = (n: number) => Math.floor(random() * n);

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
  const valid = frameCorpus();
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
