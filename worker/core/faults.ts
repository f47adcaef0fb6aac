// Fault injection over the ports: validates a fault, applies it to one VM, remembers how to undo it,
// and undoes it on clear, on expiry (durationMs) or when the VM goes away. docs/faults.md.
import { randomBytes } from "node:crypto";
import type { Logger } from "pino";
import { z } from "zod";
import type { ActiveFault, FaultInput, FaultKind, VmStatus } from "./api.js";
import { DISK_OPS } from "./api.js";
import { asWorkerError, failedPrecondition, invalidArgument, notFound } from "./errors.js";
import type { BackendName, CpuThrottlePort, NetFault, NetFaultPort, VmmHandle } from "../ports/index.js";

export interface FaultPorts {
  net?: NetFaultPort;
  cpu?: CpuThrottlePort;
}

/** What the controller may see and do of one VM; the service builds it. */
export interface FaultTarget {
  id: string;
  status: VmStatus;
  backend: BackendName;
  handle?: VmmHandle;
  tap?: string;
  /** Pauses or resumes the guest and moves the VM through the lifecycle. */
  setPaused(paused: boolean): Promise<void>;
}

const cidr = z.string().regex(/^(\d{1,3})(\.\d{1,3}){3}(\/(\d|[12]\d|3[0-2]))?$/, "must be an IPv4 address or CIDR");
const percent = z.number().min(0).max(100);
const DAY_MS = 24 * 3600 * 1000;

/** The faults the worker accepts; everything past this trusts the values. */
const faultSchema = z
  .discriminatedUnion("kind", [
    z.object({ kind: z.literal("partition"), cidrs: z.array(cidr).max(256) }),
    z.object({ kind: z.literal("loss"), percent: percent.refine((p) => p > 0, "must be above 0") }),
    z.object({ kind: z.literal("delay"), ms: z.number().int().min(1).max(60_000), jitterMs: z.number().int().min(0).max(60_000) }),
    z.object({ kind: z.literal("bandwidth"), kbitPerSecond: z.number().int().min(8).max(100_000_000) }),
    z.object({ kind: z.literal("pause") }),
    z.object({ kind: z.literal("resume") }),
    z.object({ kind: z.literal("killVmm") }),
    z.object({ kind: z.literal("powerOff") }),
    z.object({ kind: z.literal("reboot") }),
    z.object({
      kind: z.literal("diskErrors"),
      op: z.enum(DISK_OPS as [string, ...string[]]),
      errno: z.number().int().min(0).max(4095),
      afterOps: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
      probabilityPercent: percent,
    }),
    z.object({ kind: z.literal("cpuThrottle"), percent: z.number().int().min(1).max(100_000) }),
  ])
  .and(z.object({ durationMs: z.number().int().min(0).max(DAY_MS).optional() }));

export function validateFault(input: FaultInput): FaultInput {
  const parsed = faultSchema.safeParse(input);
  if (!parsed.success) {
    throw invalidArgument(`bad ${input.kind ?? "fault"}: ${parsed.error.issues.map((i) => `${i.path.join(".") || "fault"}: ${i.message}`).join("; ")}`);
  }
  return parsed.data as FaultInput;
}

const INSTANT = new Set<FaultKind["kind"]>(["resume", "killVmm", "powerOff", "reboot"]);

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

interface Entry {
  view: ActiveFault;
  fault: FaultKind;
  timer?: NodeJS.Timeout;
  /** Undoes the fault; the VMM may be gone already. */
  undo(target: FaultTarget): Promise<void>;
}

export class FaultController {
  private readonly byVm = new Map<string, Map<string, Entry>>();

  constructor(
    private readonly ports: FaultPorts,
    private readonly log: Logger,
    /** Called when a fault's durationMs is over; the service clears it in the VM's queue. */
    private readonly onExpired: (vmId: string, faultId: string) => void,
  ) {}

  /**
   * After a worker restart: faults are not kept across one, so whatever a previous worker applied
   * (rules, qdiscs, cgroups, filters inside the VMMs) is removed and the VMs run unfaulted.
   */
  async resetAfterRestart(handles: VmmHandle[], taps: string[]): Promise<string[]> {
    const attempts: Promise<string[]>[] = [
      this.ports.net?.reset(taps) ?? Promise.resolve([]),
      this.ports.cpu?.reset() ?? Promise.resolve([]),
      ...handles.map((handle) => handle.resetFaults?.() ?? Promise.resolve([])),
    ];
    const removed: string[] = [];
    for (const attempt of attempts) {
      removed.push(
        ...(await attempt.catch((err) => {
          this.log.warn({ err: asWorkerError(err).message }, "cannot remove a fault left by a previous worker");
          return [];
        })),
      );
    }
    return removed;
  }

  list(vmId: string): ActiveFault[] {
    return [...(this.byVm.get(vmId)?.values() ?? [])].map((entry) => ({ ...entry.view }));
  }

