// The bridge and the per-VM TAPs, through iproute2. Link changes go as batches to one long-lived
// `ip -batch -` (session.ts), so a TAP costs a write, not four processes.
import { createHash } from "node:crypto";
import type { RunResult, Runner } from "./run.js";
import type { ToolSession } from "./session.js";

export const TAP_PREFIX = "pcr-";

/** `pcr-<short id>`, at most 15 characters (IFNAMSIZ - 1). */
export function tapName(vmId: string): string {
  const short = vmId.replace(/^vm-/, "");
  if (/^[a-z0-9]{1,11}$/.test(short)) return TAP_PREFIX + short;
  return TAP_PREFIX + createHash("sha256").update(vmId).digest("hex").slice(0, 11);
}

interface LinkInfo {
  ifname: string;
  operstate?: string;
  master?: string;
  stats64?: { rx: { bytes: number; packets: number }; tx: { bytes: number; packets: number } };
}

export class IpLinks {
  constructor(
    private readonly run: Runner,
    /** A long-lived `ip -force -batch -` (session.ts): link changes then cost no process at all. */
    private readonly session?: ToolSession,
  ) {}

  /** These lines as one batch: `ip -batch -` stops at a failing line, the session goes on (-force). */
  private async batch(lines: string[]): Promise<RunResult> {
    if (!this.session) return this.run("ip", ["-batch", "-"], `${lines.join("\n")}\n`);
    const result = await this.session.request(lines);
    return { exitCode: result.failed ? 1 : 0, stdout: "", stderr: result.stderr };
  }

  private async ip(args: string[], input?: string): Promise<string> {
    const result = await this.run("ip", args, input);
    if (result.exitCode !== 0) throw new Error(`ip ${args.join(" ")} failed: ${result.stderr.trim()}`);
    return result.stdout;
  }

  async links(withStats = false): Promise<LinkInfo[]> {
    const out = await this.ip(["-j", ...(withStats ? ["-s"] : []), "link", "show"]);
    return JSON.parse(out) as LinkInfo[];
  }

  async exists(name: string): Promise<boolean> {
    const result = await this.run("ip", ["link", "show", "dev", name]);
    return result.exitCode === 0;
  }

  /** Bridge with the gateway address, up. Idempotent. */
  /**
   * The bridge, its address and a MAC of its own, up. Without a MAC set, a bridge takes the lowest of
   * its ports', so deleting one VM's TAP could change the gateway's MAC under every other guest,
   * which then sends to a MAC no port has until its ARP entry goes stale.
   */
  async ensureBridge(bridge: string, gatewayCidr: string, mac: string): Promise<void> {
    if (!(await this.exists(bridge))) await this.ip(["link", "add", "name", bridge, "address", mac, "type", "bridge"]);
    const lines = [`link set dev ${bridge} address ${mac}`, `addr replace ${gatewayCidr} dev ${bridge}`, `link set dev ${bridge} up`];
    const result = await this.batch(lines);
    if (result.exitCode !== 0) throw new Error(`ip -batch (${lines.join("; ")}) failed: ${result.stderr.trim()}`);
  }

  /**
   * TAP attached to the bridge, isolated from the other ports, up. Idempotent. One batch when
   * `likelyNew` guesses right (a new VM's TAP does not exist, a recovered VM's does); after a
   * wrong guess every line is idempotent, so the batch is redone after a look.
   */
  async ensureTap(tap: string, bridge: string, likelyNew = true): Promise<void> {
    const create = `tuntap add dev ${tap} mode tap`;
    const setUp = [
      `link set dev ${tap} master ${bridge}`,
      // Isolated ports cannot talk to each other at L2; the bridge table also drops it.
      `link set dev ${tap} type bridge_slave isolated on`,
      `link set dev ${tap} up`,
    ];
    const guessed = await this.batch(likelyNew ? [create, ...setUp] : setUp);
    if (guessed.exitCode === 0) return;
    const lines = (await this.exists(tap)) ? setUp : [create, ...setUp];
    const result = await this.batch(lines);
    if (result.exitCode !== 0) throw new Error(`ip -batch (${lines.join("; ")}) failed: ${result.stderr.trim()}`);
  }

  /** A TAP on no bridge, down: a pooled VM's, until its claim attaches it (ensureTap). */
  async parkTap(tap: string): Promise<void> {
    const result = await this.batch([`tuntap add dev ${tap} mode tap`]);
    if (result.exitCode !== 0) throw new Error(`ip tuntap add ${tap} failed: ${result.stderr.trim()}`);
  }

  /** Deletes the link; a missing one is fine. */
  async remove(name: string): Promise<void> {
    const result = await this.batch([`link delete dev ${name}`]);
    if (result.exitCode !== 0 && !/Cannot find device|does not exist/.test(result.stderr)) {
      throw new Error(`ip link delete ${name} failed: ${result.stderr.trim()}`);
    }
  }

  /** Every IPv4 address on this host's (namespace's) interfaces. */
  async ownAddresses(): Promise<string[]> {
    const text = await this.ip(["-j", "-4", "addr", "show"]);
    const links = JSON.parse(text || "[]") as { addr_info?: { family?: string; local?: string }[] }[];
    return links.flatMap((link) =>
      (link.addr_info ?? []).filter((info) => info.family === "inet" && info.local).map((info) => info.local!),
    );
  }

  async sysctl(key: string, value: string): Promise<void> {
    const result = await this.run("sysctl", ["-q", "-w", `${key}=${value}`]);
    if (result.exitCode !== 0) throw new Error(`sysctl ${key}=${value} failed: ${result.stderr.trim()}`);
  }
}
