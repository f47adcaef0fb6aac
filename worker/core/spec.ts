// Validation of a VM spec at the edge: everything after this trusts a ValidSpec.
import { createHash } from "node:crypto";
import { z } from "zod";
import type { VmSpecInput } from "./api.js";
import { invalidArgument } from "./errors.js";

export const MIB = 1024 * 1024;

/** A spec that passed validation. memoryBytes fits a JS number (bounded by the host's memory). */
export interface ValidSpec {
  hostname: string;
  kernel: string;
  initrd: string;
  image: string;
  cmdline: string;
  cpu: number;
  memoryBytes: number;
  allowedDomains: string[];
  /** Present only when a data disk was asked for, so hashes of specs without one do not change. */
  dataDiskBytes?: number;
  /** Present only in a group, so hashes of specs without one do not change. */
  group?: string;
}

/** Sparse, so this bounds what a guest could fill, not what creating it costs. */
export const MAX_DATA_DISK_BYTES = 64 * 1024 * MIB;

export interface SpecLimits {
  maxCpu: number;
  minMemoryBytes: number;
  maxMemoryBytes: number;
  maxAllowedDomains: number;
}

// Nix's base32 alphabet has no e, o, u, t. Names: nix's allowed store-name characters.
const STORE_PATH = /^\/nix\/store\/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+(\/[A-Za-z0-9+\-._?=]+)*$/;
const HOSTNAME_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i;
// Kernel parameters the worker itself sets; a spec must not override them.
const RESERVED_PARAMS = ["pcr.ip", "pcr.gw", "pcr.dns", "pcr.share", "pcr.hostname", "tsc_early_khz"];
const MAX_CMDLINE = 1536; // x86 COMMAND_LINE_SIZE is 2048; leave room for what the worker adds.

export function isStorePath(path: string): boolean {
  return STORE_PATH.test(path) && !path.split("/").some((part) => part === "." || part === "..");
}

/** The top-level store path of a path inside the store ("/nix/store/abc-foo/bzImage" -> "/nix/store/abc-foo"). */
export function storePathRoot(path: string): string {
  return path.split("/").slice(0, 4).join("/");
}

export function isValidHostname(hostname: string): boolean {
  return hostname.length <= 253 && hostname.split(".").every((label) => HOSTNAME_LABEL.test(label));
}

/** A group name: one host-name label, so `<hostname>.<group>` is a name too. */
export function isValidGroup(group: string): boolean {
  return HOSTNAME_LABEL.test(group);
}

export function validateSpec(input: VmSpecInput, limits: SpecLimits): ValidSpec {
  const problems: string[] = [];
  if (!isValidHostname(input.hostname)) {
    problems.push(`hostname ${JSON.stringify(input.hostname)} is not an RFC 1123 host name`);
  }
  if (!input.kernel) problems.push("kernel is required");
  for (const field of ["kernel", "initrd", "image"] as const) {
    const value = input[field];
    if (value && !isStorePath(value)) {
      problems.push(`${field} ${JSON.stringify(value)} is not a path inside /nix/store`);
    }
  }
  if (!Number.isInteger(input.cpu) || input.cpu < 1 || input.cpu > limits.maxCpu) {
    problems.push(`cpu ${input.cpu} is out of range 1..${limits.maxCpu}`);
  }
  const memory = input.memoryBytes;
  if (memory < BigInt(limits.minMemoryBytes) || memory > BigInt(limits.maxMemoryBytes)) {
    problems.push(`memoryBytes ${memory} is out of range ${limits.minMemoryBytes}..${limits.maxMemoryBytes}`);
  } else if (memory % BigInt(MIB) !== 0n) {
    problems.push(`memoryBytes ${memory} is not a multiple of 1 MiB`);
  }
  if (input.cmdline.length > MAX_CMDLINE) problems.push(`cmdline is longer than ${MAX_CMDLINE} bytes`);
  // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
  if (/[\x00-\x1f\x7f]/.test(input.cmdline)) problems.push("cmdline contains control characters");
  const reserved = input.cmdline.split(/\s+/).find((param) => RESERVED_PARAMS.includes(param.split("=")[0]!));
  if (reserved) problems.push(`cmdline may not set ${reserved.split("=")[0]} (the worker sets it)`);
  if (input.allowedDomains.length > limits.maxAllowedDomains) {
    problems.push(`allowedDomains has ${input.allowedDomains.length} entries, at most ${limits.maxAllowedDomains}`);
  }
  const dataDisk = input.dataDiskBytes ?? 0n;
  if (dataDisk < 0n || dataDisk > BigInt(MAX_DATA_DISK_BYTES)) {
    problems.push(`dataDiskBytes ${dataDisk} is out of range 0..${MAX_DATA_DISK_BYTES}`);
  } else if (dataDisk % BigInt(MIB) !== 0n) {
    problems.push(`dataDiskBytes ${dataDisk} is not a multiple of 1 MiB`);
  }
  const group = input.group ?? "";
  if (group !== "" && !isValidGroup(group)) problems.push(`group ${JSON.stringify(group)} is not a host-name label`);
  if (problems.length > 0) throw invalidArgument(problems.join("; "));
  return canonicalSpec(input);
}

