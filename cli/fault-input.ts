// Turning inject-fault flags into a FaultInput; the worker validates the values themselves.
import { type ActiveFault, type Direction, type DiskOp, FAULT_KINDS, type FaultInput } from "../worker/core/api.js";
import { textTable } from "./format.js";
import { printable } from "./terminal.js";
import { invalidArgument } from "../worker/core/errors.js";

export const FAULT_KIND_NAMES = [...FAULT_KINDS];

export interface FaultFlags {
  kind: string;
  durationMs?: number;
  cidrs?: string[];
  /** partition: both (default), outbound or inbound. */
  direction?: string;
  percent?: number;
  ms?: number;
  jitterMs?: number;
  kbit?: number;
  op?: string;
  errno?: number;
  afterOps?: number;
  pid?: number;
  name?: string;
  /** A number or a name (KILL, SIGTERM, ...). */
  signal?: string;
  deltaMs?: number;
  periodMs?: number;
  dir?: string;
}

/** Signal names the CLI takes besides numbers (Linux x86 and arm numbering). */
const SIGNALS: Readonly<Record<string, number>> = {
  HUP: 1,
  INT: 2,
  QUIT: 3,
  ABRT: 6,
  KILL: 9,
  USR1: 10,
  SEGV: 11,
  USR2: 12,
  PIPE: 13,
  ALRM: 14,
  TERM: 15,
  CONT: 18,
  STOP: 19,
};

/** 9 when absent; else a number or a name with or without SIG. */
export function parseSignal(text: string | undefined): number {
  if (text === undefined) return SIGNALS.KILL!;
  if (/^\d+$/.test(text)) return Number(text);
  const number = SIGNALS[text.toUpperCase().replace(/^SIG/, "")];
  if (number === undefined)
    throw invalidArgument(`unknown signal ${JSON.stringify(text)}; a number or one of ${Object.keys(SIGNALS).join(", ")}`);
  return number;
}

export function faultFromFlags(flags: FaultFlags): FaultInput {
  const need = (value: number | undefined, flag: string): number => {
    if (value === undefined || Number.isNaN(value)) throw invalidArgument(`--kind ${flags.kind} needs --${flag}`);
    return value;
  };
  const durationMs = flags.durationMs ?? 0;
  const peers = flags.cidrs?.length ? { cidrs: flags.cidrs } : {};
  switch (flags.kind) {
    case "partition":
      return {
        kind: "partition",
        cidrs: flags.cidrs ?? [],
        ...(flags.direction ? { direction: flags.direction as Direction } : {}),
        durationMs,
      };
    case "loss":
      return { kind: "loss", percent: need(flags.percent, "percent"), ...peers, durationMs };
    case "delay":
      return { kind: "delay", ms: need(flags.ms, "ms"), jitterMs: flags.jitterMs ?? 0, ...peers, durationMs };
    case "bandwidth":
      return { kind: "bandwidth", kbitPerSecond: need(flags.kbit, "kbit"), durationMs };
    case "diskErrors":
      return {
        kind: "diskErrors",
        op: (flags.op ?? "readWrite") as DiskOp,
        errno: flags.errno ?? 5,
        afterOps: flags.afterOps ?? 0,
        probabilityPercent: flags.percent ?? 0,
        durationMs,
      };
    case "cpuThrottle":
      return { kind: "cpuThrottle", percent: need(flags.percent, "percent"), durationMs };
    case "killProcess":
    case "freezeProcess": {
      if ((flags.pid === undefined) === (flags.name === undefined)) throw invalidArgument(`--kind ${flags.kind} needs --pid or --name`);
      const who = { pid: flags.pid ?? 0, name: flags.name ?? "" };
      return flags.kind === "killProcess"
        ? { kind: "killProcess", ...who, signal: parseSignal(flags.signal), durationMs }
        : { kind: "freezeProcess", ...who, durationMs };
    }
    case "clockShift":
      return { kind: "clockShift", deltaMs: need(flags.deltaMs, "delta-ms"), durationMs };
    case "clockStrobe":
      return { kind: "clockStrobe", deltaMs: need(flags.deltaMs, "delta-ms"), periodMs: need(flags.periodMs, "period-ms"), durationMs };
    case "fillDisk":
      if (flags.dir === undefined) throw invalidArgument("--kind fillDisk needs --dir");
      return { kind: "fillDisk", dir: flags.dir, durationMs };
    case "pause":
    case "resume":
    case "killVmm":
    case "powerOff":
    case "reboot":
      return { kind: flags.kind, durationMs };
    default:
      throw invalidArgument(`unknown fault kind ${JSON.stringify(flags.kind)}; one of ${FAULT_KINDS.join(", ")}`);
  }
}

export function formatFaultTable(faults: ActiveFault[]): string {
  const rows = faults.map((f) => [
    f.id,
    f.kind,
    f.expiresAtMs > 0n ? `${Math.max(0, Math.round((Number(f.expiresAtMs) - Date.now()) / 1000))}s` : "-",
    printable(f.description),
  ]);
  const header = ["FAULT", "KIND", "EXPIRES IN", "DESCRIPTION"];
  return textTable(header, rows);
}
