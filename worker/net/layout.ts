// The worker's nftables layout: two tables it owns (`inet procurator`, `bridge procurator`),
// fixed base chains that dispatch through verdict maps, and a few objects per VM. Adding or
// removing a VM touches only its own objects and one element per map, so the cost stays flat.
// docs/networking.md explains the layout.
import {
  accept,
  type Command,
  drop,
  eq,
  field,
  goTo,
  jump,
  meta,
  ne,
  prefix,
  type RuleSpec,
  type Statement,
  type TableRef,
} from "./nft.js";

export const TABLE = "procurator";
const inet: TableRef = { family: "inet", table: TABLE };
const bridgeFamily: TableRef = { family: "bridge", table: TABLE };

export interface LayoutConfig {
  bridge: string;
  /** CIDR of the VM subnet, e.g. 10.213.0.0/16. */
  subnet: string;
  /** Whether the worker's DNS proxy serves guests (on the gateway, UDP 53). */
  dnsProxy: boolean;
  /** Interface NAT goes out of; without it, anything but the bridge. */
  uplink?: string;
  /** TCP ports on the host that guests may connect to, on the gateway address only. */
  hostAllowedPorts: number[];
  /** The bridge's address: the guests' gateway. */
  gateway: string;
}

export interface VmRules {
  vmId: string;
  tap: string;
  ip: string;
  mac: string;
  /** Literal addresses and CIDRs from allowedDomains, non-overlapping. */
  cidrs: string[];
  /** The VM's group: its members reach each other, routed by the host. */
  group?: string;
}

/** Per-VM object names; the vmId is recoverable from each (see vmIdOf). */
export const names = (vmId: string) => ({
  egress: `egress_${vmId}`,
  deny: `deny_${vmId}`,
  allow: `allow_${vmId}`,
  nets: `nets_${vmId}`,
  drops: `drops_${vmId}`,
  guard: `guard_${vmId}`,
});

const PER_VM = /^(?:egress|deny|allow|nets|drops|guard)_(.+)$/;
export const vmIdOf = (objectName: string): string | undefined => PER_VM.exec(objectName)?.[1];

/** Per-group object names: a chain that accepts traffic to the group's members, and their set. */
export const groupNames = (group: string) => ({ chain: `group_${group}`, members: `members_${group}` });

const rule = (table: TableRef, chain: string, ...expr: Statement[]): Command => ({ add: { rule: { ...table, chain, expr } as RuleSpec } });
const fromBridge = (config: LayoutConfig) => eq(meta("iifname"), config.bridge);
const ctEstablished: Statement = { match: { op: "in", left: { ct: { key: "state" } }, right: ["established", "related"] } };

/** Recreates both tables from nothing in one transaction: no duplicates, no window. */
export function rebuildCommands(config: LayoutConfig, vms: VmRules[]): Command[] {
  const commands: Command[] = [];
  for (const family of ["inet", "bridge"] as const) {
    // add-then-delete: deleting a missing table would fail the whole transaction.
    commands.push({ add: { table: { family, name: TABLE } } }, { delete: { table: { family, name: TABLE } } });
    commands.push({ add: { table: { family, name: TABLE } } });
  }
  commands.push(...baseCommands(config));
  // In the order attach makes them (a group just before its first member), so that a rebuild
  // from the VMs in the order they came lists exactly as before.
  const made = new Set<string>();
  for (const vm of vms) {
    if (vm.group && !made.has(vm.group)) commands.push(...groupAddCommands(vm.group));
    if (vm.group) made.add(vm.group);
    commands.push(...vmAddCommands(config, vm));
  }
  return commands;
}

