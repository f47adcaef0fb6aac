// Boot overhead of the worker, measured in one run against its own baselines:
//   raw QEMU spawn -> ready marker, with the same kernel, initrd, image, cmdline and machine
//   options as the worker's VMs, once without a NIC and once with the same virtio-net NIC and
//   guest network parameters (the guest-side cost of networking is the VM's, not the worker's);
//   against createVm through a real worker (RPC, store check, TAP, nft, QEMU, QMP) -> ready marker
//   via read; then deleteVm -> everything freed; and the same createVm through a worker with
//   --no-cage (its VMMs uncaged). Goals: overhead ratio <= 1.10 against the same devices;
//   deleteVm median <= 100 ms; the cage adds <= 5% to createVm -> ready and <= 20 ms to the
//   createVm call. Runs are interleaved so host drift hits all sides alike.
//   npx tsx bench/boot/run.ts [--runs 9]     (or node dist/bench/boot/run.js after npm run build)
import { parseArgs } from "node:util";
import { createNetns, deleteNetns } from "../../test/helpers/netns.js";
import { connectWorker } from "../../worker/rpc/worker-client.js";
import { detectAccelerator } from "../../worker/vmm/accel.js";
import { testGuest } from "../../test/helpers/repo.js";
import { destroyWorker, startWorker } from "../../test/helpers/worker-process.js";
import { bootRawQemu } from "./raw-qemu.js";
import { median } from "../stats.js";

const { values } = parseArgs({ options: { runs: { type: "string", default: "9" } } });
const runs = Number(values.runs);
const MARKER = "pcr-guest: ready";

const guest = testGuest();
if ("skip" in guest) {
  console.error(guest.skip);
  process.exit(1);
}
const { spec, input } = guest;

const ms = (value: number) => `${value.toFixed(0)} ms`;

const { accel } = await detectAccelerator({ probeTimeoutMs: 5_000 });

// Interleaved, so that drift of the host (page cache, other load) hits both sides alike.
const raw: number[] = [];
const rawNet: number[] = [];
// The NIC baseline's TAP lives in a namespace of its own; the guest's packets go nowhere else.
const rawNetns = await createNetns();
const rawNetOptions = {
  ...spec,
  cmdline: `${spec.cmdline} pcr.hostname=${spec.hostname} pcr.ip=10.213.0.2/16 pcr.gw=10.213.0.1 pcr.dns=10.213.0.1`,
  net: { tap: "pcrraw0", mac: "52:54:00:00:00:02" },
  wrapper: ["ip", "netns", "exec", rawNetns],
};
const created: number[] = [];
const deleted: number[] = [];
const returned: number[] = [];
const uncagedCreated: number[] = [];
const uncagedReturned: number[] = [];
const uncagedDeleted: number[] = [];
const worker = await startWorker();
const client = await connectWorker(worker.socket);
const uncagedWorker = await startWorker({ extraArgs: ["--no-cage"] });
const uncagedClient = await connectWorker(uncagedWorker.socket);

/** createVm -> the ready marker read back, then deleteVm; the three times. */
async function createToReady(c: typeof client): Promise<{ returned: number; ready: number; deleted: number }> {
  const start = performance.now();
  const id = await c.createVm(input, {});
  const returnedMs = performance.now() - start;
  // Polling `read` the way a client would; 50 ms apart, so the poller itself barely competes
  // with the guest's vCPU for the two cores.
  let console = "";
  let offset = 0n;
  while (!console.includes(MARKER)) {
    const chunk = await c.read(id, offset, 65536);
    offset = chunk.nextOffset;
    console = (console + Buffer.from(chunk.data).toString()).slice(-4096);
    if (console.includes(MARKER)) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
    if (performance.now() - start > 90_000) throw new Error(`no ready marker from ${id}`);
  }
  const ready = performance.now() - start;
  const deleteStart = performance.now();
  await c.deleteVm(id);
  return { returned: returnedMs, ready, deleted: performance.now() - deleteStart };
}

