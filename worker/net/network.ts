// NetworkPort adapter: a worker-owned bridge with NAT, one isolated TAP per VM, persisted leases,
// and nftables egress allowlists that follow DNS. See docs/networking.md.
import { readFile } from "node:fs/promises";
import type { Logger } from "pino";
import { alreadyExists, failedPrecondition, internal, invalidArgument, notFound } from "../core/errors.js";
import type { AttachedVm, GroupMembership, NetCounters, NetworkPort, VmNetwork } from "../ports/index.js";
import { PARKED_MAC } from "../ports/network.js";
import {
  type Answer,
  DEFAULT_DENY_CIDRS,
  DEFAULT_REFRESH,
  DenyList,
  DomainFollower,
  dnsResolver,
  parseAllowlist,
  isIpv4,
  type RefreshPolicy,
  type ResolveFn,
} from "./allowlist.js";
import { DnsProxyProcess } from "./dns-proxy-process.js";
import { IpLinks, TAP_PREFIX, tapName } from "./ip.js";
import { formatCidr, gatewayOf, Ipam, macForIp, parseCidr, type Subnet } from "./ipam.js";
import {
  groupAddCommands,
  type LayoutConfig,
  leaveCommands,
  names,
  rebuildCommands,
  refreshAllowCommands,
  TABLE,
  vmAddCommands,
  vmIdOf,
  vmRemoveCommands,
  type VmRules,
} from "./layout.js";
import { type Command, isMissing, Nft, removeStaleTransactionFiles } from "./nft.js";
import { createRunner, type Runner } from "./run.js";
import { IP_SESSION, NFT_SESSION, ToolSession } from "./session.js";

export interface NetworkOptions {
  bridge: string;
  /** VM subnet; the bridge takes the first host address as the guests' gateway. */
  subnet: string;
  /**
   * Upstream DNS server for allowedDomains names. Guests never query it: they ask the worker's DNS
   * proxy on the gateway, which answers only their allowed names. Without it, only literal IPs/CIDRs work.
   */
  resolver?: string;
  /** The proxy's UDP port on the gateway (53; tests may move it). */
  dnsProxyPort?: number;
  uplink?: string;
  /** Lease file (JSON, replaced atomically). */
  statePath: string;
  /** Run every ip/nft/sysctl command inside this network namespace (tests, benchmarks). */
  netns?: string;
  logger: Logger;
  /** TCP ports on the host that guests may connect to (besides DNS to the resolver). */
  hostAllowedPorts?: number[];
  /**
   * Ranges no VM may reach (literal entries refused, DNS answers dropped); DEFAULT_DENY_CIDRS by
   * default. The host's own addresses are always added.
   */
  denyCidrs?: string[];
  /** How long a released address stays unused (ADDRESS_COOLDOWN_MS by default). */
  addressCooldownMs?: number;
  /** Overrides DNS resolution (tests resolve inside their namespace). */
  resolve?: ResolveFn;
  refresh?: Partial<RefreshPolicy>;
  runner?: Runner;
}

interface Attached {
  net: VmNetwork;
  rules: VmRules;
  /** allowedDomains names: the only ones the DNS proxy answers for this VM. */
  domains: Set<string>;
  /** Allowed address -> when its set element expires (ms), so one domain never shortens another's. */
  expiries: Map<string, number>;
  member?: GroupMembership;
}

/** A group's members (vmId -> hostname, claimed before their rules exist) and its objects being made. */
interface Group {
  members: Map<string, string>;
  made?: Promise<void>;
}

const VM_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const COUNTER_CACHE_MS = 1_000;

export function createNetwork(options: NetworkOptions): NetworkPort {
  return new Network(options);
}

class Network implements NetworkPort {
  private readonly run: Runner;
  private readonly nft: Nft;
  private readonly nftSession: ToolSession;
  private readonly ipSession: ToolSession;
  private readonly links: IpLinks;
  private readonly subnet: Subnet;
  private readonly gateway: string;
  private readonly layout: LayoutConfig;
  private readonly follower: DomainFollower;
  private readonly attached = new Map<string, Attached>();
  private readonly groups = new Map<string, Group>();
  private readonly log: Logger;
  private readonly deny: DenyList;
  private readonly dnsProxy: DnsProxyProcess;
  private readonly policy: RefreshPolicy;
  /** Why the DNS proxy is not serving, when it is not. */
  private dnsProxyDown?: string;
  private ipamPromise?: Promise<Ipam>;
  /** Whether the uplink's forwarding is on (see ensureUplinkForwarding). */
  private uplinkForwarding = false;
  private uplinkMissingLogged = false;
  /** Set by init(); attach() before any init() initialises with no VMs. */
  private ready?: Promise<void>;
  private counterCache?: { at: number; value: Promise<Map<string, bigint>> };
  private linkCache?: { at: number; value: Promise<Map<string, NetCounters>> };

