// Warm pools, measured in one run against a cold boot of the same spec:
//   createVm -> agent ready (createVm with waitReady): booted, claimed from a hot pool (paused in
//     memory), and restored from the pool's snapshot on disk at the claim;
//   claims per second from a full pool of 4, one after another;
//   host memory of 8 pooled VMs paused in memory (their QEMUs' RSS) against 8 on disk (none: one
//     snapshot file serves every claim; its size is shown).
// Goal on this TCG host: claim -> agent ready <= 0.1x the cold boot.
//   node dist/bench/pool/run.js [--runs 5]      (needs root: a network namespace per worker)
import { execa } from "execa";
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { TEST_GUEST_SPEC, testGuest } from "../../test/helpers/repo.js";
import { waitFor } from "../../test/helpers/vm.js";
import { destroyWorker, startWorker, type WorkerProcess } from "../../test/helpers/worker-process.js";
import { connectWorker, type WorkerClient } from "../../worker/rpc/worker-client.js";
import { median } from "../stats.js";

const { values } = parseArgs({ options: { runs: { type: "string", default: "5" } } });
const runs = Number(values.runs);
const MIB = 1024 * 1024;
const guest = testGuest();
if ("skip" in guest) {
  console.error(guest.skip);
  process.exit(1);
}
const { input } = guest;
const ms = (value: number) => `${value.toFixed(0)} ms`;

/** A worker with these pools, its client, and a look at its /metrics. */
async function withWorker<T>(pools: string[], body: (worker: WorkerProcess, client: WorkerClient) => Promise<T>): Promise<T> {
  const port = 9500 + Math.floor(Math.random() * 400);
  const worker = await startWorker({ extraArgs: [...pools.flatMap((pool) => ["--pool", pool]), "--http-listen", `127.0.0.1:${port}`] });
  const client = await connectWorker(worker.socket);
  (worker as WorkerProcess & { port: number }).port = port;
  try {
    return await body(worker, client);
  } finally {
    client.close();
    await destroyWorker(worker);
  }
}

async function gauge(worker: WorkerProcess, name: string): Promise<number> {
  const port = (worker as WorkerProcess & { port: number }).port;
  const text = (await execa("ip", ["netns", "exec", worker.netns, "curl", "-s", `http://127.0.0.1:${port}/metrics`], { reject: false }))
    .stdout;
  return Number(new RegExp(`^${name}\\{pool="spec"\\} (\\d+)`, "m").exec(text)?.[1] ?? -1);
}

const full = (worker: WorkerProcess, ready: number, snapshot: boolean) =>
  waitFor("the pool to fill", 180_000, async () => {
    const okReady = (await gauge(worker, "pcr_pool_ready_vms")) === ready;
    const okSnapshot = !snapshot || (await gauge(worker, "pcr_pool_snapshot_ready")) === 1;
    return okReady && okSnapshot ? true : undefined;
  });

/** createVm with waitReady, timed; the VM is deleted after. */
async function timedCreate(client: WorkerClient, hostname: string): Promise<{ ms: number; origin: string }> {
  const started = performance.now();
  const id = await client.createVm({ ...input, hostname }, { waitReadyMs: 120_000 });
  const took = performance.now() - started;
  const origin = (await client.getVm(id)).origin ?? "boot";
  await client.deleteVm(id);
  return { ms: took, origin };
}

async function qemuRss(stateDir: string): Promise<number> {
  const pids = (await execa("pgrep", ["-f", `qemu-system.*${stateDir}`], { reject: false })).stdout.split("\n").filter(Boolean);
  let total = 0;
  for (const pid of pids) {
    const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
    total += Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) * 1024;
  }
  return total;
}

const spec = (hot: number, disk: boolean) => `${TEST_GUEST_SPEC}:${hot}${disk ? "+disk" : ""}`;

// Cold boots: a worker without pools.
const cold = await withWorker([], async (_worker, client) => {
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) samples.push((await timedCreate(client, `cold-${i}`)).ms);
  return samples;
});

// Hot claims, each from a full pool; then claims per second from a full pool of 4.
const { hot, perSecond } = await withWorker([spec(4, false)], async (worker, client) => {
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) {
    await full(worker, 4, false);
    const claim = await timedCreate(client, `hot-${i}`);
    if (claim.origin !== "pool") throw new Error(`claim ${i} came from ${claim.origin}`);
    samples.push(claim.ms);
  }
  await full(worker, 4, false);
  const started = performance.now();
  const ids: string[] = [];
  for (let i = 0; i < 4; i++) ids.push(await client.createVm({ ...input, hostname: `burst-${i}` }, { waitReadyMs: 120_000 }));
  const perSecond = 4 / ((performance.now() - started) / 1000);
  for (const id of ids) await client.deleteVm(id);
  return { hot: samples, perSecond };
});

// Claims restored from disk: a pool with no hot VMs, only its snapshot.
const { disk, snapshotBytes } = await withWorker([spec(0, true)], async (worker, client) => {
  await full(worker, 0, true);
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) {
    const claim = await timedCreate(client, `disk-${i}`);
    if (claim.origin !== "snapshot") throw new Error(`claim ${i} came from ${claim.origin}`);
    samples.push(claim.ms);
  }
  return { disk: samples, snapshotBytes: await gauge(worker, "pcr_pool_snapshot_bytes") };
});

// Memory: 8 paused in memory against 8 on disk.
const rssHot = await withWorker([spec(8, true)], async (worker) => {
  await full(worker, 8, true);
  await new Promise((resolve) => setTimeout(resolve, 1000));
  return qemuRss(worker.stateDir);
});
const rssDisk = await withWorker([spec(0, true)], async (worker) => {
  await full(worker, 0, true);
  return qemuRss(worker.stateDir);
});

const base = median(cold);
console.log(`pool benchmark: ${runs} runs each; the test guest (${Number(input.memoryBytes) / MIB} MiB, ${input.cpu} vCPU)`);
console.log(["what", "figure", "baseline", "ratio"].join(" | "));
console.log("--- | --- | --- | ---");
console.log(["create -> agent ready, booted", ms(base), ms(base), "1.00x"].join(" | "));
console.log(["create -> agent ready, hot pool", ms(median(hot)), ms(base), `${(median(hot) / base).toFixed(3)}x`].join(" | "));
console.log(["create -> agent ready, from disk", ms(median(disk)), ms(base), `${(median(disk) / base).toFixed(3)}x`].join(" | "));
console.log(
  [
    "claims per second, pool of 4",
    perSecond.toFixed(1),
    `${(1000 / base).toFixed(2)} boots/s`,
    `${(perSecond / (1000 / base)).toFixed(1)}x`,
  ].join(" | "),
);
console.log(
  ["host RSS, 8 pooled VMs", `${(rssHot / MIB).toFixed(0)} MiB in memory`, `${(rssDisk / MIB).toFixed(0)} MiB on disk`, "-"].join(" | "),
);
console.log(`snapshot on disk: ${(snapshotBytes / MIB).toFixed(1)} MiB (one file for every claim from disk)`);
console.log(`cold samples: ${cold.map(ms).join(", ")}`);
console.log(`hot samples:  ${hot.map(ms).join(", ")}`);
console.log(`disk samples: ${disk.map(ms).join(", ")}`);
