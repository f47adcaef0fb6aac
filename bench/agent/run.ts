// The guest agent, measured in one run against its own baselines:
//   exec round trip of `true` through the worker (RPC -> agent -> fork/exec -> answer), p50 and
//     p99, beside getVm (the RPC round trip alone);
//   file transfer through the agent (writeFile/readFile in 1 MiB calls, as `cp` does) both ways
//     against as many bytes over the VM's own TAP (busybox nc in the guest reading or writing the
//     same file, a socket on the host);
//   create -> agent ready through the worker (createVm with waitReady) against raw QEMU with the
//     same kernel, initrd, image, NIC and agent port, spawn -> the agent's first console line.
// Goals on this TCG host: exec p50 <= 20 ms; transfer >= 0.5x the TAP's; create -> ready <= 1.10x raw.
//   node dist/bench/agent/run.js [--runs 5] [--execs 200] [--mib 64]     (needs root: netns, TAP)
import { execa } from "execa";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { createNetns, deleteNetns } from "../../test/helpers/netns.js";
import { testGuest } from "../../test/helpers/repo.js";
import { destroyWorker, startWorker } from "../../test/helpers/worker-process.js";
import { connectWorker, type WorkerClient } from "../../worker/rpc/worker-client.js";
import { detectAccelerator } from "../../worker/vmm/accel.js";
import { download, upload } from "../../cli/copy.js";
import { bootRawQemu } from "../boot/raw-qemu.js";

const { values } = parseArgs({
  options: { runs: { type: "string", default: "5" }, execs: { type: "string", default: "200" }, mib: { type: "string", default: "64" } },
});
const runs = Number(values.runs);
const execs = Number(values.execs);
const MIB = 1024 * 1024;
const bytes = Number(values.mib) * MIB;
const AGENT_LINE = "pcr-agent 0.1.0: channel open";

const guest = testGuest();
if ("skip" in guest) {
  console.error(guest.skip);
  process.exit(1);
}
const { spec, input } = guest;

const quantile = (samples: number[], q: number) => {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
};
const median = (samples: number[]) => quantile(samples, 0.5);
const ms = (value: number) => `${value.toFixed(1)} ms`;
const rate = (seconds: number) => `${(bytes / MIB / seconds).toFixed(1)} MiB/s`;

/** A socket on the host side of the VM's TAP: runs in the worker's namespace, prints seconds taken. */
async function tapPeer(netns: string, script: string, env: Record<string, string>): Promise<number> {
  const result = await execa("ip", ["netns", "exec", netns, process.execPath, "--input-type=module", "-e", script], { env });
  return Number(result.stdout.trim());
}
const SEND = `import { connect } from "node:net";
const socket = connect(7000, process.env.IP, () => {
  const started = performance.now();
  const chunk = Buffer.alloc(1 << 20, 7);
  let left = Number(process.env.BYTES);
  const pump = () => {
    while (left > 0) {
      left -= chunk.length;
      if (!socket.write(chunk)) return socket.once("drain", pump);
    }
    socket.end();
  };
  socket.on("close", () => console.log((performance.now() - started) / 1000));
  pump();
});`;
const RECEIVE = `import { connect } from "node:net";
let got = 0;
const started = performance.now();
const socket = connect(7001, process.env.IP);
socket.on("data", (d) => {
  got += d.length;
  if (got < Number(process.env.BYTES)) return;
  console.log((performance.now() - started) / 1000);
  process.exit(0);
});`;

async function measureTransfer(client: WorkerClient, id: string, ip: string, netns: string) {
  const data = randomBytes(bytes);
  const env = { IP: ip, BYTES: String(bytes) };
  // Through the agent, as `pcr-worker-test cp` moves files (cli/copy.ts).
  const local = join(scratch, "blob");
  await writeFile(local, data);
  let start = performance.now();
  await upload(client, local, { id, path: "/root/blob" });
  const agentIn = (performance.now() - start) / 1000;
  start = performance.now();
  await download(client, { id, path: "/root/blob" }, `${local}.back`);
  const agentOut = (performance.now() - start) / 1000;
  if (!(await readFile(`${local}.back`)).equals(data)) throw new Error("the bytes read back differ");
  // Over the TAP: busybox nc in the guest, the same byte count.
  // The same work at the guest's end as the agent's: the bytes land in a file of its root.
  const sink = await client.startProcess(id, { argv: ["/bin/sh", "-c", "nc -l -p 7000 >/root/blob.tap"] });
  await new Promise((resolve) => setTimeout(resolve, 300));
  const tapIn = await tapPeer(netns, SEND, env);
  await client.waitProcess(id, sink, 30_000);
  const source = await client.startProcess(id, { argv: ["/bin/sh", "-c", "nc -l -p 7001 </root/blob"] });
  await new Promise((resolve) => setTimeout(resolve, 300));
  const tapOut = await tapPeer(netns, RECEIVE, env);
  await client.signalProcess(id, source, 9).catch(() => undefined);
  await client.exec(id, { argv: ["/bin/rm", "-f", "/root/blob", "/root/blob.tap"] });
  return { agentIn, agentOut, tapIn, tapOut };
}

