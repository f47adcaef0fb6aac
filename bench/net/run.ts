// Time to set up and tear down one VM's network (attach + detach) with 0 and with 100 VMs already
// present, inside a namespace this benchmark creates and removes. Goal: flat (ratio <= 1.5).
//   npx tsx bench/net/run.ts [--runs 25] [--background 100]
import { execa } from "execa";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import pino from "pino";
import { createNetwork } from "../../worker/net/network.js";
import type { NetworkPort } from "../../worker/ports/index.js";
import { attachDetachMedians } from "./measure.js";

const { values } = parseArgs({ options: { runs: { type: "string", default: "25" }, background: { type: "string", default: "100" } } });
const runs = Number(values.runs);
const background = Number(values.background);
// A name (answered at once by a stub, so DNS latency does not blur the figure) and a CIDR.
const ALLOWED = ["bench.test", "198.51.100.0/24"];

async function measure(network: NetworkPort, label: string) {
  return { label, ...(await attachDetachMedians(network, runs, (id) => network.attach(id, ALLOWED))) };
}

const ns = `pcr-b-${randomBytes(3).toString("hex")}`;
const dir = await mkdtemp(join(tmpdir(), "pcr-net-bench-"));
await execa("ip", ["netns", "add", ns]);
try {
  const network = createNetwork({
    bridge: "pcrbr0",
    subnet: "10.213.0.0/16",
    resolver: "192.0.2.53",
    statePath: join(dir, "leases.json"),
    netns: ns,
    logger: pino({ level: "warn" }),
    resolve: async () => [{ address: "192.0.2.10", ttl: 300 }],
  });
  await network.init([]);
  await measure(network, "warm-up");
  const empty = await measure(network, "0 VMs present");
  for (let index = 0; index < background; index++) await network.attach(`vm-bg${String(index).padStart(8, "0")}`, ALLOWED);
  const loaded = await measure(network, `${background} VMs present`);
  await network.close();

  const row = (cells: string[]) => console.log(cells.map((cell, index) => (index === 0 ? cell.padEnd(16) : cell.padStart(12))).join(""));
  console.log(`attach+detach of one VM, median of ${runs} runs, in namespace ${ns}`);
  row(["", "attach ms", "detach ms", "total ms"]);
  for (const result of [empty, loaded]) row([result.label, result.attach.toFixed(1), result.detach.toFixed(1), result.total.toFixed(1)]);
  row([
    "ratio",
    (loaded.attach / empty.attach).toFixed(2),
    (loaded.detach / empty.detach).toFixed(2),
    (loaded.total / empty.total).toFixed(2),
  ]);
} finally {
  await execa("ip", ["netns", "delete", ns], { reject: false });
  await rm(dir, { recursive: true, force: true });
}
