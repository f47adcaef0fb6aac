// The fault model, defined once: the zod schema is the union (the types are inferred from it), and
// every narrower fault type — the network port's, nft's, tc's, the VMM's disk-error rule — is a part
// of it. The core validates with it; the adapters, the RPC codec and the CLI use its types. The
// zod-free names (FAULT_KINDS, DISK_OPS) are in api.ts. docs/faults.md.
import { z } from "zod";
import { DISK_OPS, type FaultName } from "./api.js";
import { invalidArgument } from "./errors.js";

const cidr = z.string().regex(/^(\d{1,3})(\.\d{1,3}){3}(\/(\d|[12]\d|3[0-2]))?$/, "must be an IPv4 address or CIDR");
const percent = z.number().min(0).max(100);
const DAY_MS = 24 * 3600 * 1000;

/**
 * One fault. The members are in the order of schema/worker.capnp's Fault union, as FAULT_KINDS
 * (the wire's tags) lists them.
 */
export const faultKindSchema = z.discriminatedUnion("kind", [
  // Drops traffic to and from these addresses (all traffic when empty).
  z.object({ kind: z.literal("partition"), cidrs: z.array(cidr).max(256) }),
  // Drops this share of packets, each way.
  z.object({ kind: z.literal("loss"), percent: percent.refine((p) => p > 0, "must be above 0") }),
  // Delays packets towards the guest.
  z.object({ kind: z.literal("delay"), ms: z.number().int().min(1).max(60_000), jitterMs: z.number().int().min(0).max(60_000) }),
  // Limits the rate towards the guest.
  z.object({ kind: z.literal("bandwidth"), kbitPerSecond: z.number().int().min(8).max(100_000_000) }),
  z.object({ kind: z.literal("pause") }),
  z.object({ kind: z.literal("resume") }),
  z.object({ kind: z.literal("killVmm") }),
  z.object({ kind: z.literal("powerOff") }),
  z.object({ kind: z.literal("reboot") }),
  z.object({
    kind: z.literal("diskErrors"),
    op: z.enum(DISK_OPS),
    // 0 means EIO.
    errno: z.number().int().min(0).max(4095),
    // Failing starts after this many more operations of that kind (0: at once).
    afterOps: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    // 0 or 100: every request; else each 4 KiB block fails with this probability (a seeded bad-block map).
    probabilityPercent: percent,
  }),
  // Limits the VMM process to this share of one CPU.
  z.object({ kind: z.literal("cpuThrottle"), percent: z.number().int().min(1).max(100_000) }),
]);

/** A fault as the worker accepts it: one member of the union, and how long it lasts. */
export const faultInputSchema = faultKindSchema.and(
  // Clears itself after this long; 0 or absent: until cleared.
  z.object({ durationMs: z.number().int().min(0).max(DAY_MS).optional() }),
);

export type FaultKind = z.infer<typeof faultKindSchema>;
export type FaultInput = z.infer<typeof faultInputSchema>;

type Assert<T extends true> = T;
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
/** Compiles only while the schema has exactly the kinds of FAULT_KINDS (the wire's list). */
export type SchemaKindsAreFaultKinds = Assert<Same<FaultKind["kind"], FaultName>>;

/** Parses a fault from outside; INVALID_ARGUMENT naming every problem. Everything past this trusts the values. */
export function validateFault(input: FaultInput): FaultInput {
  const parsed = faultInputSchema.safeParse(input);
  if (!parsed.success) {
    throw invalidArgument(
      `bad ${input.kind ?? "fault"}: ${parsed.error.issues.map((i) => `${i.path.join(".") || "fault"}: ${i.message}`).join("; ")}`,
    );
  }
  return parsed.data;
}

// The narrower views the adapters take, each a part of the one union.
/** Faults on a VM's TAP (the network fault port). */
export type NetFault = Extract<FaultKind, { kind: "partition" | "loss" | "delay" | "bandwidth" }>;
/** Network faults nftables rules make. */
export type NftFault = Extract<NetFault, { kind: "partition" | "loss" }>;
/** Network faults a tc qdisc makes. */
export type TcFault = Extract<NetFault, { kind: "delay" | "bandwidth" }>;
/** What a VMM is told to fail on its data disk. */
export type DiskErrorRule = Omit<Extract<FaultKind, { kind: "diskErrors" }>, "kind">;

const INSTANT_FAULTS: ReadonlySet<FaultName> = new Set<FaultName>(["resume", "killVmm", "powerOff", "reboot"]);

/** Done at once and never listed as active (there is nothing to undo). */
export function isInstant(kind: FaultName): boolean {
  return INSTANT_FAULTS.has(kind);
}

export function describeFault(fault: FaultKind): string {
  switch (fault.kind) {
    case "partition":
      return fault.cidrs.length ? `partition from ${fault.cidrs.join(", ")}` : "partition from everything";
    case "loss":
      return `loss ${fault.percent}% each way`;
    case "delay":
      return `delay ${fault.ms} ms${fault.jitterMs ? ` ± ${fault.jitterMs} ms` : ""} towards the guest`;
    case "bandwidth":
      return `bandwidth ${fault.kbitPerSecond} kbit/s towards the guest`;
    case "diskErrors": {
      const after = fault.afterOps ? ` after ${fault.afterOps} more ops` : "";
      const odds = fault.probabilityPercent > 0 && fault.probabilityPercent < 100 ? ` on ${fault.probabilityPercent}% of 4 KiB blocks` : "";
      return `disk errors (errno ${fault.errno || 5}) on ${fault.op === "readWrite" ? "reads and writes" : `${fault.op}s`}${after}${odds}`;
    }
    case "cpuThrottle":
      return `cpu throttled to ${fault.percent}% of one CPU`;
    default:
      return fault.kind;
  }
}