/**
 * The spec as a worker keeps it (a valid input's ValidSpec), without the checks: a fleet gateway,
 * which does not know a host's limits, fingerprints a create's request with it (idempotency.ts).
 */
export function canonicalSpec(input: VmSpecInput): ValidSpec {
  const dataDisk = input.dataDiskBytes ?? 0n;
  const group = input.group ?? "";
  return {
    hostname: input.hostname.toLowerCase(),
    kernel: input.kernel,
    initrd: input.initrd,
    image: input.image,
    cmdline: input.cmdline.trim(),
    cpu: input.cpu,
    memoryBytes: Number(input.memoryBytes),
    allowedDomains: [...input.allowedDomains],
    ...(dataDisk > 0n ? { dataDiskBytes: Number(dataDisk) } : {}),
    ...(group ? { group: group.toLowerCase() } : {}),
  };
}

/** Content hash of a spec: sha256 over a canonical JSON with sorted keys. */
export function specHash(spec: ValidSpec): string {
  const canonical = JSON.stringify(spec, Object.keys(spec).sort());
  return createHash("sha256").update(canonical).digest("hex");
}

const wholeNumber = z.union([z.number().int().nonnegative(), z.string().regex(/^\d+$/, "must be a whole number")]);

/** Exactly what `nix eval --json .#vmSpec` prints; unknown keys are an error, so typos don't pass silently. */
export const vmSpecJsonSchema = z.strictObject({
  hostname: z.string(),
  kernel: z.string(),
  initrd: z.string().default(""),
  image: z.string().default(""),
  cmdline: z.string().default(""),
  allowedDomains: z.array(z.string()).default([]),
  cpu: wholeNumber.default(1),
  memoryBytes: wholeNumber.default(256 * MIB),
  /** Not from nix: added by hand (or --data-disk) for a writable scratch disk. */
  dataDiskBytes: wholeNumber.optional(),
  /** Not from nix either: the group the VM joins (or --group). */
  group: z.string().optional(),
});

/** Parses a spec JSON document into a VmSpecInput; INVALID_ARGUMENT with every problem on bad input. */
export function parseVmSpecJson(text: string): VmSpecInput {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw invalidArgument(`spec is not valid JSON: ${(err as Error).message}`);
  }
  return vmSpecFromObject(raw);
}

export function vmSpecFromObject(raw: unknown): VmSpecInput {
  const parsed = vmSpecJsonSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      const where = issue.path.length ? issue.path.join(".") : "spec";
      return issue.code === "unrecognized_keys" ? `unknown key(s) ${issue.keys.join(", ")}` : `${where}: ${issue.message}`;
    });
    throw invalidArgument(`bad spec: ${problems.join("; ")}`);
  }
  const spec = parsed.data;
  return {
    hostname: spec.hostname,
    kernel: spec.kernel,
    initrd: spec.initrd,
    image: spec.image,
    cmdline: spec.cmdline,
    allowedDomains: spec.allowedDomains,
    cpu: Number(spec.cpu),
    memoryBytes: BigInt(spec.memoryBytes),
    ...(spec.dataDiskBytes !== undefined ? { dataDiskBytes: BigInt(spec.dataDiskBytes) } : {}),
    ...(spec.group ? { group: spec.group } : {}),
  };
}
