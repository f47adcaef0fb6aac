// The one place that knows every VMM backend: detection, then construction of the chosen one.
// Adding a backend is one file next to this one plus one line in `construct`.
import type { Logger } from "pino";
import type { WorkerConfig } from "../config.js";
import type { VmmBackend } from "../ports/index.js";
import { detectAccelerator, probeKvmWithCloudHypervisor, type AcceleratorChoice } from "./accel.js";
import { createCloudHypervisorBackend } from "./cloud-hypervisor.js";
import { detectBackends, formatDetectionReport, requireChosenBackend, type DetectionReport } from "./detect.js";
import { createQemuBackend } from "./qemu.js";

type BackendConfig = Pick<WorkerConfig, "vmm" | "accel" | "qemuBinary" | "cloudHypervisorBinary" | "virtiofsdBinary">;

const PROBE_TIMEOUT_MS = 5_000;

/** KVM is used only when a probe boot really runs; `--accel` pins the answer without probing. */
function acceleratorProbe(config: BackendConfig, logger?: Logger): () => Promise<AcceleratorChoice> {
  if (config.accel === "tcg") return async () => ({ accel: "tcg", reason: "--accel tcg was configured" });
  if (config.accel === "kvm") return async () => ({ accel: "kvm", reason: "--accel kvm was configured (not probed)" });
  return () => detectAccelerator({ qemuBinary: config.qemuBinary, probeTimeoutMs: PROBE_TIMEOUT_MS, logger });
}

/** KVM for Cloud Hypervisor, asked of Cloud Hypervisor itself (no QEMU needed); `--accel` pins it too. */
function chKvmProbe(config: BackendConfig, logger?: Logger): (chPath: string) => Promise<AcceleratorChoice> {
  if (config.accel === "tcg") return async () => ({ accel: "tcg", reason: "--accel tcg was configured" });
  if (config.accel === "kvm") return async () => ({ accel: "kvm", reason: "--accel kvm was configured (not probed)" });
  return (chPath) => probeKvmWithCloudHypervisor({ chBinary: chPath, probeTimeoutMs: PROBE_TIMEOUT_MS, logger });
}

export function detect(config: BackendConfig, logger?: Logger): Promise<DetectionReport> {
  return detectBackends({
    preference: config.vmm,
    chBinary: config.cloudHypervisorBinary,
    qemuBinary: config.qemuBinary,
    kvmProbe: acceleratorProbe(config, logger),
    chKvmProbe: chKvmProbe(config, logger),
  });
}

/** What `pcr-worker --check` prints; ok is false when no backend can run. */
export async function checkBackends(config: BackendConfig): Promise<{ text: string; ok: boolean }> {
  const report = await detect(config);
  return { text: formatDetectionReport(report), ok: report.chosen !== undefined };
}

/** Detects, logs why, and builds the chosen backend; throws FAILED_PRECONDITION naming what to install. */
export async function selectBackend(config: BackendConfig, logger: Logger): Promise<VmmBackend> {
  const report = await detect(config, logger);
  logger.info(
    { kvm: report.kvm, chKvm: report.chKvm, candidates: report.candidates.map(({ backend, usable, chosen, why }) => ({ backend, usable, chosen, why })) },
    "vmm detection",
  );
  const chosen = requireChosenBackend(report);
  return construct(chosen, config, logger);
}

function construct(chosen: { backend: VmmBackend["name"]; accel: "kvm" | "tcg" }, config: BackendConfig, logger: Logger): VmmBackend {
  switch (chosen.backend) {
    case "qemu":
      return createQemuBackend({ qemuBinary: config.qemuBinary, accel: chosen.accel, logger });
    case "cloud-hypervisor":
      return createCloudHypervisorBackend({ binary: config.cloudHypervisorBinary, virtiofsdBinary: config.virtiofsdBinary, logger });
  }
}