const { accel } = await detectAccelerator({ probeTimeoutMs: 5_000 });
const scratch = await mkdtemp(join(tmpdir(), "pcr-bench-agent-"));
const rawNetns = await createNetns();
const rawOptions = {
  ...spec,
  cmdline: `${spec.cmdline} pcr.hostname=${spec.hostname} pcr.ip=10.213.0.2/16 pcr.gw=10.213.0.1 pcr.dns=10.213.0.1`,
  net: { tap: "pcrraw0", mac: "52:54:00:00:00:02" },
  wrapper: ["ip", "netns", "exec", rawNetns],
  agentSocket: join(scratch, "raw-agent.sock"),
};
const worker = await startWorker();
const client = await connectWorker(worker.socket);
const raw: number[] = [];
const ready: number[] = [];
const execSamples: number[] = [];
const getVmSamples: number[] = [];
let transfer: Awaited<ReturnType<typeof measureTransfer>> | undefined;
try {
  // Interleaved, so that drift of the host hits both sides alike.
  for (let run = 0; run < runs; run++) {
    raw.push((await bootRawQemu({ ...rawOptions, accel, readyMarker: AGENT_LINE, memoryBytes: 512 * MIB })).msToReady);
    const start = performance.now();
    const id = await client.createVm({ ...input, memoryBytes: BigInt(512 * MIB) }, { waitReadyMs: 90_000 });
    ready.push(performance.now() - start);
    if (run === 0) {
      for (let i = 0; i < 10; i++) await client.exec(id, { argv: ["/bin/true"] }); // warm
      for (let i = 0; i < execs; i++) {
        let t = performance.now();
        await client.getVm(id);
        getVmSamples.push(performance.now() - t);
        t = performance.now();
        const result = await client.exec(id, { argv: ["/bin/true"] });
        execSamples.push(performance.now() - t);
        if (result.exitCode !== 0) throw new Error(`true exited ${result.exitCode}`);
      }
      transfer = await measureTransfer(client, id, (await client.getVm(id)).ip, worker.netns);
    }
    await client.deleteVm(id);
  }
} finally {
  client.close();
  await destroyWorker(worker);
  await deleteNetns(rawNetns);
  await rm(scratch, { recursive: true, force: true });
}

const t = transfer!;
const readyRatio = median(ready) / median(raw);
const inRatio = t.tapIn / t.agentIn;
const outRatio = t.tapOut / t.agentOut;
console.log(`agent benchmark: accelerator ${accel}; ${execs} execs; ${bytes / MIB} MiB each way; ${runs} boots each side, interleaved`);
console.log(["what", "figure", "baseline", "ratio"].join(" | "));
console.log("--- | --- | --- | ---");
console.log(["exec `true` p50", ms(median(execSamples)), `getVm ${ms(median(getVmSamples))}`, "-"].join(" | "));
console.log(["exec `true` p99", ms(quantile(execSamples, 0.99)), `getVm ${ms(quantile(getVmSamples, 0.99))}`, "-"].join(" | "));
console.log(["into the guest (writeFile)", rate(t.agentIn), `TAP ${rate(t.tapIn)}`, `${inRatio.toFixed(2)}x`].join(" | "));
console.log(["out of the guest (readFile)", rate(t.agentOut), `TAP ${rate(t.tapOut)}`, `${outRatio.toFixed(2)}x`].join(" | "));
console.log(["create -> agent ready", ms(median(ready)), `raw QEMU ${ms(median(raw))}`, readyRatio.toFixed(2)].join(" | "));
console.log(`raw samples:   ${raw.map(ms).join(", ")}`);
console.log(`ready samples: ${ready.map(ms).join(", ")}`);
const met = (ok: boolean) => (ok ? "met" : "NOT met");
console.log(
  `goals: exec p50 <= 20 ms (${met(median(execSamples) <= 20)}); transfer >= 0.5x TAP ` +
    `(${met(inRatio >= 0.5 && outRatio >= 0.5)}); create -> ready <= 1.10x raw (${met(readyRatio <= 1.1)})`,
);
