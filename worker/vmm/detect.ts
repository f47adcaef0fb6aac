// Which VMM backend runs here, and why, for any list of backend descriptors (module.ts): each
// backend's binary is looked for and asked its version, the KVM probes run (a backend's own, or the
// host's "kvm" verdict for one without), then each backend reads what was found (its detect()) and
// `--vmm auto` takes the usable one with the highest preference. The probes are injected, so tests
// decide what KVM does. The report is what `pcr-worker --check` prints and the worker logs at start.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { WorkerError } from "../core/errors.js";
import { findExecutable } from "../process/supervisor.js";
import type { Accelerator, AcceleratorChoice } from "./accel.js";
import type { BackendModule, BinaryFinding, Verdict } from "./module.js";

export type { BinaryFinding } from "./module.js";

export interface DetectBackendsOptions {
  /** "auto" or a backend's name (--vmm). */
  preference: string;
  /** The backends to consider, in any order (registry.ts BACKENDS in production). */
  backends: readonly BackendModule[];
  /** Binary settings by config key; a missing one is its default. */
  binaries?: Readonly<Record<string, string | undefined>>;
  /**
   * KVM probes by report key (a backend's kvmProbe.reportKey), each given that backend's binary as
   * found. A backend whose key is absent relies on the "kvm" verdict.
   */
  kvmProbes: Readonly<Record<string, ((binaryPath: string) => Promise<AcceleratorChoice>) | undefined>>;
  /** Bound on each `--version` run. */
  versionTimeoutMs?: number;
}

export interface CandidateReport {
  backend: string;
  /** Its VMM binary as configured ("" for a backend that runs none). */
  binary: string;
  finding: BinaryFinding;
  /** Can it run here at all? */
  usable: boolean;
  chosen: boolean;
  /** Why it is (not) usable and (not) chosen, one line. */
  why: string;
}

export type DetectionReport = {
  preference: string;
  /** The host's KVM verdict: the "kvm" probe's (QEMU boots a probe under KVM). */
  kvm: Verdict;
  /** Every KVM verdict with its --check label, "kvm" first. */
  accelerators: (Verdict & { key: string; label: string })[];
  /** Best first. */
  candidates: CandidateReport[];
  /** Undefined when nothing can run; then `error` says what to install. */
  chosen?: { backend: string; accel: Accelerator };
  error?: string;
} & {
  /** A backend's own KVM verdict under its report key, e.g. chKvm: KVM under cloud-hypervisor. */
  [ownProbe: `${string}Kvm`]: Verdict | undefined;
};

const execFileAsync = promisify(execFile);

/** Resolves a binary name on PATH (or checks an explicit path) and runs `--version`. */
export async function findBinary(binary: string, timeoutMs = 5000): Promise<BinaryFinding> {
  const path = await findExecutable(binary);
  if (!path)
    return { found: false, reason: binary.includes("/") ? `${binary} does not exist or is not executable` : `${binary} not found on PATH` };
  try {
    const { stdout, stderr } = await execFileAsync(path, ["--version"], { timeout: timeoutMs });
    const version =
      (stdout || stderr)
        .split("\n")
        .find((line) => line.trim())
        ?.trim() ?? "unknown version";
    return { found: true, path, version };
  } catch (err) {
    const e = err as { killed?: boolean; stderr?: string; message: string };
    const detail = e.killed ? `no answer within ${timeoutMs} ms` : (e.stderr?.trim().split("\n").at(-1) ?? e.message);
    return { found: false, reason: `${path} --version failed: ${detail}` };
  }
}

/** The value of a backend's binary setting: the configured one, else its default. */
export function binaryValue(binaries: DetectBackendsOptions["binaries"], setting: BackendModule["binaries"][number]): string {
  return binaries?.[setting.configKey] ?? setting.default;
}