  constructor(private readonly options: NetworkOptions) {
    const subnet = parseCidr(options.subnet);
    if (!subnet || subnet.prefixLength > 30)
      throw invalidArgument(`network subnet "${options.subnet}" is not an IPv4 CIDR of /30 or larger`);
    if (options.bridge.length > 15 || !/^[A-Za-z0-9_.-]+$/.test(options.bridge))
      throw invalidArgument(`bad bridge name "${options.bridge}"`);
    this.subnet = subnet;
    this.gateway = gatewayOf(subnet);
    this.deny = new DenyList(options.denyCidrs ?? DEFAULT_DENY_CIDRS);
    this.deny.add([this.gateway]);
    // Reaching the resolver directly would bypass the proxy (and tunnel data through DNS).
    if (options.resolver) this.deny.add([options.resolver]);
    this.log = options.logger.child({ component: "network" });
    this.run = options.runner ?? createRunner({ netns: options.netns });
    this.nftSession = new ToolSession(NFT_SESSION, { netns: options.netns });
    this.ipSession = new ToolSession(IP_SESSION, { netns: options.netns });
    this.nft = new Nft(this.run, this.nftSession);
    this.links = new IpLinks(this.run, this.ipSession);
    this.layout = {
      bridge: options.bridge,
      subnet: formatCidr(subnet),
      // Always: group members resolve each other's names there, with or without an upstream.
      dnsProxy: true,
      uplink: options.uplink,
      hostAllowedPorts: options.hostAllowedPorts ?? [],
      gateway: this.gateway,
    };
    this.policy = { ...DEFAULT_REFRESH, ...options.refresh };
    const resolve = options.resolve ?? (options.resolver ? dnsResolver(options.resolver) : undefined);
    this.follower = new DomainFollower(
      resolve ?? (async () => []),
      (vmId, addresses) => this.publish(vmId, addresses),
      this.policy,
      this.log,
    );
    this.dnsProxy = new DnsProxyProcess({
      listen: this.gateway,
      port: options.dnsProxyPort,
      upstream: options.resolver,
      maxTtlSeconds: this.policy.maxSeconds,
      netns: options.netns,
      log: this.log,
      publish: (vmIp, name, answers) => this.publishAnswer(vmIp, name, answers),
    });
  }

  private ipam(): Promise<Ipam> {
    this.ipamPromise ??= Ipam.open(this.subnet, this.options.statePath, this.options.addressCooldownMs);
    return this.ipamPromise;
  }

  validateAllowedDomains(allowedDomains: string[]): void {
    const parsed = parseAllowlist(allowedDomains, this.deny);
    if (parsed.domains.length > 0 && !this.options.resolver) {
      throw invalidArgument(`allowedDomains has names (${parsed.domains[0]}), but this worker has no DNS resolver configured`);
    }
    if (parsed.domains.length > 0 && this.dnsProxyDown !== undefined) {
      throw failedPrecondition(
        `allowedDomains has names (${parsed.domains[0]}), but the worker's DNS proxy is not serving: ${this.dnsProxyDown}`,
      );
    }
  }

  init(existing: AttachedVm[]): Promise<void> {
    this.ready = this.rebuild(existing);
    return this.ready;
  }

