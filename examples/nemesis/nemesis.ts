// A Jepsen-style nemesis over the Worker RPC: boots a worker and a test guest in throwaway network
// namespaces, runs a workload in the guest (ping a peer across the bridge, read and write the data
// disk, once per tick), applies a schedule of faults, and writes a report of what the guest saw in
// each phase plus the VM's counters. Run as root: `npm run build && node dist/examples/nemesis/nemesis.js`.
import { writeFile } from "node:fs/promises";
import type { FaultInput } from "../../worker/core/api.js";
import { testGuest } from "../../test/helpers/repo.js";
import { GuestWorld, TICK_SCRIPT, type Tick, parseTicks } from "../../test/faults/guest-world.js";

/** The nemesis schedule: each phase holds a fault (or none) for about `seconds`. */
const SCHEDULE: { name: string; fault?: FaultInput; seconds: number }[] = [
  { name: "healthy", seconds: 4 },
  { name: "loss 30%", fault: { kind: "loss", percent: 30 }, seconds: 8 },
  { name: "healthy", seconds: 3 },
  { name: "partition", fault: { kind: "partition", cidrs: [] }, seconds: 4 },
  { name: "healthy", seconds: 3 },
  { name: "pause", fault: { kind: "pause" }, seconds: 3 },
  { name: "disk write errors", fault: { kind: "diskErrors", op: "write", errno: 5, afterOps: 0, probabilityPercent: 0 }, seconds: 4 },
  {
    name: "disk read errors on 10% of blocks",
    fault: { kind: "diskErrors", op: "read", errno: 5, afterOps: 0, probabilityPercent: 10 },
    seconds: 4,
  },
  { name: "healthy", seconds: 4 },
];

interface PhaseReport {
  name: string;
  faultId?: string;
  error?: string;
  ticks: number;
  pingsLost: number;
  meanRttMs?: number;
  readErrors: number;
  writeErrors: number;
  tickRange?: [number, number];
}

function summarize(name: string, ticks: Tick[], faultId?: string, error?: string): PhaseReport {
  const rtts = ticks.filter((t) => t.rttMs !== undefined).map((t) => t.rttMs!);
  return {
    name,
    faultId,
    error,
    ticks: ticks.length,
    pingsLost: ticks.filter((t) => t.lost).length,
    meanRttMs: rtts.length ? Number((rtts.reduce((a, b) => a + b, 0) / rtts.length).toFixed(2)) : undefined,
    readErrors: ticks.filter((t) => t.read === "err").length,
    writeErrors: ticks.filter((t) => t.write === "err").length,
    tickRange: ticks.length ? [ticks[0]!.n, ticks.at(-1)!.n] : undefined,
  };
}

async function main(): Promise<void> {
  const guest = testGuest();
  if ("skip" in guest) throw new Error(guest.skip);
  if (process.getuid?.() !== 0) throw new Error("run as root: the example makes network namespaces");
  const world = await GuestWorld.create();
  const phases: PhaseReport[] = [];
  try {
    const id = await world.createVm(guest.input, TICK_SCRIPT, 64n * 1024n * 1024n);
    console.log(`vm ${id} created; waiting for the workload`);
    await world.ticks(id, 0n, 1, 90_000);
    let at = (await world.console(id)).end;
    for (const phase of SCHEDULE) {
      let faultId: string | undefined;
      let error: string | undefined;
      if (phase.fault) {
        try {
          faultId = await world.client.injectFault(id, phase.fault);
        } catch (err) {
          error = (err as Error).message;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, phase.seconds * 1000));
      if (faultId) await world.client.clearFault(id, faultId);
      const { text, end } = await world.console(id, at);
      at = end;
      const report = summarize(phase.name, parseTicks(text), faultId, error);
      phases.push(report);
      console.log(
        `${phase.name.padEnd(36)} ticks=${report.ticks} lost=${report.pingsLost} rtt=${report.meanRttMs ?? "-"}ms ` +
          `readErr=${report.readErrors} writeErr=${report.writeErrors}${error ? ` (${error})` : ""}`,
      );
    }
    const vm = await world.client.getVm(id);
    const console_ = (await world.console(id)).text;
    const report = {
      vmId: id,
      schedule: SCHEDULE,
      phases,
      counters: JSON.parse(JSON.stringify(vm.counters, (_k, v: unknown) => (typeof v === "bigint" ? Number(v) : v))) as unknown,
      consoleTail: console_.split("\n").slice(-20),
    };
    const path = `nemesis-report-${Date.now()}.json`;
    await writeFile(path, JSON.stringify(report, null, 2));
    console.log(`report: ${path}`);
    await world.client.deleteVm(id);
  } finally {
    await world.destroy();
  }
}

main().catch((err) => {
  console.error(`nemesis: ${(err as Error).message}`);
  process.exit(1);
});
