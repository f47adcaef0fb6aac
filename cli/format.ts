// Human and JSON renderings of VMs for the CLI.
import type { VmView } from "../worker/core/api.js";
import { printable } from "./terminal.js";

/** A VmView with bigints as numbers, for JSON output. */
export function vmToJson(vm: VmView): Record<string, unknown> {
  return JSON.parse(JSON.stringify(vm, (_key, value) => (typeof value === "bigint" ? Number(value) : value))) as Record<string, unknown>;
}

function human(bytes: bigint): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${Number.isInteger(value) ? value : value.toFixed(1)}${units[unit]}`;
}

function duration(ms: bigint): string {
  let seconds = Number(ms / 1000n);
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  seconds %= 60;
  if (minutes < 60) return `${minutes}m${seconds}s`;
  return `${Math.floor(minutes / 60)}h${minutes % 60}m`;
}

export function formatVmTable(vms: VmView[]): string {
  // HOST only through a fleet (a gateway, or a worker with --host-id): a lone worker's table is unchanged.
  const withHost = vms.some((vm) => vm.host);
  const header = ["ID", "HOSTNAME", "STATUS", "IP", "CPU", "MEMORY", "UPTIME", "GROUP", "ORIGIN", ...(withHost ? ["HOST"] : []), "FAILURE"];
  // Every column is the server's text: a hostile gateway or worker must not reach the terminal.
  const rows = vms.map((vm) =>
    [
      vm.id,
      vm.hostname,
      vm.status,
      vm.ip || "-",
      String(vm.cpu),
      human(vm.memoryBytes),
      vm.uptimeMs > 0n ? duration(vm.uptimeMs) : "-",
      // Before FAILURE (free text, last), after the columns scripts already read by position.
      vm.group || "-",
      vm.origin ?? "boot",
      ...(withHost ? [vm.host || "-"] : []),
      vm.failure ? tableCell(vm.failure).slice(0, 80) : "",
    ].map(tableCell),
  );
  return textTable(header, rows);
}

/** Columns padded to their widest cell, two spaces apart, no trailing blanks. */
/** One line of inert text: controls made visible, and newlines and tabs too, which would break the row. */
function tableCell(text: string): string {
  return printable(text).replaceAll("\n", "\\n").replaceAll("\t", "\\t");
}

export function textTable(header: string[], rows: string[][]): string {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)));
  return [header, ...rows]
    .map((row) =>
      row
        .map((cell, column) => cell.padEnd(widths[column]!))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}
