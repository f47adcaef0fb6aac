// The etcd example's client, run inside the worker's network namespace (`ip netns exec <ns> node
// driver.js <endpoints JSON>`), where guests' ports are reachable; the example's own process is
// not in that namespace and cannot switch. It talks to etcd's v3 JSON gateway and prints one JSON
// line per event on stdout:
//   {type:"status", node, atMs, memberId, leader, revision, raftTerm}  every STATUS_EVERY_MS, per node
//   {type:"op", node, op:"write"|"read", key, value, startMs, endMs, outcome, error}  while the workload runs
//   {type:"readback", node, entries:{key: value}} | {type:"readback", node, error}
//   {type:"stopped", atMs}  once the workload stopped and no operation is in flight
// Commands on stdin, one a line: "start", "stop" (the workload), "readback <node>" (every key the
// workload wrote, read through that node); stdin closing ends it all. No dependencies but Node's.
import { createInterface } from "node:readline";

export interface Endpoint {
  name: string;
  url: string;
}

export type OpOutcome = "ok" | "fail" | "unknown";

export interface OpLine {
  type: "op";
  node: string;
  op: "write" | "read";
  key: string;
  value: string;
  startMs: number;
  endMs: number;
  outcome: OpOutcome;
  error?: string;
}

export interface StatusLine {
  type: "status";
  node: string;
  atMs: number;
  memberId?: string;
  /** The member id this node follows; "0" when it knows of no leader. */
  leader?: string;
  revision?: number;
  raftTerm?: number;
  error?: string;
}

export interface ReadbackLine {
  type: "readback";
  node: string;
  entries?: Record<string, string>;
  error?: string;
}

/** After "stop": no operation is in flight any more. */
export interface StoppedLine {
  type: "stopped";
  atMs: number;
}

export type DriverLine = OpLine | StatusLine | ReadbackLine | StoppedLine;

/** Every key the workload writes starts with this; a range up to KEY_PREFIX_END reads them all. */
export const KEY_PREFIX = "k/";
const KEY_PREFIX_END = "k0";
/** An op without an answer by then is "unknown": a write may or may not have happened. */
export const OP_TIMEOUT_MS = 2500;
const STATUS_TIMEOUT_MS = 1000;
const STATUS_EVERY_MS = 250;
/** Between one client's operations: keeps three TCG guests on two cores from saturating. */
const OP_PAUSE_MS = 100;

const b64 = (text: string) => Buffer.from(text).toString("base64");
const unb64 = (text: string | undefined) => Buffer.from(text ?? "", "base64").toString("utf8");
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const print = (line: DriverLine) => process.stdout.write(`${JSON.stringify(line)}\n`);

class Timeout extends Error {}

/** POSTs to the gateway; an explicit error (HTTP status or an error body) throws Error, no answer in time throws Timeout. */
async function call(url: string, body: unknown, timeoutMs: number): Promise<Record<string, unknown>> {
  let response: Response;
  let text: string;
  try {
    response = await fetch(url, { method: "POST", body: JSON.stringify(body), signal: AbortSignal.timeout(timeoutMs) });
    text = await response.text();
  } catch (err) {
    if ((err as Error).name === "TimeoutError" || (err as Error).name === "AbortError") throw new Timeout("timed out");
    throw new Error(((err as Error).cause as Error | undefined)?.message ?? (err as Error).message);
  }
  const answer = (text ? JSON.parse(text) : {}) as Record<string, unknown>;
  if (!response.ok || answer.error) throw new Error(String(answer.error ?? answer.message ?? `HTTP ${response.status}`));
  return answer;
}

async function status(endpoint: Endpoint): Promise<StatusLine> {
  const atMs = Date.now();
  try {
    const answer = await call(`${endpoint.url}/v3/maintenance/status`, {}, STATUS_TIMEOUT_MS);
    const header = (answer.header ?? {}) as Record<string, string>;
    return {
      type: "status",
      node: endpoint.name,
      atMs,
      memberId: header.member_id,
      leader: String(answer.leader ?? "0"),
      revision: Number(header.revision ?? 0),
      raftTerm: Number(header.raft_term ?? 0),
    };
  } catch (err) {
    return { type: "status", node: endpoint.name, atMs, error: (err as Error).message };
  }
}