  private async rebuild(existing: AttachedVm[]): Promise<void> {
    const stale = await removeStaleTransactionFiles();
    if (stale.length) this.log.info({ files: stale.length }, "removed nft transaction files of killed workers");
    const ipam = await this.ipam();
    await this.links.ensureBridge(this.options.bridge, `${this.gateway}/${this.subnet.prefixLength}`, macForIp(this.gateway));
    await this.hardenHost();
    await this.startDnsProxy();
    this.deny.add((await this.links.ownAddresses()).filter((address) => !this.deny.blocking(address)));
    this.follower.stopAll();
    this.attached.clear();
    this.groups.clear();
    const keep: { vmId: string; domains: string[] }[] = [];
    for (const { vmId, net, allowedDomains, member } of existing) {
      let parsed = { domains: [] as string[], cidrs: [] as string[] };
      try {
        parsed = parseAllowlist(allowedDomains);
      } catch (err) {
        this.log.error({ vmId, err: (err as Error).message }, "stored allowedDomains are invalid; the VM keeps no egress");
      }
      await ipam.adopt(vmId, net.ip);
      await this.links.ensureTap(net.tap, this.options.bridge, false);
      const rules: VmRules = { vmId, tap: net.tap, ip: net.ip, mac: net.mac, cidrs: parsed.cidrs, group: member?.group };
      this.attached.set(vmId, { net, rules, domains: new Set(parsed.domains), expiries: new Map(), member });
      if (member) this.claim(vmId, member).made = Promise.resolve(); // made by the rebuild below
      this.dnsProxy.allow(net.ip, parsed.domains);
      keep.push({ vmId, domains: parsed.domains });
    }
    // One transaction: both tables deleted and rebuilt, so nothing is duplicated or briefly open.
    await this.nft.apply(
      rebuildCommands(
        this.layout,
        [...this.attached.values()].map((entry) => entry.rules),
      ),
    );
    for (const group of this.groups.keys()) this.publishNames(group);
    await Promise.all(keep.map(({ vmId, domains }) => this.follower.start(vmId, domains)));
    this.log.info({ bridge: this.options.bridge, subnet: this.layout.subnet, vms: existing.length }, "network ready");
  }

  /** A proxy that cannot listen leaves names unusable (creates say why), not the whole worker down. */
  private async startDnsProxy(): Promise<void> {
    try {
      await this.dnsProxy.start();
      this.dnsProxyDown = undefined;
    } catch (err) {
      this.dnsProxyDown = (err as Error).message;
      this.log.error({ err: this.dnsProxyDown }, "the DNS proxy is not serving: VMs with allowed names cannot be created");
    }
  }

  /**
   * Forwarding only where VM traffic passes (the bridge in, the uplink back), not host-wide; and
   * the bridge answers ARP only for its own address, so guests do not learn the host's others.
   */
  private async hardenHost(): Promise<void> {
    const { bridge, uplink } = this.options;
    await this.links.sysctl(`net.ipv4.conf.${bridge}.forwarding`, "1");
    if (uplink) {
      this.uplinkForwarding = false;
      await this.ensureUplinkForwarding();
    } else {
      this.log.warn(
        "no uplink named: IPv4 forwarding is enabled host-wide; name one with --uplink to keep it to the bridge and the uplink",
      );
      await this.links.sysctl("net.ipv4.ip_forward", "1");
    }
    await this.links.sysctl(`net.ipv4.conf.${bridge}.arp_ignore`, "1");
    await this.links.sysctl(`net.ipv4.conf.${bridge}.arp_announce`, "2");
    // Ports are isolated, so a guest's ARP for a peer reaches no peer: the bridge answers it
    // (private-VLAN proxy ARP), at once, and the forward chain decides what may pass.
    await this.links.sysctl(`net.ipv4.conf.${bridge}.proxy_arp_pvlan`, "1");
    await this.links.sysctl(`net.ipv4.neigh.${bridge}.proxy_delay`, "0");
  }

  /** The uplink may appear after the worker starts (a VPN, a test's veth): checked again at every attach until it is set. */
  private async ensureUplinkForwarding(): Promise<void> {
    const { uplink } = this.options;
    if (!uplink || this.uplinkForwarding) return;
    if (!(await this.links.exists(uplink))) {
      if (!this.uplinkMissingLogged)
        this.log.warn({ uplink }, "the uplink does not exist (yet): guests' egress is not forwarded until it does");
      this.uplinkMissingLogged = true;
      return;
    }
    await this.links.sysctl(`net.ipv4.conf.${uplink}.forwarding`, "1");
    this.uplinkForwarding = true;
  }

  async park(vmId: string): Promise<{ tap: string; mac: string }> {
    if (!VM_ID.test(vmId)) throw invalidArgument(`bad vm id "${vmId}"`);
    this.ready ??= this.rebuild([]);
    await this.ready;
    const tap = tapName(vmId);
    await this.links.parkTap(tap);
    return { tap, mac: PARKED_MAC };
  }

