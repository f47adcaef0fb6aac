// CLI start-up: wall time of `pcr-worker-test` processes (the package's bin, dist/cli/pcr-worker-test.cjs
// as `npm run build` leaves it) against a bare `node -e 0` spawned by the same loop, and the ratio.
// Every command runs, against a fake worker (test/rpc/serve-fake) on a unix socket, so what is
// left beyond Node's own start-up is the CLI's: loading, parsing, connecting, one call.
// Runs are interleaved (one of each per round) so that a shared machine's noise hits every row.
// Goal: every command <= 1.5x bare Node. One row, not held to it, runs `node dist/cli/main.js`
// (the ES module path kept for scripts that name it).
//   npm run build && node dist/bench/cli/run.js [--runs 21] [--vms 10]
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const { values } = parseArgs({ options: { runs: { type: "string", default: "21" }, vms: { type: "string", default: "10" } } });
const RUNS = Number(values.runs);
const VMS = Number(values.vms);
const GOAL = 1.5;

// Run from bench/cli/run.ts (tsx) or dist/bench/cli/run.js: the CLI measured is always the built one.
const here = fileURLToPath(import.meta.url);
const dist = here.endsWith(".ts") ? join(here, "..", "..", "..", "dist") : join(here, "..", "..", "..");
const cli = join(dist, "cli", "pcr-worker-test.cjs");

const dir = mkdtempSync(join(tmpdir(), "pcr-cli-bench-"));
const socket = join(dir, "worker.sock");
const server = spawn(process.execPath, [join(dist, "test", "rpc", "serve-fake.js"), socket, String(VMS)], {
  stdio: ["ignore", "pipe", "inherit"],
});
await new Promise<void>((resolve, reject) => {
  server.once("exit", (code) => reject(new Error(`serve-fake exited with ${code}`)));
  server.stdout!.once("data", () => resolve());
});

const kernel = "/nix/store/00000000000000000000000000000000-kernel";
const spec = JSON.stringify({ hostname: "bench", kernel, image: "", cpu: 1, memoryBytes: 268435456, allowedDomains: [] });
const worker = ["--worker", socket];
const vm = "vm-000001";
const cases: Array<{ label: string; args: string[]; goal?: boolean; exit?: number }> = [
  { label: "node -e 0 (baseline)", args: ["-e", "0"] },
  { label: "--help", args: [cli, "--help"], goal: true },
  { label: "create-vm --help", args: [cli, "create-vm", "--help"], goal: true },
  { label: "(usage error: no command)", args: [cli], goal: true, exit: 2 },
  { label: `list-vms (${VMS} VMs)`, args: [cli, ...worker, "list-vms"], goal: true },
  { label: "list-vms --json", args: [cli, ...worker, "list-vms", "--json"], goal: true },
  { label: "get-vm", args: [cli, ...worker, "get-vm", vm], goal: true },
  { label: "get-vm (NOT_FOUND)", args: [cli, ...worker, "get-vm", "vm-none"], goal: true, exit: 1 },
  { label: "create-vm --spec-json", args: [cli, ...worker, "create-vm", "--spec-json", spec], goal: true },
  {
    label: "create-vm --kernel …",
    args: [cli, ...worker, "create-vm", "--kernel", kernel, "--memory", "512M", "--allow", "a.example"],
    goal: true,
  },
  // The fake worker's console never ends (every read returns bytes), so logs meets an unknown VM.
  { label: "logs (NOT_FOUND)", args: [cli, ...worker, "logs", "none"], goal: true, exit: 1 },
  { label: "events", args: [cli, ...worker, "events"], goal: true },
  { label: "inject-fault --kind loss", args: [cli, ...worker, "inject-fault", vm, "--kind", "loss", "--percent", "10"], goal: true },
  { label: "list-faults", args: [cli, ...worker, "list-faults", vm], goal: true },
  { label: "clear-fault", args: [cli, ...worker, "clear-fault", vm, "fault-1"], goal: true },
  { label: "delete-vm (NOT_FOUND)", args: [cli, ...worker, "delete-vm", "vm-none"], goal: true, exit: 1 },
  { label: "node dist/cli/main.js list-vms", args: [join(dist, "cli", "main.js"), ...worker, "list-vms"] },
];

function once({ args, exit = 0 }: { args: string[]; exit?: number }): number {
  const start = performance.now();
  const result = spawnSync(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"], timeout: 10_000 });
  const elapsed = performance.now() - start;
  if (result.status !== exit) throw new Error(`node ${args.join(" ")} exited with ${result.status}: ${result.stderr}`);
  return elapsed;
}

const samples = cases.map(() => [] as number[]);
try {
  for (const c of cases) once(c); // warm the page cache
  for (let round = 0; round < RUNS; round++) {
    for (const [index, c] of cases.entries()) samples[index]!.push(once(c));
  }
} finally {
  server.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
}

const median = (list: number[]) => {
  const sorted = [...list].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
};
const medians = samples.map(median);
const baseline = medians[0]!;
const minima = samples.map((list) => Math.min(...list));
console.log(`CLI start-up, wall ms of ${RUNS} interleaved runs (node ${process.version}); the goal is on the median ratio,`);
console.log("the minimum shows the cost without the noise of a shared machine");
const row = (cells: string[]) => console.log(`| ${cells.join(" | ")} |`);
const ratio = (value: number, base: number) => `${(value / base).toFixed(2)}x`.padStart(6);
row(["pcr-worker-test …".padEnd(38), "median ms", " ratio", "min ms", " ratio"]);
for (const [index, c] of cases.entries()) {
  const [med, min] = [medians[index]!, minima[index]!];
  row([c.label.padEnd(38), med.toFixed(1).padStart(9), ratio(med, baseline), min.toFixed(1).padStart(6), ratio(min, minima[0]!)]);
}
const held = cases.flatMap((c, index) => (c.goal ? [{ label: c.label, ratio: medians[index]! / baseline }] : []));
const slowest = held.reduce((worst, row) => (row.ratio > worst.ratio ? row : worst));
const missed = held.filter((row) => row.ratio > GOAL);
console.log(
  missed.length === 0
    ? `MET  every command <= ${GOAL}x bare node (slowest: ${slowest.label}, ${slowest.ratio.toFixed(2)}x)`
    : `MISS ${missed.map((row) => `${row.label} (${row.ratio.toFixed(2)}x)`).join(", ")} > ${GOAL}x bare node`,
);