export async function detectBackends(options: DetectBackendsOptions): Promise<DetectionReport> {
  const byPreference = [...options.backends].sort((a, b) => b.preference - a.preference);
  const sightings = await Promise.all(
    byPreference.map(async (backend) => {
      const setting = backend.binaries[0];
      const binary = setting ? binaryValue(options.binaries, setting) : "";
      const finding: BinaryFinding = setting
        ? await findBinary(binary, options.versionTimeoutMs)
        : { found: true, path: "", version: "in memory" };
      const probe = backend.kvmProbe;
      const run = probe && options.kvmProbes[probe.reportKey];
      let verdict: Verdict | undefined;
      if (probe && run) {
        const choice = finding.found
          ? await run(finding.path).catch(
              (err: Error): AcceleratorChoice => ({ accel: "tcg", reason: `${probe.name} failed: ${err.message}` }),
            )
          : { accel: "tcg" as const, reason: `not probed: ${backend.name} not found` };
        verdict = { usable: choice.accel === "kvm", reason: choice.reason };
      }
      return { backend, binary, finding, verdict };
    }),
  );

  const accelerators = sightings
    .flatMap(({ backend, verdict }) =>
      verdict && backend.kvmProbe ? [{ key: backend.kvmProbe.reportKey, label: backend.kvmProbe.label, ...verdict }] : [],
    )
    .sort((a, b) => Number(b.key === "kvm") - Number(a.key === "kvm"));
  if (accelerators[0]?.key !== "kvm") accelerators.unshift({ key: "kvm", label: "KVM", usable: false, reason: "no KVM probe ran" });
  const kvm: Verdict = { usable: accelerators[0]!.usable, reason: accelerators[0]!.reason };

  const assessed = sightings.map(({ backend, binary, finding, verdict }) => ({
    backend,
    binary,
    finding,
    ...backend.detect({ binary: finding, kvm: verdict ?? kvm, ownKvm: verdict !== undefined && backend.kvmProbe?.reportKey !== "kvm" }),
  }));

  const pick = options.preference;
  let chosen: (typeof assessed)[number] | undefined;
  let error: string | undefined;
  if (pick === "auto") {
    chosen = assessed.find((candidate) => candidate.usable);
    if (!chosen)
      error =
        "no VMM backend can run here; install one of: " +
        assessed.map(({ backend }) => `${backend.name}: ${backend.install}`).join("; or ");
  } else {
    const asked = assessed.find((candidate) => candidate.backend.name === pick);
    const others = assessed.filter((candidate) => candidate !== asked && candidate.usable).map(({ backend }) => `--vmm ${backend.name}`);
    if (!asked) error = `--vmm ${pick} names no backend this worker has (${assessed.map(({ backend }) => backend.name).join(", ")})`;
    else if (asked.usable) chosen = asked;
    else
      error =
        `${pick} was asked for but cannot run: ${asked.why}. Install ${asked.backend.install}` +
        (others.length ? `, or choose ${others.join(" or ")}` : "");
  }

  const choiceWhy = (candidate: (typeof assessed)[number], index: number): string => {
    if (candidate === chosen) {
      if (pick !== "auto") return `chosen: asked for with --vmm ${pick}`;
      const before = assessed.slice(0, index).map(({ backend }) => backend.name);
      return before.length ? `chosen: ${before.join(" and ")} cannot run here` : "chosen: preferred when it runs";
    }
    if (!candidate.usable) return "not chosen";
    return pick === "auto" ? `not chosen: ${chosen?.backend.name} is preferred` : `not chosen: --vmm ${pick}`;
  };
  const candidates = assessed.map(
    (candidate, index): CandidateReport => ({
      backend: candidate.backend.name,
      binary: candidate.binary,
      finding: candidate.finding,
      usable: candidate.usable,
      chosen: candidate === chosen,
      why: `${candidate.why}; ${choiceWhy(candidate, index)}`,
    }),
  );
  const ownVerdicts = Object.fromEntries(
    accelerators.filter((entry) => entry.key !== "kvm").map(({ key, usable, reason }) => [key, { usable, reason }]),
  );
  return {
    preference: pick,
    kvm,
    ...ownVerdicts,
    accelerators,
    candidates,
    chosen: chosen && { backend: chosen.backend.name, accel: chosen.accel },
    error,
  } as DetectionReport;
}

/** The chosen backend, or FAILED_PRECONDITION naming what to install. */
export function requireChosenBackend(report: DetectionReport): { backend: string; accel: Accelerator } {
  if (report.chosen) return report.chosen;
  throw new WorkerError("FAILED_PRECONDITION", report.error ?? "no VMM backend can run here");
}

/** The text `pcr-worker --check` prints. */
export function formatDetectionReport(report: DetectionReport): string {
  const lines = [`VMM backends (preference: ${report.preference})`];
  for (const { label, usable, reason } of report.accelerators) lines.push(`  ${label}: ${usable ? "usable" : "not usable"} (${reason})`);
  for (const candidate of report.candidates) {
    const found = candidate.finding.found ? [candidate.finding.path, candidate.finding.version].filter(Boolean).join(", ") : "not found";
    lines.push(`  ${candidate.chosen ? "*" : "-"} ${candidate.backend}: ${found}`, `      ${candidate.why}`);
  }
  lines.push(report.chosen ? `Chosen: ${report.chosen.backend} (${report.chosen.accel})` : `Error: ${report.error}`);
  return lines.join("\n");
}