  async inject(target: FaultTarget, input: FaultInput): Promise<string> {
    const fault = validateFault(input);
    if (target.status !== "running" && target.status !== "paused") {
      throw failedPrecondition(`vm ${target.id} is ${target.status}; faults need a running or paused VM`);
    }
    const handle = target.handle;
    if (!handle) throw failedPrecondition(`vm ${target.id} has no VMM attached`);
    const faultId = `fault-${randomBytes(4).toString("hex")}`;
    const log = this.log.child({ vmId: target.id, faultId, fault: fault.kind });

    const undo = await this.apply(target, handle, faultId, fault);
    if (INSTANT.has(fault.kind)) {
      log.info({ description: describeFault(fault) }, "instant fault injected");
      return faultId;
    }
    const now = Date.now();
    const durationMs = fault.durationMs ?? 0;
    const entry: Entry = {
      fault,
      undo: undo!,
      view: {
        id: faultId,
        kind: fault.kind,
        description: describeFault(fault),
        injectedAtMs: BigInt(now),
        expiresAtMs: durationMs > 0 ? BigInt(now + durationMs) : 0n,
      },
    };
    if (durationMs > 0) {
      entry.timer = setTimeout(() => this.onExpired(target.id, faultId), durationMs);
      entry.timer.unref();
    }
    let faults = this.byVm.get(target.id);
    if (!faults) this.byVm.set(target.id, (faults = new Map()));
    faults.set(faultId, entry);
    log.info({ description: entry.view.description, durationMs }, "fault injected");
    return faultId;
  }

  async clear(target: FaultTarget, faultId: string): Promise<void> {
    const entry = this.byVm.get(target.id)?.get(faultId);
    if (!entry) throw notFound(`vm ${target.id} has no active fault ${JSON.stringify(faultId)}`);
    await entry.undo(target);
    this.forget(target.id, faultId);
    this.log.info({ vmId: target.id, faultId, fault: entry.fault.kind }, "fault cleared");
  }

  /** The VM is going away (or gone): undo what can still be undone, never throw. */
  async clearAll(target: FaultTarget): Promise<void> {
    for (const faultId of [...(this.byVm.get(target.id)?.keys() ?? [])]) {
      await this.clear(target, faultId).catch((err) => {
        this.log.warn({ vmId: target.id, faultId, err: asWorkerError(err).message }, "fault clear failed");
        this.forget(target.id, faultId);
      });
    }
  }

  private forget(vmId: string, faultId: string): void {
    const faults = this.byVm.get(vmId);
    clearTimeout(faults?.get(faultId)?.timer);
    faults?.delete(faultId);
    if (faults?.size === 0) this.byVm.delete(vmId);
  }

  /** Applies the fault; returns its undo (undefined for instant faults). */
  private async apply(target: FaultTarget, handle: VmmHandle, faultId: string, fault: FaultKind): Promise<((t: FaultTarget) => Promise<void>) | undefined> {
    const unsupported = (what: string) => failedPrecondition(`${fault.kind} is not supported on ${target.backend}: ${what}`);
    switch (fault.kind) {
      case "partition":
      case "loss":
      case "delay":
      case "bandwidth": {
        const net = this.ports.net;
        const tap = target.tap;
        if (!net || !tap) throw failedPrecondition(`${fault.kind} needs the VM's network, and vm ${target.id} has none (networking disabled?)`);
        const netFault = fault as NetFault;
        try {
          await net.apply(faultId, tap, netFault);
        } catch (err) {
          // No sch_netem on this host: the VMM can hold packets itself (QEMU's filter-redirector).
          if (fault.kind !== "delay" || asWorkerError(err).code !== "FAILED_PRECONDITION" || !handle.delayNetwork || !handle.clearNetworkDelay) throw err;
          await handle.delayNetwork(faultId, { ms: fault.ms, jitterMs: fault.jitterMs });
          return () => handle.clearNetworkDelay!(faultId);
        }
        return () => net.clear(faultId, tap, netFault);
      }
      case "pause":
        if (target.status === "paused") throw failedPrecondition(`vm ${target.id} is already paused`);
        await target.setPaused(true);
        return async (t) => {
          if (t.status === "paused") await t.setPaused(false);
        };
      case "resume":
        if (target.status !== "paused") throw failedPrecondition(`vm ${target.id} is not paused`);
        await target.setPaused(false);
        for (const [id, entry] of this.byVm.get(target.id) ?? []) if (entry.fault.kind === "pause") this.forget(target.id, id);
        return undefined;
      case "killVmm":
        await handle.kill();
        return undefined;
      case "powerOff":
        if (!handle.powerOff) throw unsupported("no hard power off");
        await handle.powerOff();
        return undefined;
      case "reboot":
        if (!handle.reset) throw unsupported("no hard reset");
        await handle.reset();
        return undefined;
      case "diskErrors": {
        if (!handle.injectDiskErrors || !handle.clearDiskErrors) {
          throw unsupported("it has no runtime block-error injection (QEMU's blkdebug has no equivalent there); use the QEMU backend");
        }
        const active = [...(this.byVm.get(target.id)?.values() ?? [])].find((entry) => entry.fault.kind === "diskErrors");
        if (active) throw failedPrecondition(`a diskErrors fault (${active.view.id}) is already active on vm ${target.id}; clear it first`);
        await handle.injectDiskErrors(faultId, { ...fault, errno: fault.errno || 5 });
        return () => handle.clearDiskErrors!(faultId);
      }
      case "cpuThrottle": {
        const cpu = this.ports.cpu;
        if (!cpu) throw failedPrecondition("cpuThrottle is not available on this worker");
        if ([...(this.byVm.get(target.id)?.values() ?? [])].some((entry) => entry.fault.kind === "cpuThrottle")) {
          throw failedPrecondition(`a cpuThrottle fault is already active on vm ${target.id}; clear it first`);
        }
        const pid = handle.record.pid;
        await cpu.throttle(faultId, pid, fault.percent);
        return () => cpu.clear(faultId, pid);
      }
    }
  }
}
