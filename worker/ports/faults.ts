// Fault ports: network faults on a TAP and CPU limits on a process (worker/faults/). The faults
// themselves are parts of the one union in core/fault-model.ts.
import type { NetFault } from "../core/fault-model.js";

export type { NetFault };

/** Network faults on one VM's TAP, each one removable on its own. */
export interface NetFaultPort {
  /** Throws FAILED_PRECONDITION with the reason when this host cannot do it (e.g. no sch_netem). */
  apply(faultId: string, tap: string, fault: NetFault): Promise<void>;
  /** Removes exactly what apply added. Idempotent. */
  clear(faultId: string, tap: string, fault: NetFault): Promise<void>;
  /** After a restart: removes every fault rule and shaping qdisc (on these TAPs) a worker left. */
  reset(taps: string[]): Promise<string[]>;
}

/** CPU limits on a VMM process. */
export interface CpuThrottlePort {
  /** Throws FAILED_PRECONDITION with the reason when the host has no usable cgroup v2 cpu controller. */
  throttle(faultId: string, pid: number, percent: number): Promise<void>;
  /** Lifts the limit and puts the process back where it was. Idempotent. */
  clear(faultId: string, pid: number): Promise<void>;
  /** After a restart: lifts every limit a worker left (processes back to the root, cgroups removed). */
  reset(): Promise<string[]>;
}
