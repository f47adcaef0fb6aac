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

export interface NetCounters {
  rxBytes: bigint;
  txBytes: bigint;
  rxPackets: bigint;
  txPackets: bigint;
}

export interface NetworkPort {
  /** Bridge, table, NAT: idempotent, run at start. `existing` are the VMs to keep (rebuilt without duplicates). */
  init(existing: { vmId: string; net: VmNetwork; allowedDomains: string[] }[]): Promise<void>;
  /** Throws INVALID_ARGUMENT for a bad allowedDomains entry, before anything is made. */
  validateAllowedDomains(allowedDomains: string[]): void;
  /** Allocates address and MAC, creates the TAP, the chain and the set. */
  attach(vmId: string, allowedDomains: string[]): Promise<VmNetwork>;
  /** Removes TAP, chain, set and lease. Idempotent: missing pieces are fine. */
  detach(vmId: string): Promise<void>;
  /** Guest kernel parameters that tell the test guest its address. */
  guestCmdline(net: VmNetwork): string[];
  counters(vmId: string): Promise<{ net: NetCounters; egressDrops: bigint }>;
  /** Removes TAPs and chains of VMs not in `known`. Returns what was removed. */
  removeOrphans(known: Set<string>): Promise<string[]>;
  close(): Promise<void>;
}
