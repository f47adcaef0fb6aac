// The DNS proxy guests talk to (on the gateway, UDP 53). It answers a VM only for the names in
// that VM's allowlist: anything else is REFUSED without a byte going upstream, so DNS cannot carry
// a guest's data out. Allowed A queries are resolved by the proxy itself (a fresh query, never the
// guest's bytes), handed to `publish` — which opens exactly those addresses for that VM before the
// answer leaves — and answered with what publish accepted. Runs in its own process (see
// dns-proxy-process.ts), so hostile bytes are parsed away from the worker's event loop. Members of
// a group also get their peers' names (`<hostname>`, `<hostname>.<group>`), answered from here.
import { createSocket, type RemoteInfo, type Socket } from "node:dgram";
import type { Answer, ResolveFn } from "./allowlist.js";
import { type Query, RCODE, readQuery, refusal, reply } from "./dns-message.js";

export interface DnsProxyLimits {
  /** Queries per second a VM may send (token bucket refill) and the burst above it. */
  queriesPerSecond: number;
  burst: number;
  /** Upstream lookups one VM may have in flight; beyond it, SERVFAIL. */
  inFlightPerVm: number;
  /** TTLs told to guests are capped here (the set keeps the address at least that long). */
  maxTtlSeconds: number;
  /** Names cached, answers and "no address" alike. */
  cacheEntries: number;
  negativeTtlSeconds: number;
}

export const DEFAULT_DNS_LIMITS: DnsProxyLimits = {
  queriesPerSecond: 50,
  burst: 100,
  inFlightPerVm: 16,
  maxTtlSeconds: 3600,
  cacheEntries: 10_000,
  negativeTtlSeconds: 5,
};

/** Opens the addresses for the VM at `vmIp` and returns those it may be told (denied ranges are not). */
export type PublishFn = (vmIp: string, name: string, answers: Answer[]) => Promise<string[]>;

