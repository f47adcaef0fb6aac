// Address and MAC allocation from the worker's subnet. Leases live in one JSON file, written
// atomically (temp file + rename), so they survive a restart; a released address is reused.
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { z } from "zod";
import { resourceExhausted } from "../core/errors.js";

export interface Subnet {
  /** Network address as a 32-bit number. */
  base: number;
  prefixLength: number;
}

export function parseIpv4(text: string): number | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  let value = 0;
  for (const part of parts) {
    if (!/^(0|[1-9]\d{0,2})$/.test(part) || Number(part) > 255) return undefined;
    value = value * 256 + Number(part);
  }
  return value;
}

export function formatIpv4(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join(".");
}

/** "a.b.c.d/n" with host bits cleared, or undefined when malformed. */
export function parseCidr(text: string): Subnet | undefined {
  const match = /^([0-9.]+)\/(\d{1,2})$/.exec(text);
  if (!match) return undefined;
  const address = parseIpv4(match[1]!);
  const prefixLength = Number(match[2]);
  if (address === undefined || prefixLength > 32) return undefined;
  const size = 2 ** (32 - prefixLength);
  return { base: address - (address % size), prefixLength };
}

export const subnetSize = (subnet: Subnet) => 2 ** (32 - subnet.prefixLength);
export const formatCidr = (subnet: Subnet) => `${formatIpv4(subnet.base)}/${subnet.prefixLength}`;
export const gatewayOf = (subnet: Subnet) => formatIpv4(subnet.base + 1);

/** Locally administered, unicast, derived from the address: 02:50:<the four octets>. */
export function macForIp(ip: string): string {
  const octets = ip.split(".").map((octet) => Number(octet).toString(16).padStart(2, "0"));
  return ["02", "50", ...octets].join(":");
}

const leaseFileSchema = z.object({ leases: z.record(z.string(), z.string()) });

/**
 * How long a released address stays out of use while others are free: packets in flight and
 * connection-tracking state of the VM that had it must not reach the next one.
 */
export const ADDRESS_COOLDOWN_MS = 30_000;

export class Ipam {
  private leases = new Map<string, string>();
  /** Released address -> when it may be handed out again (in memory: a restart forgets it). */
  private readonly cooling = new Map<string, number>();
  private writing: Promise<void> = Promise.resolve();

  private constructor(
    private readonly subnet: Subnet,
    private readonly statePath: string,
    private readonly cooldownMs: number,
  ) {}

  static async open(subnet: Subnet, statePath: string, cooldownMs = ADDRESS_COOLDOWN_MS): Promise<Ipam> {
    const ipam = new Ipam(subnet, statePath, cooldownMs);
    const text = await readFile(statePath, "utf8").catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return undefined;
      throw err;
    });
    if (text !== undefined) {
      const parsed = leaseFileSchema.parse(JSON.parse(text));
      for (const [vmId, ip] of Object.entries(parsed.leases)) ipam.leases.set(vmId, ip);
    }
    return ipam;
  }

  get(vmId: string): string | undefined {
    return this.leases.get(vmId);
  }

  entries(): [string, string][] {
    return [...this.leases];
  }

  /** The VM's address: its existing lease, else the lowest free one not cooling down, else the one cooling longest. */
  async allocate(vmId: string): Promise<string> {
    const existing = this.leases.get(vmId);
    if (existing) return existing;
    const used = new Set(this.leases.values());
    const now = Date.now();
    for (const [ip, until] of this.cooling) if (until <= now) this.cooling.delete(ip);
    let ip: string | undefined;
    // .0 is the network, .1 the gateway (the bridge), the last is broadcast.
    for (let offset = 2; offset < subnetSize(this.subnet) - 1 && !ip; offset++) {
      const candidate = formatIpv4(this.subnet.base + offset);
      if (!used.has(candidate) && !this.cooling.has(candidate)) ip = candidate;
    }
    ip ??= [...this.cooling].filter(([candidate]) => !used.has(candidate)).sort((a, b) => a[1] - b[1])[0]?.[0];
    if (!ip) throw resourceExhausted(`no free address in ${formatCidr(this.subnet)}`);
    this.cooling.delete(ip);
    this.leases.set(vmId, ip);
    await this.save();
    return ip;
  }

  /** Records a lease that already exists elsewhere (a VM re-adopted at restart). */
  async adopt(vmId: string, ip: string): Promise<void> {
    if (this.leases.get(vmId) === ip) return;
    this.leases.set(vmId, ip);
    await this.save();
  }

  async release(vmId: string): Promise<void> {
    const ip = this.leases.get(vmId);
    if (ip === undefined) return;
    this.leases.delete(vmId);
    if (this.cooldownMs > 0) this.cooling.set(ip, Date.now() + this.cooldownMs);
    await this.save();
  }

  /** Serialised so that concurrent changes never interleave their renames. */
  private save(): Promise<void> {
    const snapshot = JSON.stringify({ leases: Object.fromEntries(this.leases) }, null, 2);
    this.writing = this.writing
      .catch(() => undefined) // that save's caller got its error; this one starts afresh
      .then(async () => {
        await mkdir(dirname(this.statePath), { recursive: true });
        const temp = `${this.statePath}.${process.pid}.tmp`;
        await writeFile(temp, snapshot, { mode: 0o600 });
        await rename(temp, this.statePath);
      });
    return this.writing;
  }
}