try {
  for (let run = 0; run < runs; run++) {
    raw.push((await bootRawQemu({ ...spec, accel, readyMarker: MARKER })).msToReady);
    rawNet.push((await bootRawQemu({ ...rawNetOptions, accel, readyMarker: MARKER })).msToReady);
    const caged = await createToReady(client);
    returned.push(caged.returned);
    created.push(caged.ready);
    deleted.push(caged.deleted);
    const uncaged = await createToReady(uncagedClient);
    uncagedReturned.push(uncaged.returned);
    uncagedCreated.push(uncaged.ready);
    uncagedDeleted.push(uncaged.deleted);
  }
} finally {
  client.close();
  uncagedClient.close();
  await destroyWorker(worker);
  await destroyWorker(uncagedWorker);
  await deleteNetns(rawNetns);
}

const ratio = median(created) / median(rawNet);
const cageRatio = median(created) / median(uncagedCreated);
const cageCallMs = median(returned) - median(uncagedReturned);
const signedMs = (value: number) => `${value >= 0 ? "+" : ""}${value.toFixed(0)} ms`;
const rows = [
  ["raw QEMU, no NIC: spawn -> ready", ms(median(raw)), (median(raw) / median(rawNet)).toFixed(2)],
  ["raw QEMU, same NIC: spawn -> ready (baseline)", ms(median(rawNet)), "1.00"],
  ["worker createVm -> ready (caged VMM, the default)", ms(median(created)), ratio.toFixed(2)],
  ["worker createVm -> ready, --no-cage", ms(median(uncagedCreated)), (median(uncagedCreated) / median(rawNet)).toFixed(2)],
  ["caged against --no-cage: createVm -> ready", `${signedMs(median(created) - median(uncagedCreated))}`, cageRatio.toFixed(3)],
  ["worker createVm call returns (VMM running), caged", ms(median(returned)), "-"],
  ["worker createVm call returns, --no-cage", ms(median(uncagedReturned)), "-"],
  ["worker deleteVm -> all freed, caged", ms(median(deleted)), "-"],
  ["worker deleteVm -> all freed, --no-cage", ms(median(uncagedDeleted)), "-"],
];
console.log(`boot benchmark: ${runs} runs each, accelerator ${accel}, kernel ${spec.kernel.split("/").pop()}`);
console.log(["what", "median", "ratio"].join(" | "));
console.log("--- | --- | ---");
for (const row of rows) console.log(row.join(" | "));
console.log(`raw samples:    ${raw.map(ms).join(", ")}`);
console.log(`raw+NIC samples: ${rawNet.map(ms).join(", ")}`);
console.log(`create samples: ${created.map(ms).join(", ")}`);
console.log(`delete samples: ${deleted.map(ms).join(", ")}`);
console.log(`--no-cage samples: ${uncagedCreated.map(ms).join(", ")}`);
console.log(`call samples, caged: ${returned.map(ms).join(", ")}; --no-cage: ${uncagedReturned.map(ms).join(", ")}`);
// Where a create's call time goes, step by step (the workers' "vm running" lines), caged against not.
const stepMedians = (logs: string): Map<string, number> => {
  const samples = new Map<string, number[]>();
  for (const line of logs.split("\n")) {
    if (!line.includes('"vm running"')) continue;
    const stepMs = (JSON.parse(line) as { stepMs?: Record<string, number> }).stepMs ?? {};
    for (const [step, value] of Object.entries(stepMs)) samples.set(step, [...(samples.get(step) ?? []), value]);
  }
  return new Map([...samples].map(([step, values]) => [step, median(values)]));
};
const cagedSteps = stepMedians(worker.logs());
const uncagedSteps = stepMedians(uncagedWorker.logs());
console.log("\ncreate step | caged | --no-cage | difference");
console.log("--- | --- | --- | ---");
for (const step of new Set([...cagedSteps.keys(), ...uncagedSteps.keys()])) {
  const [a, b] = [cagedSteps.get(step) ?? 0, uncagedSteps.get(step) ?? 0];
  console.log(`${step} | ${ms(a)} | ${ms(b)} | ${signedMs(a - b)}`);
}
console.log(
  `goals: ratio <= 1.10 (${ratio <= 1.1 ? "met" : "NOT met"}); delete <= 100 ms (${median(deleted) <= 100 ? "met" : "NOT met"}); ` +
    `cage <= 5% on ready (${cageRatio <= 1.05 ? "met" : "NOT met"}); cage <= 20 ms on the call (${signedMs(cageCallMs)}: ` +
    `${cageCallMs <= 20 ? "met" : "NOT met"})`,
);