function baseCommands(config: LayoutConfig): Command[] {
  const br = fromBridge(config);
  const commands: Command[] = [
    { add: { map: { ...inet, name: "egress", type: "ipv4_addr", map: "verdict" } } },
    { add: { map: { ...inet, name: "deny", type: "ipv4_addr", map: "verdict" } } },
    // Group members' source address -> their group's chain (only traffic between VMs goes there).
    { add: { map: { ...inet, name: "peers", type: "ipv4_addr", map: "verdict" } } },
    { add: { chain: { ...inet, name: "forward", type: "filter", hook: "forward", prio: 0, policy: "accept" } } },
    { add: { chain: { ...inet, name: "input", type: "filter", hook: "input", prio: 0, policy: "accept" } } },
    { add: { chain: { ...inet, name: "postrouting", type: "nat", hook: "postrouting", prio: 100, policy: "accept" } } },
    { add: { chain: { ...inet, name: "output", type: "filter", hook: "output", prio: 0, policy: "accept" } } },

    // forward: between VMs only within a group (the bridge answers every ARP on the subnet for them,
    // so members' traffic is routed here), nothing unsolicited towards VMs, egress per source address.
    rule(inet, "forward", br, eq(meta("oifname"), config.bridge), { vmap: { key: field("ip", "saddr"), data: "@peers" } }),
    rule(inet, "forward", br, eq(meta("oifname"), config.bridge), { counter: { packets: 0, bytes: 0 } }, drop),
    rule(inet, "forward", eq(meta("oifname"), config.bridge), ctEstablished, accept),
    rule(inet, "forward", eq(meta("oifname"), config.bridge), drop),
    rule(inet, "forward", br, ctEstablished, accept),
    rule(inet, "forward", br, { vmap: { key: field("ip", "saddr"), data: "@egress" } }),
    rule(inet, "forward", br, { counter: { packets: 0, bytes: 0 } }, drop),

    // input (the host itself): replies, DNS to the worker's proxy, the allowed ports; else counted drop.
    // Guests never reach a resolver themselves: the proxy answers only the names they may use.
    rule(inet, "input", br, ctEstablished, accept),
    ...(config.dnsProxy ? [rule(inet, "input", br, eq(field("ip", "daddr"), config.gateway), eq(field("udp", "dport"), 53), accept)] : []),
    // Only on the gateway address: the same port on the host's other interfaces stays closed.
    ...(config.hostAllowedPorts.length
      ? [
          rule(
            inet,
            "input",
            br,
            eq(field("ip", "daddr"), config.gateway),
            eq(field("tcp", "dport"), { set: config.hostAllowedPorts }),
            accept,
          ),
        ]
      : []),
    rule(inet, "input", br, { vmap: { key: field("ip", "saddr"), data: "@deny" } }),
    rule(inet, "input", br, { counter: { packets: 0, bytes: 0 } }, drop),

    // Routing members' traffic back out of the bridge makes the host offer ICMP redirects; a guest
    // that took one would send to its peer directly, which the isolated ports drop.
    rule(inet, "output", eq(meta("oifname"), config.bridge), eq(field("icmp", "type"), "redirect"), drop),

    rule(
      inet,
      "postrouting",
      eq(field("ip", "saddr"), prefix(config.subnet)),
      config.uplink ? eq(meta("oifname"), config.uplink) : ne(meta("oifname"), config.bridge),
      { masquerade: null },
    ),

    // bridge: every frame from a VM port goes through that port's guard; unknown ports drop.
    { add: { map: { ...bridgeFamily, name: "ports", type: "ifname", map: "verdict" } } },
    { add: { chain: { ...bridgeFamily, name: "prerouting", type: "filter", hook: "prerouting", prio: -200, policy: "accept" } } },
    { add: { chain: { ...bridgeFamily, name: "forward", type: "filter", hook: "forward", prio: -200, policy: "accept" } } },
    rule(bridgeFamily, "prerouting", { vmap: { key: meta("iifname"), data: "@ports" } }),
    rule(bridgeFamily, "prerouting", eq(meta("iifname"), "pcr-*"), drop),
    rule(bridgeFamily, "forward", eq(meta("iifname"), "pcr-*"), eq(meta("oifname"), "pcr-*"), { counter: { packets: 0, bytes: 0 } }, drop),
  ];
  return commands;
}

/** Everything one VM needs, in dependency order. */
export function vmAddCommands(config: LayoutConfig, vm: VmRules): Command[] {
  const n = names(vm.vmId);
  void config;
  return [
    { add: { counter: { ...inet, name: n.drops } } },
    { add: { set: { ...inet, name: n.allow, type: "ipv4_addr", flags: ["timeout"] } } },
    { add: { set: { ...inet, name: n.nets, type: "ipv4_addr", flags: ["interval"] } } },
    ...(vm.cidrs.length
      ? [{ add: { element: { ...inet, name: n.nets, elem: vm.cidrs.map((cidr) => prefixElement(cidr)) } } } as Command]
      : []),
    { add: { chain: { ...inet, name: n.egress } } },
    { add: { chain: { ...inet, name: n.deny } } },
    rule(inet, n.egress, eq(field("ip", "daddr"), `@${n.allow}`), accept),
    rule(inet, n.egress, eq(field("ip", "daddr"), `@${n.nets}`), accept),
    rule(inet, n.egress, { counter: n.drops }, drop),
    rule(inet, n.deny, { counter: n.drops }, drop),
    { add: { element: { ...inet, name: "egress", elem: [[vm.ip, jump(n.egress)]] } } },
    { add: { element: { ...inet, name: "deny", elem: [[vm.ip, goTo(n.deny)]] } } },
    ...memberAddCommands(vm),

    // Anti-spoofing: only the VM's own MAC, and its own IP in ARP and IPv4. IPv6 is dropped
    // without counting (guest kernels send router solicitations on their own).
    { add: { counter: { ...bridgeFamily, name: n.drops } } },
    { add: { chain: { ...bridgeFamily, name: n.guard } } },
    rule(
      bridgeFamily,
      n.guard,
      eq(field("ether", "saddr"), vm.mac),
      eq(field("ether", "type"), "arp"),
      eq(field("arp", "saddr ether"), vm.mac),
      eq(field("arp", "saddr ip"), vm.ip),
      accept,
    ),
    rule(
      bridgeFamily,
      n.guard,
      eq(field("ether", "saddr"), vm.mac),
      eq(field("ether", "type"), "ip"),
      eq(field("ip", "saddr"), vm.ip),
      accept,
    ),
    rule(bridgeFamily, n.guard, eq(field("ether", "type"), "ip6"), drop),
    rule(bridgeFamily, n.guard, { counter: n.drops }, drop),
    { add: { element: { ...bridgeFamily, name: "ports", elem: [[vm.tap, goTo(n.guard)]] } } },
  ];
}

