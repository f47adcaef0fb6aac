// Fault ports: network faults on a TAP and CPU limits on a process (worker/faults/).

/** Network faults on one VM's TAP, each one removable on its own (worker/faults/). */
export type NetFault =
  | { kind: "partition"; cidrs: string[] }
  | { kind: "loss"; percent: number }
  | { kind: "delay"; ms: number; jitterMs: number }
  | { kind: "bandwidth"; kbitPerSecond: number };

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

