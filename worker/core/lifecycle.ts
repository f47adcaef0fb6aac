// The VM lifecycle as one explicit state machine. It knows nothing of RPC, VMMs or networks.
import type { VmStatus } from "./api.js";
import { failedPrecondition } from "./errors.js";

/** Which status may follow which. `stopped` and `failed` are final until the VM is deleted. */
export const TRANSITIONS: Readonly<Record<VmStatus, readonly VmStatus[]>> = {
  creating: ["running", "stopping", "failed"],
  running: ["paused", "stopping", "stopped", "failed"],
  paused: ["running", "stopping", "stopped", "failed"],
  stopping: ["stopped", "failed"],
  stopped: [],
  failed: [],
};

export function canTransition(from: VmStatus, to: VmStatus): boolean {
  return TRANSITIONS[from].includes(to);
}

export function assertTransition(id: string, from: VmStatus, to: VmStatus): void {
  if (!canTransition(from, to)) {
    throw failedPrecondition(`vm ${id} cannot go from ${from} to ${to}`);
  }
}

/** A VM whose VMM should be alive. */
export function isLive(status: VmStatus): boolean {
  return status === "creating" || status === "running" || status === "paused" || status === "stopping";
}
