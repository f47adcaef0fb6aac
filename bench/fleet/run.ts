// Fleet bench (issue 22): a fleet on this machine (NATS, 3 worker hosts with fake VMMs in network
// namespaces, one pcr-gateway), measured in one process against its own baselines:
//   - the createVm call through the gateway against the same call straight at a worker (goal <= 1.2x)
//   - placements per second across the 3 hosts, through the gateway
//   - listVms of 3 x 300 VMs through the gateway (goal < 20 ms), beside one host's 300 straight
//   npx tsx bench/fleet/run.ts [--runs 30]     (or node dist/bench/fleet/run.js after npm run build)
import { parseArgs } from "node:util";
import { connectWorker } from "../../worker/rpc/worker-client.js";
import { startFleet } from "../../test/helpers/fleet.js";
import { testGuest } from "../../test/helpers/repo.js";
import { median } from "../stats.js";

const { values } = parseArgs({ options: { runs: { type: "string", default: "30" } } });
const runs = Number(values.runs);
const guest = testGuest();
if ("skip" in guest) {
  console.error(guest.skip);
  process.exit(1);
}
const spec = guest.input;
const PER_HOST = 300;
const ms = (value: number) => `${value.toFixed(1)} ms`;

const fleet = await startFleet();
try {
  for (const id of ["h1", "h2", "h3"]) {
    await fleet.addHost(id, [
      "--vmm",
      "fake",
      "--no-cage",
      "--no-network",
      "--max-vms",
      String(PER_HOST + 10),
      "--max-total-cpu",
      "100000",
    ]);
  }
  const gateway = await (await fleet.addGateway()).client();
  const direct = await connectWorker(fleet.hosts[0]!.worker.socket);

  // 1. The call itself, interleaved; both land on h1 (the gateway is told to place it there).
  const straight: number[] = [];
  const through: number[] = [];
  for (let run = 0; run < runs + 3; run++) {
    let started = performance.now();
    const a = await direct.createVm(spec);
    const straightMs = performance.now() - started;
    started = performance.now();
    const b = await gateway.createVm(spec, { placement: { host: "h1" } });
    const throughMs = performance.now() - started;
    if (run >= 3) {
      straight.push(straightMs);
      through.push(throughMs);
    }
    await direct.deleteVm(a);
    await gateway.deleteVm(b);
  }

  // 2. Placements per second: 3 x 300 creates through the gateway, 16 at a time.
  let next = 0;
  const total = 3 * PER_HOST;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < total) {
        next++;
        await gateway.createVm(spec);
      }
    }),
  );
  const placeSeconds = (performance.now() - started) / 1000;

  // 3. listVms of the whole fleet through the gateway, and of one host straight.
  const fleetList: number[] = [];
  const hostList: number[] = [];
  let listed = 0;
  for (let run = 0; run < runs; run++) {
    let t = performance.now();
    listed = (await gateway.listVms()).length;
    fleetList.push(performance.now() - t);
    t = performance.now();
    await direct.listVms();
    hostList.push(performance.now() - t);
  }
  const ratio = median(through) / median(straight);
  console.log(`fleet bench: 3 hosts (fake VMMs), 1 gateway, 1 NATS node; ${runs} runs each`);
  console.log("what | median | ratio / goal");
  console.log("--- | --- | ---");
  console.log(`createVm straight at a worker (baseline) | ${ms(median(straight))} | 1.00`);
  console.log(
    `createVm through the gateway | ${ms(median(through))} | ${ratio.toFixed(2)} (goal <= 1.2: ${ratio <= 1.2 ? "met" : "NOT met"})`,
  );
  console.log(
    `placements through the gateway, 16 at a time | ${(total / placeSeconds).toFixed(0)} per s | ` +
      `${total} VMs in ${placeSeconds.toFixed(1)} s`,
  );
  console.log(`listVms of one host's ${PER_HOST}, straight | ${ms(median(hostList))} | -`);
  const listMs = median(fleetList);
  console.log(`listVms of the fleet's ${listed}, through the gateway | ${ms(listMs)} | goal < 20 ms: ${listMs < 20 ? "met" : "NOT met"}`);
  direct.close();
} finally {
  await fleet.destroy();
}
