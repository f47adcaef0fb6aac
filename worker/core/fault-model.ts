// The fault model, defined once: the zod schema is the union (the types are inferred from it), and
// every narrower fault type — the network port's, nft's, tc's, the VMM's disk-error rule — is a part
// of it. The core validates with it; the adapters, the RPC codec and the CLI use its types. The
// zod-free names (FAULT_KINDS, DISK_OPS) are in api.ts. docs/faults.md.
import { z } from "zod";
import { DIRECTIONS, DISK_OPS, type FaultName } from "./api.js";
import { invalidArgument } from "./errors.js";

const cidr = z.string().regex(/^(\d{1,3})(\.\d{1,3}){3}(\/(\d|[12]\d|3[0-2]))?$/, "must be an IPv4 address or CIDR");
const percent = z.number().min(0).max(100);
const DAY_MS = 24 * 3600 * 1000;

/** A guest's pid (Linux's largest pid_max is 2^22); 0: none, by name. Pid 1 is the guest's init. */
const guestPid = z
  .number()
  .int()
  .min(0)
  .max(2 ** 22)
  .refine((pid) => pid !== 1, "pid 1 (the guest's init) is never signalled");
/** A process name as the agent matches it: /proc/<pid>/comm or argv[0]'s base name; "": none, by pid. */
const processName = z
  .string()
  .max(255)
  .regex(/^[^/\0]*$/, "must be a base name (no '/' or NUL)");
const guestProcess = z.object({ pid: guestPid, name: processName });
const onePidOrName = (value: { pid: number; name: string }, ctx: z.RefinementCtx) => {
  if ((value.pid === 0) === (value.name === "")) ctx.addIssue({ code: "custom", message: "needs exactly one of pid and name" });
};
/** A clock step: non-zero, at most ten years either way. */
const clockStep = z
  .number()
  .int()
  .min(-3660 * DAY_MS)
  .max(3660 * DAY_MS)
  .refine((ms) => ms !== 0, "must not be 0");
const guestPath = z
  .string()
  .max(4096)
  .regex(/^\/[^\0]*$/, "must be an absolute path in the guest");

/**
 * One fault. The members are in the order of schema/worker.capnp's Fault union, as FAULT_KINDS
 * (the wire's tags) lists them.
 */
export const faultKindSchema = z.discriminatedUnion("kind", [
  // Drops traffic to and from these addresses (all traffic when empty); absent direction: both ways.
  z.object({ kind: z.literal("partition"), cidrs: z.array(cidr).max(256), direction: z.enum(DIRECTIONS).optional() }),
  // Drops this share of packets, each way; only those to and from `cidrs` when given.
  z.object({ kind: z.literal("loss"), percent: percent.refine((p) => p > 0, "must be above 0"), cidrs: z.array(cidr).max(256).optional() }),
  // Delays packets towards the guest; only those from `cidrs` when given.
  z.object({
    kind: z.literal("delay"),
    ms: z.number().int().min(1).max(60_000),
    jitterMs: z.number().int().min(0).max(60_000),
    cidrs: z.array(cidr).max(256).optional(),
  }),
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
  // In the guest, through its agent (agent/faults.go). Signals the process `pid`, or every process
  // named `name` (comm or argv[0]'s base name); never init, the agent or kernel threads.
  guestProcess.extend({ kind: z.literal("killProcess"), signal: z.number().int().min(1).max(64) }).superRefine(onePidOrName),
  // SIGSTOP to the same; clearing it sends SIGCONT to the processes it stopped.
  guestProcess.extend({ kind: z.literal("freezeProcess") }).superRefine(onePidOrName),
  // Steps the guest's realtime clock once; clearing it steps back.
  z.object({ kind: z.literal("clockShift"), deltaMs: clockStep }),
  // Steps the clock +deltaMs and back every periodMs; clearing it leaves the clock where it began.
  z.object({ kind: z.literal("clockStrobe"), deltaMs: clockStep, periodMs: z.number().int().min(50).max(3600_000) }),
  // Writes a file in the guest's directory `dir` until its filesystem is full; clearing it frees that.
  z.object({ kind: z.literal("fillDisk"), dir: guestPath }),
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

/** Faults made inside the guest by its agent. */
export type GuestFaultKind = Extract<FaultKind, { kind: "killProcess" | "freezeProcess" | "clockShift" | "clockStrobe" | "fillDisk" }>;
const GUEST_FAULTS: ReadonlySet<FaultName> = new Set<FaultName>(["killProcess", "freezeProcess", "clockShift", "clockStrobe", "fillDisk"]);

export function isGuestFault(fault: FaultKind): fault is GuestFaultKind {
  return GUEST_FAULTS.has(fault.kind);
}

const INSTANT_FAULTS: ReadonlySet<FaultName> = new Set<FaultName>(["resume", "killVmm", "powerOff", "reboot", "killProcess"]);

/** Done at once and never listed as active (there is nothing to undo). */
export function isInstant(kind: FaultName): boolean {
  return INSTANT_FAULTS.has(kind);
}

export function describeFault(fault: FaultKind): string {
  switch (fault.kind) {
    case "partition": {
      const far = fault.cidrs.length ? fault.cidrs.join(", ") : "everything";
      if (fault.direction === "outbound") return `partition: drops what it sends to ${far}`;
      if (fault.direction === "inbound") return `partition: drops what it receives from ${far}`;
      return `partition from ${far}`;
    }
    case "loss":
      return `loss ${fault.percent}% each way${peers(fault.cidrs, "to and from")}`;
    case "delay":
      return `delay ${fault.ms} ms${fault.jitterMs ? ` ± ${fault.jitterMs} ms` : ""} towards the guest${peers(fault.cidrs, "from")}`;
    case "bandwidth":
      return `bandwidth ${fault.kbitPerSecond} kbit/s towards the guest`;
    case "diskErrors": {
      const after = fault.afterOps ? ` after ${fault.afterOps} more ops` : "";
      const odds = fault.probabilityPercent > 0 && fault.probabilityPercent < 100 ? ` on ${fault.probabilityPercent}% of 4 KiB blocks` : "";
      return `disk errors (errno ${fault.errno || 5}) on ${fault.op === "readWrite" ? "reads and writes" : `${fault.op}s`}${after}${odds}`;
    }
    case "cpuThrottle":
      return `cpu throttled to ${fault.percent}% of one CPU`;
    case "killProcess":
      return `signal ${fault.signal} to ${fault.pid ? `pid ${fault.pid}` : `processes named ${JSON.stringify(fault.name)}`}`;
    case "freezeProcess":
      return `frozen: ${fault.pid ? `pid ${fault.pid}` : `processes named ${JSON.stringify(fault.name)}`}`;
    case "clockShift":
      return `guest clock ${signedMs(fault.deltaMs)}`;
    case "clockStrobe":
      return `guest clock strobed ${signedMs(fault.deltaMs)} and back every ${fault.periodMs} ms`;
    case "fillDisk":
      return `guest filesystem of ${fault.dir} filled`;
    default:
      return fault.kind;
  }
}

const peers = (cidrs: string[] | undefined, relation: string): string => (cidrs?.length ? `, ${relation} ${cidrs.join(", ")}` : "");
const signedMs = (ms: number): string => `${ms > 0 ? "+" : ""}${ms} ms`;