  async unpark(vmId: string): Promise<void> {
    if (this.attached.has(vmId)) return this.detach(vmId);
    await this.links.remove(tapName(vmId));
  }

  async attach(vmId: string, allowedDomains: string[], member?: GroupMembership, options?: { parked?: boolean }): Promise<VmNetwork> {
    if (!VM_ID.test(vmId)) throw invalidArgument(`bad vm id "${vmId}"`);
    this.ready ??= this.rebuild([]);
    await this.ready;
    this.validateAllowedDomains(allowedDomains);
    const allowlist = parseAllowlist(allowedDomains, this.deny);
    const known = this.attached.get(vmId);
    if (known) return known.net;
    // Claimed before the first wait, so two creates cannot both take a hostname.
    const group = member ? this.claim(vmId, member) : undefined;
    try {
      return await this.attachClaimed(vmId, allowlist, member, group, options?.parked === true);
    } catch (err) {
      // The first member's failure leaves no group behind (its own rules went with the undo).
      if (member && !this.attached.has(vmId) && this.unclaim(vmId, member.group)) {
        await this.nft
          .apply(leaveCommands({ group: member.group }, true))
          .catch((leaveErr: unknown) =>
            this.log.error({ vmId, group: member.group, err: (leaveErr as Error).message }, "removing the group's rules failed"),
          );
      }
      throw err;
    }
  }

  private async attachClaimed(
    vmId: string,
    allowlist: { domains: string[]; cidrs: string[] },
    member: GroupMembership | undefined,
    group: Group | undefined,
    parked: boolean,
  ): Promise<VmNetwork> {
    await this.ensureUplinkForwarding();
    const ipam = await this.ipam();
    const ip = await ipam.allocate(vmId);
    const net: VmNetwork = {
      tap: tapName(vmId),
      mac: macForIp(ip),
      ip,
      prefixLength: this.subnet.prefixLength,
      gateway: this.gateway,
      dns: this.gateway,
    };
    const rules: VmRules = { vmId, tap: net.tap, ip, mac: net.mac, cidrs: allowlist.cidrs, group: member?.group };
    const entry: Attached = { net, rules, domains: new Set(allowlist.domains), expiries: new Map(), member };
    // Two requests, side by side, to the long-lived nft and ip: one nft transaction (the VM's
    // objects and its names' first addresses) and one ip batch (the TAP). The TAP may come up
    // before its rules: the bridge drops every frame of a port its map does not know.
    const rulesReady = async () => {
      const first: { address: string; timeoutSeconds: number }[] = [];
      await this.follower.start(vmId, allowlist.domains, async (_vmId, addresses) => void first.push(...addresses));
      if (group && member) await this.makeGroup(member.group, group);
      await this.nft.apply([...vmAddCommands(this.layout, rules), ...this.allowCommands(entry, first)]);
      this.attached.set(vmId, entry);
      this.dnsProxy.allow(ip, allowlist.domains);
      if (member) this.publishNames(member.group);
    };
    const outcomes = await Promise.allSettled([rulesReady(), this.links.ensureTap(net.tap, this.options.bridge, !parked)]);
    const failed = outcomes.find((outcome) => outcome.status === "rejected");
    if (failed) {
      // Both have ended, so the undo races neither.
      await this.detach(vmId).catch((undoErr: unknown) =>
        this.log.error({ vmId, err: (undoErr as Error).message }, "undoing attach failed"),
      );
      const err = failed.reason as Error;
      throw internal(`attaching the network of ${vmId} failed: ${err.message}`, err);
    }
    this.log.info(
      { vmId, ip, tap: net.tap, domains: allowlist.domains.length, cidrs: allowlist.cidrs.length, group: member?.group },
      "network attached",
    );
    return net;
  }

  /** Records `vmId` as a member of its group (made on first use); ALREADY_EXISTS for a taken hostname. */
  private claim(vmId: string, member: GroupMembership): Group {
    let group = this.groups.get(member.group);
    if (!group) {
      group = { members: new Map() };
      this.groups.set(member.group, group);
    }
    for (const [other, hostname] of group.members) {
      if (other !== vmId && hostname === member.hostname) {
        throw alreadyExists(`group ${member.group} already has a member named ${member.hostname} (${other})`);
      }
    }
    group.members.set(vmId, member.hostname);
    return group;
  }

