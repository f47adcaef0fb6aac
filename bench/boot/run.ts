// Boot overhead of the worker, measured in one run against its own baseline:
//   raw QEMU (same kernel, initrd, image, cmdline, machine options) spawn -> ready marker, against
//   createVm through a real worker (RPC, store check, TAP, nft, QEMU, QMP) -> ready marker via read,
// then deleteVm -> everything freed. Goals: overhead ratio <= 1.10; deleteVm median <= 100 ms.
//   npx tsx bench/boot/run.ts [--runs 5]     (or node dist/bench/boot/run.js after npm run build)
import { parseArgs } from "node:util";
import { connectWorker } from "../../worker/rpc/worker-client.js";
import { detectAccelerator } from "../../worker/vmm/accel.js";
import { testGuest } from "../../test/helpers/repo.js";
import { destroyWorker, startWorker } from "../../test/helpers/worker-process.js";
import { bootRawQemu } from "./raw-qemu.js";

const { values } = parseArgs({ options: { runs: { type: "string", default: "5" } } });
const runs = Number(values.runs);
const MARKER = "pcr-guest: ready";

const guest = testGuest();
if ("skip" in guest) {
  console.error(guest.skip);
  process.exit(1);
}
const { spec } = guest;

const median = (samples: number[]) => {
  const sorted = [...samples].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
};
const ms = (value: number) => `${value.toFixed(0)} ms`;

const { accel } = await detectAccelerator({ probeTimeoutMs: 5_000 });

// Interleaved, so that drift of the host (page cache, other load) hits both sides alike.
const raw: number[] = [];
const created: number[] = [];
const deleted: number[] = [];
const returned: number[] = [];
const worker = await startWorker({ extraArgs: process.env.PCR_BENCH_NO_NET ? ["--no-network"] : [] });
const client = await connectWorker(worker.socket);
try {
  for (let run = 0; run < runs; run++) {
    raw.push((await bootRawQemu({ ...spec, accel, readyMarker: MARKER })).msToReady);

    const start = performance.now();
    const id = await client.createVm({ ...spec, memoryBytes: BigInt(spec.memoryBytes) }, {});
    returned.push(performance.now() - start);
    // Polling `read` the way a client would; 50 ms apart, so the poller itself barely competes
    // with the guest's vCPU for the two cores.
    let console = "";
    let offset = 0n;
    while (!console.includes(MARKER)) {
      const chunk = await client.read(id, offset, 65536);
      offset = chunk.nextOffset;
      console = (console + Buffer.from(chunk.data).toString()).slice(-4096);
      if (console.includes(MARKER)) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
      if (performance.now() - start > 90_000) throw new Error(`no ready marker from ${id}`);
    }
    created.push(performance.now() - start);

    const deleteStart = performance.now();
    await client.deleteVm(id);
    deleted.push(performance.now() - deleteStart);
  }
} finally {
  if (process.env.PCR_BENCH_LOGS) console.error(worker.logs().split("\n").filter((l) => /vm running|vmm stopped|"call"/.test(l)).join("\n"));
  client.close();
  await destroyWorker(worker);
}

const rows = [
  ["raw QEMU spawn -> ready (baseline)", ms(median(raw)), "1.00"],
  ["worker createVm -> ready", ms(median(created)), (median(created) / median(raw)).toFixed(2)],
  ["worker createVm call returns (VMM running)", ms(median(returned)), "-"],
  ["worker deleteVm -> all freed", ms(median(deleted)), "-"],
];
console.log(`boot benchmark: ${runs} runs each, accelerator ${accel}, kernel ${spec.kernel.split("/").pop()}`);
console.log(["what", "median", "ratio"].join(" | "));
console.log("--- | --- | ---");
for (const row of rows) console.log(row.join(" | "));
console.log(`raw samples:    ${raw.map(ms).join(", ")}`);
console.log(`create samples: ${created.map(ms).join(", ")}`);
console.log(`delete samples: ${deleted.map(ms).join(", ")}`);
console.log(`goals: ratio <= 1.10 (${median(created) / median(raw) <= 1.1 ? "met" : "NOT met"}); delete <= 100 ms (${median(deleted) <= 100 ? "met" : "NOT met"})`);
