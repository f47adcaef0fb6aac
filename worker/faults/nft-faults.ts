// Partition and packet loss with nftables: per fault, two netdev base chains hooked on the VM's TAP
// (ingress: frames from the guest, egress: frames to it), in a table of their own so the worker's
// networking tables never change. Clearing deletes exactly those chains (and the table once empty).
import { type Command, Nft, type Statement, drop, field, prefix } from "../net/nft.js";
import type { NftFault } from "../core/fault-model.js";
import type { Runner } from "../net/run.js";
import { NFT_SESSION, ToolSession } from "../net/session.js";

export const FAULT_TABLE = "procurator_faults";
const table = { family: "netdev" as const, table: FAULT_TABLE };
/** Before anything else on the device. */
const PRIORITY = -500;

const chainNames = (faultId: string) => {
  const base = faultId.replace(/[^A-Za-z0-9_]/g, "_");
  return { from: `${base}_from_vm`, to: `${base}_to_vm` };
};

/** Statements of the rules per direction; `towardsVm` picks which address is the far end. */
function rules(fault: NftFault, towardsVm: boolean): Statement[][] {
  const cidrs = fault.cidrs ?? [];
  const far = field("ip", towardsVm ? "saddr" : "daddr");
  const fromFar = (cidr: string): Statement => ({ match: { op: "==", left: far, right: prefix(cidr) } });
  if (fault.kind === "loss") {
    // Resolution of 0.01 %: numgen draws from [0, 10000).
    const threshold = Math.round(fault.percent * 100);
    const lose: Statement = { match: { op: "<", left: { numgen: { mode: "random", mod: 10_000, offset: 0 } }, right: threshold } };
    return cidrs.length ? cidrs.map((cidr) => [fromFar(cidr), lose, drop]) : [[lose, drop]];
  }
  if (cidrs.length === 0) return [[drop]]; // everything, ARP included
  return cidrs.map((cidr) => [fromFar(cidr), drop]);
}

/** The hooks a fault needs: a one-way partition leaves the other direction alone. */
function directions(fault: NftFault): { towardsVm: boolean }[] {
  const direction = fault.kind === "partition" ? (fault.direction ?? "both") : "both";
  return [...(direction !== "inbound" ? [{ towardsVm: false }] : []), ...(direction !== "outbound" ? [{ towardsVm: true }] : [])];
}

export class NftFaults {
  private readonly nft: Nft;
  /** The chains each fault this process made has, so clearing one needs no listing. */
  private readonly made = new Map<string, string[]>();

  /** A partition of a cluster is several faults at once: they go to one long-lived nft, not a process each. */
  constructor(run: Runner, netns?: string) {
    this.nft = new Nft(run, new ToolSession(NFT_SESSION, { netns }));
  }

  async apply(faultId: string, tap: string, fault: NftFault): Promise<void> {
    const names = chainNames(faultId);
    const commands: Command[] = [{ add: { table: { family: "netdev", name: FAULT_TABLE } } }];
    const chains: string[] = [];
    for (const { towardsVm } of directions(fault)) {
      // ingress: frames the guest sent; egress: frames on their way to it.
      const [name, hook] = towardsVm ? ([names.to, "egress"] as const) : ([names.from, "ingress"] as const);
      chains.push(name);
      commands.push({ add: { chain: { ...table, name, type: "filter", hook, dev: tap, prio: PRIORITY, policy: "accept" } } });
      for (const expr of rules(fault, towardsVm)) commands.push({ add: { rule: { ...table, chain: name, expr } } });
    }
    await this.nft.apply(commands);
    this.made.set(faultId, chains);
  }

  /** Deletes the fault's chains, and the table with the last of them. */
  async clear(faultId: string): Promise<void> {
    const known = this.made.get(faultId);
    this.made.delete(faultId);
    if (known && [...this.made.values()].some((chains) => chains.length > 0)) {
      return this.nft.apply(known.map((name) => ({ delete: { chain: { ...table, name } } }) as Command));
    }
    // The last fault, or one this process did not make: what is there decides.
    const names = chainNames(faultId);
    const present = await this.chains();
    const doomed = [names.from, names.to].filter((name) => present.has(name));
    const commands: Command[] = doomed.map((name) => ({ delete: { chain: { ...table, name } } }) as Command);
    if (present.size > 0 && doomed.length === present.size) {
      commands.push({ delete: { table: { family: "netdev", name: FAULT_TABLE } } });
    }
    await this.nft.apply(commands);
  }

  /** Deletes the whole fault table (every fault's chains); returns the chains it held. */
  async reset(): Promise<string[]> {
    const present = await this.chains();
    this.made.clear();
    if (present.size === 0) return [];
    await this.nft.apply([{ delete: { table: { family: "netdev", name: FAULT_TABLE } } }]);
    return [...present].map((name) => `nft:${name}`);
  }

  /** Chain names in the fault table; empty when the table does not exist. */
  async chains(): Promise<Set<string>> {
    const listing = await this.nft.listIfPresent(["table", "netdev", FAULT_TABLE]);
    return new Set(listing.filter((entry) => "chain" in entry).map((entry) => (entry.chain as { name: string }).name));
  }
}