  /** Drops a claim; returns whether the group has no members left (it is forgotten then). */
  private unclaim(vmId: string, name: string): boolean {
    const group = this.groups.get(name);
    if (!group) return false;
    group.members.delete(vmId);
    if (group.members.size > 0) return false;
    this.groups.delete(name);
    return true;
  }

  /** The group's chain and set, made once; a failure lets the next member try again. */
  private makeGroup(name: string, group: Group): Promise<void> {
    group.made ??= this.nft.apply(groupAddCommands(name)).catch((err: unknown) => {
      group.made = undefined;
      throw err;
    });
    return group.made;
  }

  /** Tells each member of the group every member's names (`<hostname>` and `<hostname>.<group>`). */
  private publishNames(name: string): void {
    const members = [...this.attached.values()].filter((entry) => entry.member?.group === name);
    const records = members.flatMap(({ member, net }) => [
      { name: member!.hostname, address: net.ip },
      { name: `${member!.hostname}.${name}`, address: net.ip },
    ]);
    for (const { net } of members) this.dnsProxy.names(net.ip, records);
  }

  async detach(vmId: string): Promise<void> {
    this.follower.stop(vmId);
    const ipam = await this.ipam();
    const entry = this.attached.get(vmId);
    const tap = entry?.net.tap ?? tapName(vmId);
    const ip = entry?.net.ip ?? ipam.get(vmId);
    const member = entry?.member;
    // The membership (and the group's objects, with its last member) goes in a transaction of its
    // own, decided and sent at once: a member joining next queues its group's remaking after it.
    const left = member
      ? this.nft
          .apply(leaveCommands({ ip, group: member.group }, this.unclaim(vmId, member.group)))
          .catch((err: unknown) => this.log.error({ vmId, group: member.group, err: (err as Error).message }, "leaving the group failed"))
      : undefined;
    // Without an entry the VM is known only from the tables: it may have been a member.
    const peer: Command[] = !entry && ip ? [{ delete: { element: { family: "inet", table: TABLE, name: "peers", elem: [ip] } } }] : [];
    await Promise.all([left, this.removeRules(vmId, [...peer, ...vmRemoveCommands({ vmId, tap, ip })], entry !== undefined)]);
    // With its rules gone, the bridge drops whatever the port still sends: no flow starts after
    // the flush, so the TAP and the flows go side by side.
    await Promise.all([this.links.remove(tap), ip ? this.forgetFlows(vmId, ip) : undefined]);
    if (ip) this.dnsProxy.forget(ip);
    await ipam.release(vmId);
    this.attached.delete(vmId);
    if (member) this.publishNames(member.group);
  }

  /** Deletes the connection-tracking entries of an address, so no flow of this VM reaches the next one to get it. */
  private async forgetFlows(vmId: string, ip: string): Promise<void> {
    const results = await Promise.all(
      ["--orig-src", "--orig-dst"].map((direction) => this.run("conntrack", ["-D", "-f", "ipv4", direction, ip])),
    );
    // Exit 1 with "0 flow entries" is the common case: nothing to delete.
    const failed = results.find((result) => result.exitCode !== 0 && !/0 flow entries/.test(result.stderr));
    if (failed) {
      this.log.warn(
        { vmId, ip, err: failed.stderr.trim() || `exit ${failed.exitCode}` },
        "flushing the address's conntrack entries failed (the address still cools down before reuse)",
      );
    }
  }

  guestCmdline(net: VmNetwork): string[] {
    return [`pcr.ip=${net.ip}/${net.prefixLength}`, `pcr.gw=${net.gateway}`, `pcr.dns=${net.dns}`];
  }

  async counters(vmId: string): Promise<{ net: NetCounters; egressDrops: bigint }> {
    const entry = this.attached.get(vmId);
    if (!entry) throw notFound(`no network for ${vmId}`);
    const [drops, net] = await Promise.all([this.dropCounters(), this.tapCounters(entry.net.tap)]);
    return { net, egressDrops: drops.get(vmId) ?? 0n };
  }

