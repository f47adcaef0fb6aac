// Fleet bench (issue 22): a fleet on this machine (NATS, 3 worker hosts with fake VMMs in network
// namespaces, one pcr-gateway), measured in one process against its own baselines:
//   - the createVm call through the gateway against the same call straight at a worker (goal <= 1.2x)
//   - placements per second across the 3 hosts, through the gateway
//   - listVms of 3 x 300 VMs through the gateway (goal < 20 ms), beside one host's 300 straight
//   npx tsx bench/fleet/run.ts [--runs 30]     (or node dist/bench/fleet/run.js after npm run build)
import { parseArgs } from "node:util";
import { connect } from "@nats-io/transport-node";
import { hostCallSubject, natsWorkerCaller } from "../../worker/fleet/nats-rpc.js";
import { WorkerClient, connectWorker } from "../../worker/rpc/worker-client.js";
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

// Heartbeats at the worker's default, as in production (the tests beat faster).
const fleet = await startFleet({ heartbeatMs: 2000 });
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
      "--max-total-memory-bytes",
      String(2 ** 40),
    ]);
  }
  const gateway = await (await fleet.addGateway()).client();
  const direct = await connectWorker(fleet.hosts[0]!.worker.socket);

  // 1. The call itself, interleaved, all on h1: straight at its socket (the baseline), straight at
  // it over NATS (the transport alone), through the gateway (told to place on h1), and the same
  // with an idempotency key (its intent written to KV first).
  const nc = await connect({ servers: fleet.nats.urls });
  const overNats = new WorkerClient(natsWorkerCaller(nc, hostCallSubject("h1"), { timeoutMs: 30_000 }));
  const samples = { straight: [] as number[], nats: [] as number[], through: [] as number[], keyed: [] as number[] };
  const timed = async (into: number[], run: number, create: () => Promise<string>) => {
    const started = performance.now();
    const id = await create();
    if (run >= 3) into.push(performance.now() - started);
    return id;
  };
  const kinds: [number[], (run: number) => Promise<string>][] = [
    [samples.straight, () => direct.createVm(spec)],
    [samples.nats, () => overNats.createVm(spec)],
    [samples.through, () => gateway.createVm(spec, { placement: { host: "h1" } })],
    [samples.keyed, (run) => gateway.createVm(spec, { placement: { host: "h1" }, idempotencyKey: `bench-${run}` })],
  ];
  for (let run = 0; run < runs + 3; run++) {
    // Each kind takes each place in the order in turn: none always follows the deletes.
    const ids: string[] = [];
    for (let i = 0; i < kinds.length; i++) {
      const [into, create] = kinds[(run + i) % kinds.length]!;
      ids.push(await timed(into, run, () => create(run)));
    }
    for (const id of ids) await direct.deleteVm(id);
  }
  await nc.close();

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
  const base = median(samples.straight);
  const row = (what: string, values: number[], goal?: number) => {
    const ratio = median(values) / base;
    const verdict = goal === undefined ? "" : ` (goal <= ${goal}: ${ratio <= goal ? "met" : "NOT met"})`;
    console.log(`${what} | ${ms(median(values))} | ${ratio.toFixed(2)}${verdict}`);
  };
  console.log(`fleet bench: 3 hosts (fake VMMs), 1 gateway, 1 NATS node; ${runs} runs each`);
  console.log("what | median | ratio / goal");
  console.log("--- | --- | ---");
  row("createVm straight at a worker's socket (baseline)", samples.straight);
  row("createVm straight at the worker over NATS (the transport alone)", samples.nats);
  row("createVm through the gateway", samples.through, 1.2);
  row("createVm through the gateway, with an idempotency key (its intent in KV)", samples.keyed, 1.2);
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
