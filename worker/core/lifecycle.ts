// The VM lifecycle as one explicit state machine: which status may follow which, and what each status
// allows and holds. Every question the core asks about a status is answered here, once.
// It knows nothing of RPC, VMMs or networks.
import { VM_STATUSES, type VmStatus } from "./api.js";
import { failedPrecondition } from "./errors.js";

/** Which status may follow which. `stopped` and `failed` are final until the VM is deleted. */
export const TRANSITIONS: Readonly<Record<VmStatus, readonly VmStatus[]>> = {
  creating: ["running", "stopping", "failed"],
  running: ["paused", "stopping", "stopped", "failed"],
  paused: ["running", "stopping", "stopped", "failed"],
  stopping: ["stopped", "failed"],
  stopped: [],
  failed: [],
  // A fleet gateway's status for a VM on a host it no longer hears from: no worker goes to or from it.
  lost: [],
};

/** The statuses a worker's own VMs take: every one but `lost`, which only a fleet gateway reports. */
export const WORKER_STATUSES: readonly VmStatus[] = VM_STATUSES.filter((status) => status !== "lost");

/** A status a worker's own VM may be in (say, one read back from disk). */
export function isWorkerStatus(status: unknown): status is VmStatus {
  return (WORKER_STATUSES as readonly unknown[]).includes(status);
}

/** A VM comes into being only as `creating` (`from` undefined: not yet known to anyone). */
export function canTransition(from: VmStatus | undefined, to: VmStatus): boolean {
  return from === undefined ? to === "creating" : TRANSITIONS[from].includes(to);
}

export function assertTransition(id: string, from: VmStatus | undefined, to: VmStatus): void {
  if (!canTransition(from, to)) {
    throw failedPrecondition(`vm ${id} cannot go from ${from ?? "nothing"} to ${to}`);
  }
}

/**
 * What a VM may hold besides its VMM, record and console. A transition releases what the new status
 * does not hold, in HOLDINGS order (faults hang on the TAP the network detach removes).
 */
export type Holding = "ttl" | "agent" | "faults" | "secrets" | "network" | "cage";
export const HOLDINGS: readonly Holding[] = ["ttl", "agent", "faults", "secrets", "network", "cage"];

interface StatusTraits {
  /** The VMM should be alive. */
  live: boolean;
  /** The guest is up, paused or not. */
  guestUp: boolean;
  /** What a VM in this status holds. */
  holds: readonly Holding[];
}

const TRAITS: Readonly<Record<VmStatus, StatusTraits>> = {
  // The create plan acquires secrets and network step by step (and undoes them itself on failure).
  creating: { live: true, guestUp: false, holds: ["secrets", "network", "cage"] },
  running: { live: true, guestUp: true, holds: HOLDINGS },
  paused: { live: true, guestUp: true, holds: HOLDINGS },
  // Freed while the guest powers off: nothing of it needs the VMM gone, but its cage (a cgroup
  // goes once its processes have).
  stopping: { live: true, guestUp: false, holds: ["cage"] },
  stopped: { live: false, guestUp: false, holds: [] },
  failed: { live: false, guestUp: false, holds: [] },
  // Never a worker's: whatever the VM holds, it holds on a host this process cannot see.
  lost: { live: false, guestUp: false, holds: [] },
};

/** A VM whose VMM should be alive: it counts against the host's vCPU, memory and VM limits, and has an uptime. */
export function isLive(status: VmStatus): boolean {
  return TRAITS[status].live;
}

/** Faults may be injected into a VM in this status. */
export function acceptsFaults(status: VmStatus): boolean {
  return TRAITS[status].guestUp;
}

/** The VMM's I/O counters are worth sampling (the guest is up). */
export function hasCounters(status: VmStatus): boolean {
  return TRAITS[status].guestUp;
}

/** The guest can see the power button: a delete asks it to power off instead of killing the VMM at once. */
export function hearsPowerButton(status: VmStatus): boolean {
  return status === "running";
}

/** The VMM exiting ends the VM on its own (while stopping it is what was asked for; after the end, old news). */
export function exitEndsVm(status: VmStatus): boolean {
  return status === "creating" || TRAITS[status].guestUp;
}

/** Whether a VM in this status holds `what`. */
export function holds(status: VmStatus, what: Holding): boolean {
  return TRAITS[status].holds.includes(what);
}