  async removeOrphans(known: Set<string>): Promise<string[]> {
    const removed: string[] = [];
    const ipam = await this.ipam();
    for (const vmId of [...this.attached.keys()].filter((id) => !known.has(id))) {
      await this.detach(vmId);
      removed.push(`network:${vmId}`);
    }
    const knownTaps = new Set([...this.attached.values()].map((entry) => entry.net.tap));
    for (const id of known) knownTaps.add(tapName(id));
    for (const link of await this.links.links()) {
      if (link.ifname.startsWith(TAP_PREFIX) && !knownTaps.has(link.ifname)) {
        await this.links.remove(link.ifname);
        removed.push(`tap:${link.ifname}`);
      }
    }
    for (const vmId of await this.ruleOwners()) {
      if (known.has(vmId)) continue;
      const { ip, tap } = await this.mapKeysOf(vmId);
      const peer: Command[] = ip ? [{ delete: { element: { family: "inet", table: TABLE, name: "peers", elem: [ip] } } }] : [];
      await this.removeRules(vmId, [...peer, ...vmRemoveCommands({ vmId, ip, tap })], false);
      removed.push(`nft:${vmId}`);
    }
    for (const [vmId] of ipam.entries()) {
      if (known.has(vmId)) continue;
      await ipam.release(vmId);
      removed.push(`lease:${vmId}`);
    }
    if (removed.length) this.log.info({ removed }, "removed network orphans");
    return removed;
  }

  async close(): Promise<void> {
    // VMs may outlive the worker, so their network stays; only the DNS timers and proxy stop.
    this.follower.stopAll();
    this.nftSession.close();
    this.ipSession.close();
    await this.dnsProxy.close();
  }

  // --- internals -------------------------------------------------------------------------------

  /** Re-adds resolved addresses; an address shared by two domains keeps the later expiry. */
  private async publish(vmId: string, addresses: { address: string; timeoutSeconds: number }[]): Promise<void> {
    const entry = this.attached.get(vmId);
    if (!entry) return;
    const commands = this.allowCommands(entry, addresses);
    if (this.attached.has(vmId)) await this.nft.apply(commands);
  }

  /** The commands that (re-)add addresses to a VM's allow set, noting their expiries; denied ones are left out. */
  private allowCommands(entry: Attached, addresses: { address: string; timeoutSeconds: number }[]): Command[] {
    const { vmId } = entry.rules;
    const now = Date.now();
    const merged = new Map<string, number>();
    for (const { address, timeoutSeconds } of addresses) {
      const denied = this.deny.blocking(address);
      if (denied) {
        // An allowed name pointing at metadata or an internal range must not open it.
        this.log.warn({ vmId, address, denied }, "DNS answer in a denied range: not allowed");
        continue;
      }
      const current = entry.expiries.get(address) ?? 0;
      const seconds = Math.max(timeoutSeconds, Math.ceil((current - now) / 1000), merged.get(address) ?? 0);
      merged.set(address, seconds);
    }
    for (const [address, seconds] of merged) entry.expiries.set(address, now + seconds * 1000);
    return refreshAllowCommands(
      vmId,
      [...merged].map(([address, timeoutSeconds]) => ({ address, timeoutSeconds })),
    );
  }

  /**
   * The DNS proxy told (or is about to tell) the VM at `vmIp` these answers for `name`: open them
   * first, for at least the TTL it gives. The proxy's word is checked like a guest's: the address
   * must be a VM's and the name on that VM's list. Returns the addresses the guest may be told.
   */
  private async publishAnswer(vmIp: string, name: string, answers: Answer[]): Promise<string[]> {
    const entry = [...this.attached.values()].find((candidate) => candidate.net.ip === vmIp);
    if (!entry?.domains.has(name)) {
      this.log.warn({ vmIp, name }, "the DNS proxy asked to open addresses for a name this VM may not resolve; refused");
      return [];
    }
    const usable = answers.filter((answer) => isIpv4(answer.address) && !this.deny.blocking(answer.address));
    const now = Date.now();
    const { minSeconds, maxSeconds, slackSeconds } = this.policy;
    // An element that already outlives the told TTL by half the slack needs no nft call.
    const stale = usable
      .map((answer) => ({ address: answer.address, timeoutSeconds: Math.min(Math.max(answer.ttl, minSeconds), maxSeconds) + slackSeconds }))
      .filter(({ address, timeoutSeconds }) => (entry.expiries.get(address) ?? 0) < now + (timeoutSeconds - slackSeconds / 2) * 1000);
    if (stale.length) await this.publish(entry.rules.vmId, stale);
    return usable.map((answer) => answer.address);
  }

