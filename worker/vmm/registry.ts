// Every VMM backend this worker can run, in one list. Adding a backend is a directory
// worker/vmm/<backend>/ whose index.ts exports its descriptor (module.ts), plus one line in
// BACKENDS: the --vmm choices, the binary config keys, detection and --check all come from here.
// The fake backend (fake/) is not listed, so `auto` never takes it: tests and benches pass it
// explicitly (`backends`), or name it (`--vmm fake`, EXPLICIT_BACKEND_NAMES) to run many cheap workers.
import type { Logger } from "pino";
import type { VmmBackend } from "../ports/index.js";
import type { AcceleratorChoice } from "./accel.js";
import { backend as cloudHypervisor } from "./cloud-hypervisor/index.js";
import { binaryValue, detectBackends, formatDetectionReport, requireChosenBackend, type DetectionReport } from "./detect.js";
import type { BackendModule, BinarySetting } from "./module.js";
import { backend as qemu } from "./qemu/index.js";

/** In the order `--vmm` and the config list them; `auto` goes by each one's `preference`. */
export const BACKENDS = [qemu, cloudHypervisor] as const;

export type KnownBackend = (typeof BACKENDS)[number]["name"];
/** Config keys of the backends' binaries: qemuBinary, cloudHypervisorBinary, virtiofsdBinary. */
export type BinaryKey = (typeof BACKENDS)[number]["binaries"][number]["configKey"];
export const BACKEND_NAMES = BACKENDS.map((backend) => backend.name) as KnownBackend[];
/** Backends chosen only by name, never by `auto` nor by --check's detection. */
export const EXPLICIT_BACKEND_NAMES = ["fake"] as const;
export const BINARY_SETTINGS: readonly (BinarySetting & { configKey: BinaryKey })[] = BACKENDS.flatMap((backend) => [...backend.binaries]);

/** What selection reads of the worker's configuration. */
export type BackendConfig = { vmm: string; accel: "auto" | "kvm" | "tcg" } & Partial<Record<BinaryKey, string>>;

const PROBE_TIMEOUT_MS = 5_000;

/** Each backend's KVM probe, by report key; `--accel` pins the answer without probing. */
function kvmProbes(
  config: BackendConfig,
  backends: readonly BackendModule[],
  logger?: Logger,
): Record<string, (binaryPath: string) => Promise<AcceleratorChoice>> {
  const probes: Record<string, (binaryPath: string) => Promise<AcceleratorChoice>> = {};
  for (const { kvmProbe } of backends) {
    if (!kvmProbe) continue;
    probes[kvmProbe.reportKey] =
      config.accel === "auto"
        ? (binaryPath) => kvmProbe.run(binaryPath, { timeoutMs: PROBE_TIMEOUT_MS, logger })
        : async () => ({
            accel: config.accel as "kvm" | "tcg",
            reason: `--accel ${config.accel} was configured${config.accel === "kvm" ? " (not probed)" : ""}`,
          });
  }
  return probes;
}

function binariesOf(config: BackendConfig): Record<string, string | undefined> {
  return config as Record<string, string | undefined>;
}

export function detect(config: BackendConfig, logger?: Logger, backends: readonly BackendModule[] = BACKENDS): Promise<DetectionReport> {
  return detectBackends({ preference: config.vmm, backends, binaries: binariesOf(config), kvmProbes: kvmProbes(config, backends, logger) });
}

/** What `pcr-worker --check` prints; ok is false when no backend can run. */
export async function checkBackends(
  config: BackendConfig,
  backends: readonly BackendModule[] = BACKENDS,
): Promise<{ text: string; ok: boolean }> {
  if (config.vmm === "fake") return { text: "VMM backend: fake (--vmm fake): in memory, no VM is real", ok: true };
  const report = await detect(config, undefined, backends);
  return { text: formatDetectionReport(report), ok: report.chosen !== undefined };
}

/** Detects, logs why, and builds the chosen backend; throws FAILED_PRECONDITION naming what to install. */
export async function selectBackend(
  config: BackendConfig,
  logger: Logger,
  backends: readonly BackendModule[] = BACKENDS,
): Promise<VmmBackend> {
  if (config.vmm === "fake") {
    logger.warn("--vmm fake: VMs are not real (in memory, nothing boots); for tests and benches only");
    // Loaded only when named, as every backend's implementation is.
    const { createFakeBackend } = await import("./fake/index.js");
    return createFakeBackend();
  }
  const report = await detect(config, logger, backends);
  logger.info(
    {
      kvm: Object.fromEntries(report.accelerators.map(({ key, usable, reason }) => [key, { usable, reason }])),
      candidates: report.candidates.map(({ backend, usable, chosen, why }) => ({ backend, usable, chosen, why })),
    },
    "vmm detection",
  );
  const chosen = requireChosenBackend(report);
  const module = backends.find((backend) => backend.name === chosen.backend)!;
  const binaries = Object.fromEntries(module.binaries.map((setting) => [setting.configKey, binaryValue(binariesOf(config), setting)]));
  return module.create({ binaries, accel: chosen.accel, logger });
}
