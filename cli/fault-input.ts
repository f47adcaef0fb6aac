// Turning inject-fault flags into a FaultInput; the worker validates the values themselves.
import { type ActiveFault, type DiskOp, FAULT_KINDS, type FaultInput } from "../worker/core/api.js";
import { textTable } from "./format.js";
import { printable } from "./terminal.js";
import { invalidArgument } from "../worker/core/errors.js";

export const FAULT_KIND_NAMES = [...FAULT_KINDS];

export interface FaultFlags {
  kind: string;
  durationMs?: number;
  cidrs?: string[];
  percent?: number;
  ms?: number;
  jitterMs?: number;
  kbit?: number;
  op?: string;
  errno?: number;
  afterOps?: number;
}

export function faultFromFlags(flags: FaultFlags): FaultInput {
  const need = (value: number | undefined, flag: string): number => {
    if (value === undefined || Number.isNaN(value)) throw invalidArgument(`--kind ${flags.kind} needs --${flag}`);
    return value;
  };
  const durationMs = flags.durationMs ?? 0;
  switch (flags.kind) {
    case "partition":
      return { kind: "partition", cidrs: flags.cidrs ?? [], durationMs };
    case "loss":
      return { kind: "loss", percent: need(flags.percent, "percent"), durationMs };
    case "delay":
      return { kind: "delay", ms: need(flags.ms, "ms"), jitterMs: flags.jitterMs ?? 0, durationMs };
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