export type ProxyLog = (level: "debug" | "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;

export interface DnsProxyStats {
  answered: number;
  refused: number;
  dropped: number;
  failed: number;
  upstreamQueries: number;
}

/** How long a guest may keep a peer's address: members come and go, so not long. */
export const LOCAL_NAME_TTL_SECONDS = 5;

interface PerVm {
  domains: Set<string>;
  /** Names answered here, without asking upstream: the VM's group peers. */
  local: Map<string, string>;
  tokens: number;
  refilledAt: number;
  inFlight: number;
}

export class DnsProxy {
  private socket?: Socket;
  private readonly vms = new Map<string, PerVm>();
  private readonly cache = new Map<string, { answers: Answer[]; at: number; ttl: number }>();
  private readonly lookups = new Map<string, Promise<Answer[]>>();
  readonly stats: DnsProxyStats = { answered: 0, refused: 0, dropped: 0, failed: 0, upstreamQueries: 0 };

  constructor(
    private readonly options: { resolve: ResolveFn; publish: PublishFn; log: ProxyLog; limits?: Partial<DnsProxyLimits> },
    private readonly limits: DnsProxyLimits = { ...DEFAULT_DNS_LIMITS, ...options.limits },
  ) {}

  /** Binds the UDP socket; rejects with the bind error (address missing, port taken). */
  listen(address: string, port: number): Promise<{ address: string; port: number }> {
    const socket = createSocket({ type: "udp4" });
    this.socket = socket;
    socket.on("message", (message, remote) => void this.handle(message, remote));
    return new Promise((resolve, reject) => {
      const failed = (err: Error) => {
        socket.close();
        if (this.socket === socket) this.socket = undefined;
        reject(err);
      };
      socket.once("error", failed);
      socket.bind({ address, port, exclusive: true }, () => {
        socket.off("error", failed);
        // After binding, a send error concerns one datagram, never the server.
        socket.on("error", (err) => this.options.log("warn", "dns proxy socket error", { err: err.message }));
        resolve(socket.address());
      });
    });
  }

  /** The names the VM at `vmIp` may resolve; replaces what it had. */
  allow(vmIp: string, domains: string[]): void {
    this.vm(vmIp).domains = new Set(domains);
  }

  /** The names answered for the VM at `vmIp` from here (its group's members); replaces what it had. */
  names(vmIp: string, records: { name: string; address: string }[]): void {
    this.vm(vmIp).local = new Map(records.map(({ name, address }) => [name.toLowerCase(), address]));
  }

  private vm(vmIp: string): PerVm {
    let known = this.vms.get(vmIp);
    if (!known) {
      known = { domains: new Set(), local: new Map(), tokens: this.limits.burst, refilledAt: Date.now(), inFlight: 0 };
      this.vms.set(vmIp, known);
    }
    return known;
  }

  forget(vmIp: string): void {
    this.vms.delete(vmIp);
  }

  close(): void {
    this.socket?.close();
    this.socket = undefined;
  }

  private async handle(message: Buffer, remote: RemoteInfo): Promise<void> {
    const vm = this.vms.get(remote.address);
    // Only VMs get answers; anything else (the host, a spoofed source) gets silence.
    if (!vm || !this.takeToken(vm)) {
      this.stats.dropped++;
      return;
    }
    const verdict = readQuery(message);
    if ("drop" in verdict) {
      this.stats.dropped++;
      this.options.log("debug", "dns query dropped", { vmIp: remote.address, reason: verdict.drop });
      return;
    }
    if ("reply" in verdict) {
      this.stats.refused++;
      this.options.log("debug", "dns query refused", { vmIp: remote.address, reason: verdict.reason });
      return this.send(verdict.reply, remote);
    }
    this.send(await this.answer(verdict.query, remote.address, vm), remote);
  }

  private async answer(query: Query, vmIp: string, vm: PerVm): Promise<Buffer> {
    const peer = vm.local.get(query.name);
    if (peer !== undefined) {
      this.stats.answered++;
      return reply(query, RCODE.NOERROR, query.type === "A" ? [{ address: peer, ttl: LOCAL_NAME_TTL_SECONDS }] : []);
    }
    if (!vm.domains.has(query.name)) {
      this.stats.refused++;
      this.options.log("debug", "dns query for a name off the allowlist refused", { vmIp, name: query.name.slice(0, 253) });
      return refusal(query);
    }
    // An allowed name has addresses only: every other type is NODATA, asked of nobody.
    if (query.type !== "A") {
      this.stats.answered++;
      return reply(query, RCODE.NOERROR, []);
    }
    if (vm.inFlight >= this.limits.inFlightPerVm) {
      this.stats.failed++;
      return refusal(query, RCODE.SERVFAIL);
    }
    vm.inFlight++;
    try {
      const answers = await this.lookup(query.name);
      const accepted = new Set(await this.options.publish(vmIp, query.name, answers));
      this.stats.answered++;
      return reply(
        query,
        RCODE.NOERROR,
        answers.filter((answer) => accepted.has(answer.address)),
      );
    } catch (err) {
      this.stats.failed++;
      this.options.log("warn", "resolving an allowed name for a guest failed", { vmIp, name: query.name, err: (err as Error).message });
      return refusal(query, RCODE.SERVFAIL);
    } finally {
      vm.inFlight--;
    }
  }

  /** Upstream answers with their remaining TTLs; one lookup per name at a time, cached for its TTL. */
  private async lookup(name: string): Promise<Answer[]> {
    const now = Date.now();
    const cached = this.cache.get(name);
    if (cached) {
      const left = cached.ttl - Math.floor((now - cached.at) / 1000);
      if (left > 0) return cached.answers.map((answer) => ({ address: answer.address, ttl: Math.min(answer.ttl, left) }));
      this.cache.delete(name);
    }
    let pending = this.lookups.get(name);
    if (!pending) {
      this.stats.upstreamQueries++;
      pending = this.options.resolve(name).finally(() => this.lookups.delete(name));
      this.lookups.set(name, pending);
    }
    const fresh = (await pending).map((answer) => ({ address: answer.address, ttl: Math.min(answer.ttl, this.limits.maxTtlSeconds) }));
    const ttl = fresh.length ? Math.min(...fresh.map((answer) => answer.ttl)) : this.limits.negativeTtlSeconds;
    if (ttl > 0) {
      if (this.cache.size >= this.limits.cacheEntries) this.cache.delete(this.cache.keys().next().value!);
      this.cache.set(name, { answers: fresh, at: now, ttl });
    }
    return fresh;
  }

  private takeToken(vm: PerVm): boolean {
    const now = Date.now();
    vm.tokens = Math.min(this.limits.burst, vm.tokens + ((now - vm.refilledAt) / 1000) * this.limits.queriesPerSecond);
    vm.refilledAt = now;
    if (vm.tokens < 1) return false;
    vm.tokens--;
    return true;
  }

  private send(message: Buffer, remote: RemoteInfo): void {
    this.socket?.send(message, remote.port, remote.address);
  }
}
