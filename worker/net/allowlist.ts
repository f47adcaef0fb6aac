// allowedDomains: validation, and the resolver that keeps each VM's address set following DNS.
import { Resolver } from "node:dns/promises";
import type { Logger } from "pino";
import { invalidArgument } from "../core/errors.js";
import { formatCidr, parseCidr, parseIpv4 } from "./ipam.js";

export interface Allowlist {
  /** Lower-case names without a trailing dot, resolved to A records. */
  domains: string[];
  /** Literal addresses and CIDRs, normalised; none contains another (safe for an interval set). */
  cidrs: string[];
}

const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/**
 * Ranges no guest may be allowed to reach, whatever its allowlist or DNS says: "this network",
 * loopback, link-local (cloud metadata at 169.254.169.254), multicast and reserved. The worker adds
 * the host's own addresses; operators add their internal networks (--deny-cidr).
 */
export const DEFAULT_DENY_CIDRS = ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4"];

/** A set of IPv4 ranges; asks which one an address or a CIDR touches. */
export class DenyList {
  private subnets: { base: number; prefixLength: number; text: string }[] = [];

  constructor(cidrs: string[] = []) {
    this.add(cidrs);
  }

  /** Adds CIDRs (or bare addresses); throws on one that does not parse. */
  add(cidrs: string[]): void {
    for (const cidr of cidrs) {
      const subnet = parseCidr(cidr.includes("/") ? cidr : `${cidr}/32`);
      if (!subnet) throw invalidArgument(`deny CIDR "${cidr}" is not an IPv4 address or CIDR`);
      this.subnets.push({ ...subnet, text: formatCidr(subnet) });
    }
  }

  get cidrs(): string[] {
    return this.subnets.map((subnet) => subnet.text);
  }

  /** The denied range that overlaps `subnet` (inside it or containing it), if any. */
  overlapping(subnet: { base: number; prefixLength: number }): string | undefined {
    const end = subnet.base + 2 ** (32 - subnet.prefixLength);
    return this.subnets.find((deny) => deny.base < end && subnet.base < deny.base + 2 ** (32 - deny.prefixLength))?.text;
  }

  /** The denied range an address lies in, if any. */
  blocking(address: string): string | undefined {
    const value = parseIpv4(address);
    return value === undefined ? undefined : this.overlapping({ base: value, prefixLength: 32 });
  }
}

/** A lower-case host name without a trailing dot: LDH labels, at most 253 characters, not all-numeric at the top. */
export function isDomainName(name: string): boolean {
  const labels = name.split(".");
  return name.length > 0 && name.length <= 253 && labels.every((label) => LABEL.test(label)) && !/^\d+$/.test(labels.at(-1)!);
}

/** Parses allowedDomains; throws INVALID_ARGUMENT naming the first bad entry (or one that reaches a denied range). */
export function parseAllowlist(entries: string[], deny?: DenyList): Allowlist {
  const domains = new Set<string>();
  const cidrs: { base: number; prefixLength: number }[] = [];
  for (const raw of entries) {
    const entry = raw.trim().toLowerCase();
    if (entry.startsWith("*.") || entry.includes("*")) {
      throw invalidArgument(`allowedDomains entry "${raw}": wildcards are not supported; list each name`);
    }
    if (entry.includes(":")) throw invalidArgument(`allowedDomains entry "${raw}": IPv6 and ports are not supported`);
    if (/^[0-9./]+$/.test(entry)) {
      const subnet = parseCidr(entry.includes("/") ? entry : `${entry}/32`);
      if (!subnet) throw invalidArgument(`allowedDomains entry "${raw}" is not a valid IPv4 address or CIDR`);
      const denied = deny?.overlapping(subnet);
      if (denied) throw invalidArgument(`allowedDomains entry "${raw}" reaches ${denied}, which no VM may be allowed`);
      cidrs.push(subnet);
      continue;
    }
    const name = entry.endsWith(".") ? entry.slice(0, -1) : entry;
    if (!isDomainName(name)) throw invalidArgument(`allowedDomains entry "${raw}" is not a valid domain name`);
    domains.add(name);
  }
  return { domains: [...domains].sort(), cidrs: withoutNested(cidrs).map(formatCidr) };
}

/** Drops CIDRs contained in another one: aligned prefixes either nest or are disjoint. */
function withoutNested(subnets: { base: number; prefixLength: number }[]) {
  const sorted = [...subnets].sort((a, b) => a.prefixLength - b.prefixLength || a.base - b.base);
  const kept: typeof sorted = [];
  for (const subnet of sorted) {
    const covered = kept.some((outer) => subnet.base - (subnet.base % 2 ** (32 - outer.prefixLength)) === outer.base);
    if (!covered) kept.push(subnet);
  }
  return kept;
}

