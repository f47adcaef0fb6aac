// The network port: TAP, address, egress allowlist and counters per VM (worker/net/).

/** What the network adapter set up for one VM. Persisted in the VM record. */
export interface VmNetwork {
  tap: string;
  mac: string;
  ip: string;
  prefixLength: number;
  gateway: string;
  dns: string;
}

/** The MAC a pooled guest's NIC is launched with; the claim gives the guest its own (macForIp). */
export const PARKED_MAC = "02:70:63:72:00:00";

export interface NetCounters {
  rxBytes: bigint;
  txBytes: bigint;
  rxPackets: bigint;
  txPackets: bigint;
}

/** A VM's place in a group: members reach each other on every port and resolve each other's names. */
export interface GroupMembership {
  group: string;
  hostname: string;
}

/** A VM the network keeps across a restart. */
export interface AttachedVm {
  vmId: string;
  net: VmNetwork;
  allowedDomains: string[];
  member?: GroupMembership;
}

export interface NetworkPort {
  /** Bridge, table, NAT: idempotent, run at start. `existing` are the VMs to keep (rebuilt without duplicates). */
  init(existing: AttachedVm[]): Promise<void>;
  /** Throws INVALID_ARGUMENT for a bad allowedDomains entry, before anything is made. */
  validateAllowedDomains(allowedDomains: string[]): void;
  /**
   * Allocates address and MAC, creates the TAP, the chain and the set; with `member`, joins the
   * group (ALREADY_EXISTS when a member of it has that hostname).
   */
  attach(vmId: string, allowedDomains: string[], member?: GroupMembership, options?: { parked?: boolean }): Promise<VmNetwork>;
  /**
   * A TAP for a pooled VM, on no bridge and with no address: the VMM opens it at launch, and the
   * claim's attach (with `parked`) puts it on the bridge. The guest's NIC has PARKED_MAC until then.
   */
  park(vmId: string): Promise<{ tap: string; mac: string }>;
  /** Removes a parked TAP that was never attached. Idempotent. */
  unpark(vmId: string): Promise<void>;
  /** Removes TAP, chain, set and lease. Idempotent: missing pieces are fine. */
  detach(vmId: string): Promise<void>;
  /** Guest kernel parameters that tell the test guest its address. */
  guestCmdline(net: VmNetwork): string[];
  counters(vmId: string): Promise<{ net: NetCounters; egressDrops: bigint }>;
  /** Removes TAPs and chains of VMs not in `known`. Returns what was removed. */
  removeOrphans(known: Set<string>): Promise<string[]>;
  close(): Promise<void>;
}
