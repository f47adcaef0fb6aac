// Which VMM backend runs here, and why. Cloud Hypervisor needs KVM that really runs a vCPU, asked
// of Cloud Hypervisor itself when a chKvmProbe is given (accel.ts boots a probe kernel with it), so
// that no QEMU is needed; QEMU runs anywhere (KVM, else TCG). Probes are injected.
// The report is what `pcr-worker --check` prints and what the worker logs at start.
import { execFile } from "node:child_process";
import { constants } from "node:fs";
import { access } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { promisify } from "node:util";
import { WorkerError } from "../core/errors.js";
import type { BackendName } from "../ports/index.js";
import type { AcceleratorChoice } from "./accel.js";

export type BackendPreference = "auto" | BackendName;

export interface DetectBackendsOptions {
  preference: BackendPreference;
  chBinary: string;
  qemuBinary: string;
  /** Whether KVM really runs a vCPU under QEMU; e.g. `() => detectAccelerator({...})` from accel.ts. */
  kvmProbe: () => Promise<AcceleratorChoice>;
  /**
   * Whether KVM really runs a vCPU under Cloud Hypervisor, given the binary found; e.g.
   * `(path) => probeKvmWithCloudHypervisor({ chBinary: path, ... })`. Without it the QEMU probe's
   * verdict stands for both.
   */
  chKvmProbe?: (chPath: string) => Promise<AcceleratorChoice>;
  /** Bound on each `--version` run. */
  versionTimeoutMs?: number;
}

export type BinaryFinding = { found: true; path: string; version: string } | { found: false; reason: string };

export interface CandidateReport {
  backend: BackendName;
  binary: string;
  finding: BinaryFinding;
  /** Can it run here at all? */
  usable: boolean;
  chosen: boolean;
  /** Why it is (not) usable and (not) chosen, one line. */
  why: string;
}

export interface DetectionReport {
  preference: BackendPreference;
  /** KVM as the QEMU probe saw it (the QEMU backend's accelerator). */
  kvm: { usable: boolean; reason: string };
  /** KVM as Cloud Hypervisor's own probe saw it; absent when no chKvmProbe was given. */
  chKvm?: { usable: boolean; reason: string };
  candidates: CandidateReport[];
  /** Undefined when nothing can run; then `error` says what to install. */
  chosen?: { backend: BackendName; accel: "kvm" | "tcg" };
  error?: string;
}

export const INSTALL_QEMU = "apt-get install qemu-system-x86";
export const INSTALL_CH = "the cloud-hypervisor static release binary (https://github.com/cloud-hypervisor/cloud-hypervisor/releases) on PATH, on a host with working KVM";

const execFileAsync = promisify(execFile);

/** Resolves a binary name on PATH (or checks an explicit path) and runs `--version`. */
export async function findBinary(binary: string, timeoutMs = 5000): Promise<BinaryFinding> {
  const path = binary.includes("/") ? ((await isExecutable(binary)) ? binary : undefined) : await onPath(binary);
  if (!path) return { found: false, reason: binary.includes("/") ? `${binary} does not exist or is not executable` : `${binary} not found on PATH` };
  try {
    const { stdout, stderr } = await execFileAsync(path, ["--version"], { timeout: timeoutMs });
    const version = (stdout || stderr).split("\n").find((line) => line.trim())?.trim() ?? "unknown version";
    return { found: true, path, version };
  } catch (err) {
    const e = err as { killed?: boolean; code?: unknown; stderr?: string; message: string };
    const detail = e.killed ? `no answer within ${timeoutMs} ms` : (e.stderr?.trim().split("\n").at(-1) ?? e.message);
    return { found: false, reason: `${path} --version failed: ${detail}` };
  }
}

