// A Jepsen-style nemesis over the Worker RPC: boots a worker and a test guest in throwaway network
// namespaces, runs a workload in the guest (ping a peer across the bridge, read and write the data
// disk, once per tick), applies a schedule of faults, and writes a report of what the guest saw in
// each phase plus the VM's counters, and a latency timeline (SVG) of every tick with the faults as
// bands. Run as root: `npm run build && node dist/examples/nemesis/nemesis.js`.
import { writeFile } from "node:fs/promises";
import type { FaultInput } from "../../worker/core/api.js";
import { testGuest } from "../../test/helpers/repo.js";
import { GuestWorld, TICK_SCRIPT, type Tick, parseTicks } from "../../test/faults/guest-world.js";
import { renderTimeline, type TimelineOp, type TimelineWindow } from "../lib/timeline.js";

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

/** The guest's ping waits this long for a reply (`ping -W 1`): a lost ping took that long. */
const PING_TIMEOUT_MS = 1000;

/**
 * A tick as timeline operations, stamped when its line reached the console (the guest's clock is
 * not the host's): its ping (the round trip; lost is a timeout), and the whole tick (the time
 * since the previous one: disk read and write, ping and the 0.2 s sleep; failed on a disk error).
 */
function tickOps(tick: Tick, arrivedMs: number, previousMs: number): TimelineOp[] {
  const rtt = tick.rttMs ?? PING_TIMEOUT_MS;
  return [
    { series: "ping", startMs: arrivedMs - rtt, endMs: arrivedMs, outcome: tick.lost ? "unknown" : "ok" },
    {
      series: "tick (disk r/w)",
      startMs: previousMs,
      endMs: arrivedMs,
      outcome: tick.read === "err" || tick.write === "err" ? "fail" : "ok",
    },
  ];
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
    const start = Date.now();
    const ops: TimelineOp[] = [];
    const windows: TimelineWindow[] = [];
    let lastTickMs = start;
    let pending = ""; // console text after the last complete line
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
      const faultStart = Date.now();
      // Polls the console so that each tick is stamped when it arrived, to draw it on the timeline.
      const ticks: Tick[] = [];
      const phaseEnd = faultStart + phase.seconds * 1000;
      for (let done = false; !done; ) {
        done = Date.now() >= phaseEnd;
        if (done && faultId) {
          windows.push({ label: phase.name, startMs: faultStart, endMs: Date.now() });
          await world.client.clearFault(id, faultId);
        }
        const { text, end } = await world.console(id, at);
        at = end;
        pending += text;
        const cut = pending.lastIndexOf("\n") + 1;
        // Ticks that arrived together (a paused guest catching up) share the time since the last.
        const arrived = parseTicks(pending.slice(0, cut));
        const now = Date.now();
        const share = (now - lastTickMs) / Math.max(arrived.length, 1);
        for (const tick of arrived) {
          ticks.push(tick);
          ops.push(...tickOps(tick, lastTickMs + share, lastTickMs));
          lastTickMs += share;
        }
        pending = pending.slice(cut);
        if (!done) await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const report = summarize(phase.name, ticks, faultId, error);
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
    const stamp = Date.now();
    const path = `nemesis-report-${stamp}.json`;
    await writeFile(path, JSON.stringify(report, null, 2));
    const svgPath = `nemesis-timeline-${stamp}.svg`;
    const title = "nemesis: the guest's pings and ticks (latency, log scale) under faults";
    await writeFile(svgPath, renderTimeline(ops, windows, { title, originMs: start }));
    console.log(`report: ${path}, timeline: ${svgPath}`);
    await world.client.deleteVm(id);
  } finally {
    await world.destroy();
  }
}

main().catch((err) => {
  console.error(`nemesis: ${(err as Error).message}`);
  process.exit(1);
});