  /** Removes nft objects (a VM's, a group's) in one transaction; when some are missing, one by one. */
  private async removeRules(owner: string, commands: Command[], expectComplete: boolean): Promise<void> {
    if (expectComplete) {
      try {
        await this.nft.apply(commands);
        return;
      } catch (err) {
        this.log.debug({ owner, err: (err as Error).message }, "removing rules at once failed; removing piecewise");
      }
    }
    for (const command of commands) {
      await this.nft.apply([command]).catch((err: unknown) => {
        if (!isMissing(err)) this.log.warn({ owner, err: (err as Error).message }, "removing a rule object failed");
      });
    }
  }

  /** vmIds that own chains, sets or counters in the worker's tables. */
  private async ruleOwners(): Promise<Set<string>> {
    const owners = new Set<string>();
    for (const family of ["inet", "bridge"]) {
      const objects = await this.nft.listIfPresent(["table", family, TABLE]);
      for (const object of objects) {
        const body = Object.values(object)[0] as { name?: string };
        const vmId = body.name ? vmIdOf(body.name) : undefined;
        if (vmId) owners.add(vmId);
      }
    }
    return owners;
  }

  /** The map keys that point at a VM's chains, found by listing the maps. */
  private async mapKeysOf(vmId: string): Promise<{ ip?: string; tap?: string }> {
    const n = names(vmId);
    const keyFor = async (family: string, map: string, target: string) => {
      const objects = await this.nft.listIfPresent(["map", family, TABLE, map]);
      const elems = (objects[0]?.map as { elem?: [string, Record<string, { target: string }>][] })?.elem ?? [];
      return elems.find(([, verdict]) => Object.values(verdict)[0]?.target === target)?.[0];
    };
    return {
      ip: (await keyFor("inet", "egress", n.egress)) ?? (await keyFor("inet", "deny", n.deny)),
      tap: await keyFor("bridge", "ports", n.guard),
    };
  }

  /** Drop counters of every VM (inet + bridge table), from one `nft list counters`, cached briefly. */
  private dropCounters(): Promise<Map<string, bigint>> {
    const now = Date.now();
    if (this.counterCache && now - this.counterCache.at < COUNTER_CACHE_MS) return this.counterCache.value;
    const value = this.nft.list(["counters"]).then((objects) => {
      const totals = new Map<string, bigint>();
      for (const object of objects) {
        const counter = object.counter as { table: string; name: string; packets: number } | undefined;
        const vmId = counter?.table === TABLE ? vmIdOf(counter.name) : undefined;
        if (vmId) totals.set(vmId, (totals.get(vmId) ?? 0n) + BigInt(counter!.packets));
      }
      return totals;
    });
    this.counterCache = { at: now, value };
    value.catch(() => (this.counterCache = undefined)); // callers get the error; the next asks again
    return value;
  }

  /** Guest-side traffic: the TAP's tx is what the guest received. */
  private async tapCounters(tap: string): Promise<NetCounters> {
    if (!this.options.netns && !this.options.runner) {
      const stat = async (name: string) => BigInt((await readFile(`/sys/class/net/${tap}/statistics/${name}`, "utf8")).trim());
      // The guest transmits what the TAP receives.
      const [txBytes, rxBytes, txPackets, rxPackets] = await Promise.all(["rx_bytes", "tx_bytes", "rx_packets", "tx_packets"].map(stat));
      return { rxBytes: rxBytes!, txBytes: txBytes!, rxPackets: rxPackets!, txPackets: txPackets! };
    }
    const now = Date.now();
    if (!this.linkCache || now - this.linkCache.at >= COUNTER_CACHE_MS) {
      const value = this.links.links(true).then((links) => {
        const byName = new Map<string, NetCounters>();
        for (const link of links) {
          const stats = link.stats64;
          if (!stats) continue;
          byName.set(link.ifname, {
            rxBytes: BigInt(stats.tx.bytes),
            rxPackets: BigInt(stats.tx.packets),
            txBytes: BigInt(stats.rx.bytes),
            txPackets: BigInt(stats.rx.packets),
          });
        }
        return byName;
      });
      this.linkCache = { at: now, value };
      value.catch(() => (this.linkCache = undefined)); // as above
    }
    const counters = (await this.linkCache.value).get(tap);
    if (!counters) throw notFound(`no TAP ${tap}`);
    return counters;
  }
}