export async function detectBackends(options: DetectBackendsOptions): Promise<DetectionReport> {
  const [ch, qemu, accel] = await Promise.all([
    findBinary(options.chBinary, options.versionTimeoutMs),
    findBinary(options.qemuBinary, options.versionTimeoutMs),
    options.kvmProbe().catch((err: Error): AcceleratorChoice => ({ accel: "tcg", reason: `KVM probe failed: ${err.message}` })),
  ]);
  const kvm = { usable: accel.accel === "kvm", reason: accel.reason };
  let chKvm: DetectionReport["chKvm"];
  if (options.chKvmProbe) {
    const choice = ch.found
      ? await options.chKvmProbe(ch.path).catch((err: Error): AcceleratorChoice => ({ accel: "tcg", reason: `cloud-hypervisor's KVM probe failed: ${err.message}` }))
      : { accel: "tcg" as const, reason: "not probed: cloud-hypervisor not found" };
    chKvm = { usable: choice.accel === "kvm", reason: choice.reason };
  }
  const chKvmUsable = (chKvm ?? kvm).usable;

  const chUsable = ch.found && chKvmUsable;
  const chWhy = !ch.found
    ? ch.reason
    : chKvmUsable
      ? `runs here (KVM works${chKvm ? " under cloud-hypervisor" : ""})`
      : `needs KVM, which does not run a vCPU here${chKvm ? ` (${chKvm.reason})` : ""}`;
  const qemuWhy = !qemu.found ? qemu.reason : `runs here with ${kvm.usable ? "KVM" : "TCG (software emulation: slow)"}`;

  let chosen: DetectionReport["chosen"];
  let error: string | undefined;
  const pick = options.preference;
  if (pick === "cloud-hypervisor") {
    if (chUsable) chosen = { backend: "cloud-hypervisor", accel: "kvm" };
    else error = `cloud-hypervisor was asked for but cannot run: ${chWhy}. Install ${INSTALL_CH}, or choose --vmm qemu`;
  } else if (pick === "qemu") {
    if (qemu.found) chosen = { backend: "qemu", accel: accel.accel };
    else error = `qemu was asked for but cannot run: ${qemuWhy}. Install it: ${INSTALL_QEMU}`;
  } else if (chUsable) {
    chosen = { backend: "cloud-hypervisor", accel: "kvm" };
  } else if (qemu.found) {
    chosen = { backend: "qemu", accel: accel.accel };
  } else {
    error = `no VMM backend can run here: ${INSTALL_QEMU} (runs everywhere, KVM or TCG), or install ${INSTALL_CH}`;
  }

  const choiceWhy = (backend: BackendName, usable: boolean): string => {
    if (chosen?.backend === backend) {
      if (pick !== "auto") return `chosen: asked for with --vmm ${pick}`;
      return backend === "cloud-hypervisor" ? "chosen: preferred when it runs" : `chosen: cloud-hypervisor cannot run here`;
    }
    if (!usable) return "not chosen";
    return pick === "auto" ? "not chosen: cloud-hypervisor is preferred" : `not chosen: --vmm ${pick}`;
  };
  const candidates: CandidateReport[] = [
    { backend: "cloud-hypervisor", binary: options.chBinary, finding: ch, usable: chUsable, chosen: chosen?.backend === "cloud-hypervisor", why: `${chWhy}; ${choiceWhy("cloud-hypervisor", chUsable)}` },
    { backend: "qemu", binary: options.qemuBinary, finding: qemu, usable: qemu.found, chosen: chosen?.backend === "qemu", why: `${qemuWhy}; ${choiceWhy("qemu", qemu.found)}` },
  ];
  return { preference: pick, kvm, ...(chKvm ? { chKvm } : {}), candidates, chosen, error };
}

/** The chosen backend, or FAILED_PRECONDITION naming what to install. */
export function requireChosenBackend(report: DetectionReport): { backend: BackendName; accel: "kvm" | "tcg" } {
  if (report.chosen) return report.chosen;
  throw new WorkerError("FAILED_PRECONDITION", report.error ?? "no VMM backend can run here");
}

/** The text `pcr-worker --check` prints. */
export function formatDetectionReport(report: DetectionReport): string {
  const lines = [`VMM backends (preference: ${report.preference})`, `  KVM: ${report.kvm.usable ? "usable" : "not usable"} (${report.kvm.reason})`];
  if (report.chKvm) lines.push(`  KVM under cloud-hypervisor: ${report.chKvm.usable ? "usable" : "not usable"} (${report.chKvm.reason})`);
  for (const candidate of report.candidates) {
    const found = candidate.finding.found ? `${candidate.finding.path}, ${candidate.finding.version}` : "not found";
    lines.push(`  ${candidate.chosen ? "*" : "-"} ${candidate.backend}: ${found}`, `      ${candidate.why}`);
  }
  lines.push(report.chosen ? `Chosen: ${report.chosen.backend} (${report.chosen.accel})` : `Error: ${report.error}`);
  return lines.join("\n");
}

async function isExecutable(path: string): Promise<boolean> {
  try {
    await access(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

async function onPath(name: string): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? "").split(delimiter).filter(Boolean)) {
    const candidate = join(dir, name);
    if (await isExecutable(candidate)) return candidate;
  }
  return undefined;
}
