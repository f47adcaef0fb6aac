// CLI start-up: wall time of `pcr-worker-test` processes (dist/cli/main.js, the package's bin, as
// `npm run build` leaves it) against a bare `node -e 0` spawned by the same loop, and the ratio.
// The commands run against a fake worker (test/rpc/serve-fake) on a unix socket, so what is left
// beyond Node's own start-up is the CLI's: loading, parsing, connecting, one call.
// Runs are interleaved (one of each per round) so that a shared machine's noise hits every row.
// Goal: --help and list-vms <= 1.5x bare Node.
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
const cli = join(dist, "cli", "main.js");

const dir = mkdtempSync(join(tmpdir(), "pcr-cli-bench-"));
const socket = join(dir, "worker.sock");
const server = spawn(process.execPath, [join(dist, "test", "rpc", "serve-fake.js"), socket, String(VMS)], { stdio: ["ignore", "pipe", "inherit"] });
await new Promise<void>((resolve, reject) => {
  server.once("exit", (code) => reject(new Error(`serve-fake exited with ${code}`)));
  server.stdout!.once("data", () => resolve());
});

const spec = JSON.stringify({ hostname: "bench", kernel: "/nix/store/00000000000000000000000000000000-kernel", image: "", cpu: 1, memoryBytes: 268435456, allowedDomains: [] });
const cases: Array<{ label: string; args: string[]; goal?: boolean }> = [
  { label: "node -e 0 (baseline)", args: ["-e", "0"] },
  { label: "pcr-worker-test --help", args: [cli, "--help"], goal: true },
  { label: `pcr-worker-test list-vms (${VMS} VMs)`, args: [cli, "--worker", socket, "list-vms"], goal: true },
  { label: "pcr-worker-test list-vms --json", args: [cli, "--worker", socket, "list-vms", "--json"] },
  { label: "pcr-worker-test create-vm --spec-json", args: [cli, "--worker", socket, "create-vm", "--spec-json", spec] },
];

function once(args: string[]): number {
  const start = performance.now();
  const result = spawnSync(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"] });
  const elapsed = performance.now() - start;
  if (result.status !== 0) throw new Error(`node ${args.join(" ")} exited with ${result.status}: ${result.stderr}`);
  return elapsed;
}

const samples = cases.map(() => [] as number[]);
try {
  for (const c of cases) once(c.args); // warm the page cache
  for (let round = 0; round < RUNS; round++) cases.forEach((c, index) => samples[index]!.push(once(c.args)));
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
console.log(`CLI start-up, median wall ms of ${RUNS} interleaved runs (node ${process.version})`);
console.log(`| ${"".padEnd(38)} | ${"median ms".padStart(9)} | ${"ratio".padStart(6)} |`);
cases.forEach((c, index) => console.log(`| ${c.label.padEnd(38)} | ${medians[index]!.toFixed(1).padStart(9)} | ${(medians[index]! / baseline).toFixed(2).padStart(5)}x |`));
for (const [index, c] of cases.entries()) {
  if (!c.goal) continue;
  const ratio = medians[index]! / baseline;
  console.log(`${ratio <= GOAL ? "MET " : "MISS"} ${c.label} <= ${GOAL}x bare node (${ratio.toFixed(2)}x)`);
}
