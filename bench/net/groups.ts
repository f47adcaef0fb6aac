// Groups stay flat: a member's network setup + teardown on an empty host vs with 30 VMs in 10
// groups present (joining one of them), and the time to apply (and clear) a 3-way partition of a
// 3-member group: three partition faults, one per member, each naming the other two. Inside a
// namespace this benchmark creates and removes. Goals: ratio <= 1.5; partition < 50 ms.
//   npx tsx bench/net/groups.ts [--runs 25]
import { execa } from "execa";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import pino from "pino";
import { createNetFaults } from "../../worker/faults/net-faults.js";
import { createNetwork } from "../../worker/net/network.js";
import type { NetworkPort, VmNetwork } from "../../worker/ports/index.js";
import { median } from "../stats.js";
import { attachDetachMedians } from "./measure.js";

const { values } = parseArgs({ options: { runs: { type: "string", default: "25" } } });
const runs = Number(values.runs);
const GROUPS = 10;
const PER_GROUP = 3;

const joinAndLeave = (network: NetworkPort, group: string) =>
  attachDetachMedians(network, runs, (id) => network.attach(id, [], { group, hostname: "joiner" }));

const ns = `pcr-b-${randomBytes(3).toString("hex")}`;
const dir = await mkdtemp(join(tmpdir(), "pcr-net-bench-"));
await execa("ip", ["netns", "add", ns]);
try {
  const network = createNetwork({
    bridge: "pcrbr0",
    subnet: "10.213.0.0/16",
    statePath: join(dir, "leases.json"),
    netns: ns,
    logger: pino({ level: "warn" }),
  });
  await network.init([]);
  await joinAndLeave(network, "warmup");
  // Empty host: the joiner makes its group and removes it again, every run.
  const empty = await joinAndLeave(network, "g0");
  const members: { id: string; net: VmNetwork }[] = [];
  for (let group = 0; group < GROUPS; group++) {
    for (let member = 0; member < PER_GROUP; member++) {
      const id = `vm-g${String(group * PER_GROUP + member).padStart(9, "0")}`;
      members.push({ id, net: await network.attach(id, ["198.51.100.0/24"], { group: `g${group}`, hostname: `m${member}` }) });
    }
  }
  const loaded = await joinAndLeave(network, "g0");

  // A 3-way partition of group g1: each member cut from the other two, the three faults at once.
  const faults = createNetFaults({ netns: ns });
  const trio = members.slice(PER_GROUP, 2 * PER_GROUP);
  const apply: number[] = [];
  const clear: number[] = [];
  for (let run = 0; run < runs; run++) {
    const start = performance.now();
    await Promise.all(
      trio.map(({ net }, index) =>
        faults.apply(`f${run}-${index}`, net.tap, {
          kind: "partition",
          cidrs: trio.filter((other) => other.net.ip !== net.ip).map((other) => `${other.net.ip}/32`),
        }),
      ),
    );
    const applied = performance.now();
    await Promise.all(trio.map(({ net }, index) => faults.clear(`f${run}-${index}`, net.tap, { kind: "partition", cidrs: [] })));
    clear.push(performance.now() - applied);
    apply.push(applied - start);
  }
  for (const { id } of members) await network.detach(id);
  await network.close();

  const row = (cells: string[]) => console.log(cells.map((cell, index) => (index === 0 ? cell.padEnd(26) : cell.padStart(12))).join(""));
  console.log(`a group member's attach+detach, median of ${runs} runs, in namespace ${ns}`);
  row(["", "attach ms", "detach ms", "total ms"]);
  row(["empty host", empty.attach.toFixed(1), empty.detach.toFixed(1), empty.total.toFixed(1)]);
  row([`${GROUPS * PER_GROUP} VMs in ${GROUPS} groups`, loaded.attach.toFixed(1), loaded.detach.toFixed(1), loaded.total.toFixed(1)]);
  row([
    "ratio (goal <= 1.5)",
    (loaded.attach / empty.attach).toFixed(2),
    (loaded.detach / empty.detach).toFixed(2),
    (loaded.total / empty.total).toFixed(2),
  ]);
  console.log(`\n3-way partition of a 3-member group (3 faults at once), median of ${runs} runs`);
  row(["", "apply ms", "clear ms", ""]);
  row(["partition (goal < 50)", median(apply).toFixed(1), median(clear).toFixed(1), ""]);
} finally {
  await execa("ip", ["netns", "delete", ns], { reject: false });
  await rm(dir, { recursive: true, force: true });
}