/** A group's chain and member set; made with its first member. */
export function groupAddCommands(group: string): Command[] {
  const n = groupNames(group);
  return [
    { add: { set: { ...inet, name: n.members, type: "ipv4_addr" } } },
    { add: { chain: { ...inet, name: n.chain } } },
    rule(inet, n.chain, eq(field("ip", "daddr"), `@${n.members}`), accept),
  ];
}

/** Removes a group's objects; its last member has left in the same transaction (leaveCommands). */
function groupRemoveCommands(group: string): Command[] {
  const n = groupNames(group);
  return [
    { flush: { chain: { ...inet, name: n.chain } } },
    { delete: { chain: { ...inet, name: n.chain } } },
    { delete: { set: { ...inet, name: n.members, type: "ipv4_addr" } } },
  ];
}

function memberAddCommands(vm: VmRules): Command[] {
  if (!vm.group) return [];
  const n = groupNames(vm.group);
  return [
    { add: { element: { ...inet, name: n.members, elem: [vm.ip] } } },
    { add: { element: { ...inet, name: "peers", elem: [[vm.ip, jump(n.chain)]] } } },
  ];
}

/**
 * A member leaves its group, and with the last member the group's objects go: one transaction that
 * cannot fail on a missing piece (an attach cut short, a second detach), since nft 1.0.6 has no
 * `destroy`: each object is added (a no-op if present) before it is deleted. Being whole, it also
 * cannot interleave with the next first member making the group again.
 */
export function leaveCommands(member: { ip?: string; group: string }, lastMember: boolean): Command[] {
  const n = groupNames(member.group);
  const ip = member.ip;
  return [
    { add: { set: { ...inet, name: n.members, type: "ipv4_addr" } } },
    { add: { chain: { ...inet, name: n.chain } } },
    ...(ip
      ? ([
          { add: { element: { ...inet, name: "peers", elem: [[ip, jump(n.chain)]] } } },
          { delete: { element: { ...inet, name: "peers", elem: [ip] } } },
          { add: { element: { ...inet, name: n.members, elem: [ip] } } },
          { delete: { element: { ...inet, name: n.members, elem: [ip] } } },
        ] as Command[])
      : []),
    ...(lastMember ? groupRemoveCommands(member.group) : []),
  ];
}

/**
 * Removes one VM's objects. Each command fails if its object is missing, so callers retry one by
 * one. A member's `peers` entry is not here: its leave transaction removes it (leaveCommands), and
 * a VM known only from the tables gets its own delete of it, which may fail alone.
 */
export function vmRemoveCommands(vm: { vmId: string; tap?: string; ip?: string }): Command[] {
  const n = names(vm.vmId);
  return [
    ...(vm.ip
      ? ([
          { delete: { element: { ...inet, name: "egress", elem: [vm.ip] } } },
          { delete: { element: { ...inet, name: "deny", elem: [vm.ip] } } },
        ] as Command[])
      : []),
    ...(vm.tap ? ([{ delete: { element: { ...bridgeFamily, name: "ports", elem: [vm.tap] } } }] as Command[]) : []),
    { flush: { chain: { ...inet, name: n.egress } } },
    { flush: { chain: { ...inet, name: n.deny } } },
    { delete: { chain: { ...inet, name: n.egress } } },
    { delete: { chain: { ...inet, name: n.deny } } },
    { delete: { set: { ...inet, name: n.allow, type: "ipv4_addr" } } },
    { delete: { set: { ...inet, name: n.nets, type: "ipv4_addr" } } },
    { delete: { counter: { ...inet, name: n.drops } } },
    { flush: { chain: { ...bridgeFamily, name: n.guard } } },
    { delete: { chain: { ...bridgeFamily, name: n.guard } } },
    { delete: { counter: { ...bridgeFamily, name: n.drops } } },
  ];
}

/**
 * Re-adds resolved addresses with a fresh timeout. Adding an existing element does not renew
 * its timeout, so: add (no-op if present), delete, add with the new timeout — atomically.
 */
export function refreshAllowCommands(vmId: string, addresses: { address: string; timeoutSeconds: number }[]): Command[] {
  if (addresses.length === 0) return [];
  const name = names(vmId).allow;
  const withTimeout = addresses.map(({ address, timeoutSeconds }) => ({ elem: { val: address, timeout: timeoutSeconds } }));
  return [
    { add: { element: { ...inet, name, elem: withTimeout } } },
    { delete: { element: { ...inet, name, elem: addresses.map(({ address }) => address) } } },
    { add: { element: { ...inet, name, elem: withTimeout } } },
  ];
}

function prefixElement(cidr: string) {
  const [addr, len] = cidr.split("/");
  return Number(len) === 32 ? addr! : { prefix: { addr: addr!, len: Number(len) } };
}