/** One operation, timed and classified. */
async function operation(endpoint: Endpoint, op: "write" | "read", key: string, value: string): Promise<OpLine> {
  const startMs = Date.now();
  const line = (outcome: OpOutcome, error?: string): OpLine => ({
    type: "op",
    node: endpoint.name,
    op,
    key,
    value,
    startMs,
    endMs: Date.now(),
    outcome,
    ...(error ? { error } : {}),
  });
  try {
    if (op === "write") {
      await call(`${endpoint.url}/v3/kv/put`, { key: b64(key), value: b64(value) }, OP_TIMEOUT_MS);
      return line("ok");
    }
    const answer = await call(`${endpoint.url}/v3/kv/range`, { key: b64(key) }, OP_TIMEOUT_MS);
    const kvs = (answer.kvs ?? []) as { value?: string }[];
    return { ...line("ok"), value: unb64(kvs[0]?.value) };
  } catch (err) {
    return line(err instanceof Timeout ? "unknown" : "fail", (err as Error).message);
  }
}

async function readback(endpoint: Endpoint): Promise<ReadbackLine> {
  try {
    const answer = await call(`${endpoint.url}/v3/kv/range`, { key: b64(KEY_PREFIX), range_end: b64(KEY_PREFIX_END) }, 15_000);
    const kvs = (answer.kvs ?? []) as { key: string; value?: string }[];
    return { type: "readback", node: endpoint.name, entries: Object.fromEntries(kvs.map((kv) => [unb64(kv.key), unb64(kv.value)])) };
  } catch (err) {
    return { type: "readback", node: endpoint.name, error: (err as Error).message };
  }
}

async function main(): Promise<void> {
  const endpoints = JSON.parse(process.argv[2] ?? "[]") as Endpoint[];
  let running = true;
  let workload = false;
  let sequence = 0;
  let inFlight = 0;
  // Reads ask for the last key a node's client wrote, so they usually find something.
  const lastKey = new Map<string, string>();
  const loops: Promise<void>[] = [];

  for (const endpoint of endpoints) {
    loops.push(
      (async () => {
        while (running) {
          const started = Date.now();
          print(await status(endpoint));
          await sleep(Math.max(0, STATUS_EVERY_MS - (Date.now() - started)));
        }
      })(),
    );
    loops.push(
      (async () => {
        let write = true;
        while (running) {
          if (!workload) {
            await sleep(50);
            continue;
          }
          inFlight++;
          if (write) {
            const n = ++sequence;
            const key = `${KEY_PREFIX}${endpoint.name}/${String(n).padStart(6, "0")}`;
            print(await operation(endpoint, "write", key, `v${n}-${process.pid}`));
            lastKey.set(endpoint.name, key);
          } else {
            print(await operation(endpoint, "read", lastKey.get(endpoint.name) ?? `${KEY_PREFIX}none`, ""));
          }
          inFlight--;
          write = !write;
          await sleep(OP_PAUSE_MS);
        }
      })(),
    );
  }

  const commands = createInterface({ input: process.stdin });
  for await (const command of commands) {
    const [verb, argument] = command.trim().split(/\s+/);
    if (verb === "start") workload = true;
    else if (verb === "stop") {
      workload = false;
      while (inFlight > 0) await sleep(20);
      print({ type: "stopped", atMs: Date.now() });
    } else if (verb === "readback") {
      const endpoint = endpoints.find((e) => e.name === argument);
      print(endpoint ? await readback(endpoint) : { type: "readback", node: argument ?? "", error: "no such node" });
    }
  }
  running = false;
  await Promise.all(loops);
}

// Only as a program: the example imports the types and constants above.
if (process.argv[1]?.endsWith("driver.js")) {
  main().catch((err) => {
    console.error(`driver: ${(err as Error).stack}`);
    process.exit(1);
  });
}