export interface Answer {
  address: string;
  ttl: number;
}

/** Resolves a name to IPv4 addresses with their TTLs; [] when the name has no A record. */
export type ResolveFn = (name: string) => Promise<Answer[]>;

/** node:dns Resolver pointed at the worker's configured resolver only. */
export function dnsResolver(server: string, timeoutMs = 2_000): ResolveFn {
  const resolver = new Resolver({ timeout: timeoutMs, tries: 2 });
  resolver.setServers([server]);
  return async (name) => {
    try {
      return await resolver.resolve4(name, { ttl: true });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOTFOUND" || code === "ENODATA") return [];
      throw err;
    }
  };
}

export interface RefreshPolicy {
  /** A TTL below this is raised to it (and a failed lookup is retried after it). */
  minSeconds: number;
  maxSeconds: number;
  /** Added to the refresh interval for the set element timeout, so refreshes overlap. */
  slackSeconds: number;
}

export const DEFAULT_REFRESH: RefreshPolicy = { minSeconds: 10, maxSeconds: 3600, slackSeconds: 30 };

/** Addresses to (re-)add to a VM's set, each with its element timeout in seconds. */
export type Publish = (vmId: string, addresses: { address: string; timeoutSeconds: number }[]) => Promise<void>;

/**
 * One timer per VM and domain: resolve, publish the addresses with timeout = refresh + slack,
 * and resolve again when the (clamped) TTL runs out. When lookups keep failing, the elements
 * expire and the domain is closed: the allowlist fails closed.
 */
export class DomainFollower {
  private readonly timers = new Map<string, Map<string, NodeJS.Timeout>>();

  constructor(
    private readonly resolve: ResolveFn,
    private readonly publish: Publish,
    private readonly policy: RefreshPolicy,
    private readonly log: Logger,
  ) {}

  /**
   * Resolves every domain once (awaited), then keeps them fresh. The first answers go to `first`
   * when given (the attach puts them into the transaction that makes the VM's set), later ones to publish.
   */
  async start(vmId: string, domains: string[], first: Publish = this.publish): Promise<void> {
    this.stop(vmId);
    if (domains.length === 0) return;
    const timers = new Map<string, NodeJS.Timeout>();
    this.timers.set(vmId, timers);
    await Promise.all(domains.map((domain) => this.refresh(vmId, domain, timers, first)));
  }

  stop(vmId: string): void {
    for (const timer of this.timers.get(vmId)?.values() ?? []) clearTimeout(timer);
    this.timers.delete(vmId);
  }

  stopAll(): void {
    for (const vmId of [...this.timers.keys()]) this.stop(vmId);
  }

  /** `timers` identifies one start(): a refresh that outlived stop() or a newer start() ends. */
  private async refresh(vmId: string, domain: string, timers: Map<string, NodeJS.Timeout>, publish: Publish = this.publish): Promise<void> {
    const current = () => this.timers.get(vmId) === timers;
    let nextSeconds = this.policy.minSeconds;
    try {
      const answers = await this.resolve(domain);
      if (answers.length === 0) this.log.warn({ vmId, domain }, "allowed domain has no A record");
      const ttl = answers.length ? Math.min(...answers.map((answer) => answer.ttl)) : this.policy.minSeconds;
      nextSeconds = clamp(ttl, this.policy.minSeconds, this.policy.maxSeconds);
      if (!current()) return;
      const timeoutSeconds = nextSeconds + this.policy.slackSeconds;
      await publish(
        vmId,
        answers.map((answer) => ({ address: answer.address, timeoutSeconds })),
      );
      this.log.debug({ vmId, domain, addresses: answers.map((answer) => answer.address), nextSeconds }, "allowed domain resolved");
    } catch (err) {
      this.log.warn({ vmId, domain, err: (err as Error).message }, "resolving an allowed domain failed; retrying");
    }
    if (!current()) return;
    const timer = setTimeout(() => void this.refresh(vmId, domain, timers), nextSeconds * 1000);
    timer.unref();
    timers.set(domain, timer);
  }
}

const clamp = (value: number, min: number, max: number) => Math.min(Math.max(value, min), max);

/** True when the text is a dotted-quad IPv4 address. */
export const isIpv4 = (text: string) => parseIpv4(text) !== undefined;
