// What a backend directory (worker/vmm/<backend>/index.ts) exports: one descriptor that names the
// backend, lists the binaries it runs (each a config key, so a flag and a variable), tells from
// what detection found whether it can run here, declares what it can serve, and builds it.
// registry.ts lists the descriptors; detection, --check, --vmm and the config keys come from there.
import type { Logger } from "pino";
import type { BackendCapabilities, VmmBackend } from "../ports/index.js";
import type { Accelerator, AcceleratorChoice } from "./accel.js";

/** A binary the backend runs, configurable under `configKey` (camelCase: --kebab-case, PCR_SNAKE). */
export interface BinarySetting {
  readonly configKey: string;
  readonly default: string;
  /** The --help text. */
  readonly help: string;
}

export type BinaryFinding = { found: true; path: string; version: string } | { found: false; reason: string };

export interface Verdict {
  usable: boolean;
  reason: string;
}

/**
 * A probe of whether KVM really runs a vCPU under this backend. Its verdict is reported under
 * `reportKey`; "kvm" is the host's verdict, which a backend without a probe of its own relies on.
 */
export interface KvmProbe {
  readonly reportKey: "kvm" | `${string}Kvm`;
  /** Its line in --check, e.g. "KVM under cloud-hypervisor". */
  readonly label: string;
  /** How a failure of it is named, e.g. "cloud-hypervisor's KVM probe". */
  readonly name: string;
  /** Run with the backend's own binary, as found on this host. */
  run(binaryPath: string, context: { timeoutMs: number; logger?: Logger }): Promise<AcceleratorChoice>;
}

/** What detection found for one backend. */
export interface Sighting {
  /** Its first binary (the VMM); a backend with none (in memory) is always found. */
  binary: BinaryFinding;
  kvm: Verdict;
  /** The KVM verdict is its own probe's (not the host's). */
  ownKvm: boolean;
}

/** The backend's own reading of a sighting. */
export interface Assessment {
  usable: boolean;
  accel: Accelerator;
  /** Why it can (not) run here, one clause. */
  why: string;
}

export interface CreateContext {
  /** Every binary setting's value, by config key (defaults applied). */
  binaries: Readonly<Record<string, string>>;
  accel: Accelerator;
  logger: Logger;
}

export interface BackendModule {
  readonly name: string;
  /** The binaries it runs; the first is the VMM, the one detection looks for. */
  readonly binaries: readonly BinarySetting[];
  /** What to install when it cannot run, e.g. "apt-get install qemu-system-x86". */
  readonly install: string;
  /** `--vmm auto` takes the usable backend with the highest preference. */
  readonly preference: number;
  readonly capabilities: BackendCapabilities;
  /** How the guest mounts a share: "9p" or "virtiofs". */
  readonly shareKind: "9p" | "virtiofs";
  readonly kvmProbe?: KvmProbe;
  detect(sighting: Sighting): Assessment;
  /** Builds the backend (its implementation is loaded only now: detection and --help stay light). */
  create(context: CreateContext): Promise<VmmBackend>;
}
