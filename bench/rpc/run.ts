// RPC benchmark: the reference C++ client against our server and against the C++ server, in one
// run, plus listVms(1000) latency.
// Usage: npx tsx bench/rpc/run.ts [--rounds 3] [--sequential 20000] [--calls 200000] [--depth 200] [--list-iterations 500]
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { buildCppPrograms } from "../../test/interop/cpp-build.js";

const run = promisify(execFile);
const args = process.argv.slice(2);
const option = (name: string, fallback: number) => {
  const at = args.indexOf(`--${name}`);
  return at >= 0 ? Number(args[at + 1]) : fallback;
};
const SEQUENTIAL = option("sequential", 20_000);
const IN_FLIGHT_CALLS = option("calls", 200_000);
const DEPTH = option("depth", 200);
const LIST_ITERATIONS = option("list-iterations", 500);
const LIST_SIZE = 1000;

async function startServer(command: string, argv: string[]): Promise<ChildProcess> {
  const child = spawn(command, argv, { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise<void>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`${command} exited with ${code}`)));
    child.stdout!.once("data", () => resolve());
  });
  return child;
}

async function stop(child: ChildProcess): Promise<void> {
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGKILL");
  await exited;
}

function parse(out: string): Record<string, number> {
  return Object.fromEntries(
    out
      .trim()
      .split("\n")
      .map((line) => {
        const [key, value] = line.split(" ");
        return [key!, Number(value)];
      }),
  );
}

const programs = await buildCppPrograms();
const dir = mkdtempSync(join(tmpdir(), "pcr-bench-"));
const here = fileURLToPath(import.meta.url);
const serveFake = join(here, "..", "..", "..", "test", "rpc", here.endsWith(".ts") ? "serve-fake.ts" : "serve-fake.js");

const servers = {
  ours: (socket: string) => startServer(process.execPath, [...process.execArgv, serveFake, socket, String(LIST_SIZE)]),
  "C++": (socket: string) => startServer(programs.server, [`unix:${socket}`, String(LIST_SIZE)]),
};

// Rounds alternate between the servers and each figure is the median over rounds: the machine
// may be shared, and alternating spreads any noise over both sides.
const ROUNDS = option("rounds", 3);
const samples: Record<string, Array<Record<string, number>>> = { ours: [], "C++": [] };
try {
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, start] of Object.entries(servers)) {
      const socket = join(dir, `${name === "ours" ? "ours" : "cpp"}-${round}.sock`); // SIGKILL leaves the file behind
      const server = await start(socket);
      try {
        const address = `unix:${socket}`;
        const calls = parse(
          (await run(programs.client, [address, "bench", String(SEQUENTIAL), String(IN_FLIGHT_CALLS), String(DEPTH)])).stdout,
        );
        const list = parse((await run(programs.client, [address, "bench-list", String(LIST_ITERATIONS)])).stdout);
        samples[name]!.push({ ...calls, listMedian: list.median!, listP99: list.p99!, listCount: list.count! });
      } finally {
        await stop(server);
      }
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const summarize = (runs: Array<Record<string, number>>) =>
  Object.fromEntries(Object.keys(runs[0]!).map((key) => [key, median(runs.map((r) => r[key]!))]));
const ours = summarize(samples.ours!);
const cpp = summarize(samples["C++"]!);
for (const [name, runs] of Object.entries(samples)) {
  console.log(`${name.padEnd(4)} in-flight calls/s per round: ${runs.map((r) => r.inflight!.toFixed(0)).join(", ")}`);
}
const row = (label: string, a: number, b: number, unit: string, digits = 0) =>
  `| ${label.padEnd(34)} | ${a.toFixed(digits).padStart(10)} | ${b.toFixed(digits).padStart(10)} | ` +
  `${(a / b).toFixed(2).padStart(5)}x | ${unit}`;
console.log(`\nC++ client (capnp ${(await run("capnp", ["--version"])).stdout.trim()}), getVm calls, unix socket`);
console.log(`| ${"".padEnd(34)} | ${"ours".padStart(10)} | ${"C++".padStart(10)} | ratio  |`);
console.log(row("sequential calls/s", ours.sequential!, cpp.sequential!, ""));
console.log(row(`${DEPTH} in flight calls/s`, ours.inflight!, cpp.inflight!, ""));
console.log(row(`listVms(${ours.listCount}) median ms`, ours.listMedian!, cpp.listMedian!, "", 3));
console.log(row(`listVms(${ours.listCount}) p99 ms`, ours.listP99!, cpp.listP99!, "", 3));
const goals = [
  [`our in-flight throughput >= 0.5x C++`, ours.inflight! >= 0.5 * cpp.inflight!],
  [`our listVms(1000) median < 5 ms`, ours.listMedian! < 5],
] as const;
for (const [goal, met] of goals) console.log(`${met ? "MET " : "MISS"} ${goal}`);
