// The bridge and the per-VM TAPs, through iproute2. Several link changes go through one
// `ip -batch -` so a TAP costs one process, not four.
import { createHash } from "node:crypto";
import type { RunResult, Runner } from "./run.js";

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
  constructor(private readonly run: Runner) {}

  /** `ip -batch -` with these lines: one process for all of them. */
  private batch(lines: string[]): Promise<RunResult> {
    return this.run("ip", ["-batch", "-"], `${lines.join("\n")}\n`);
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
  async ensureBridge(bridge: string, gatewayCidr: string): Promise<void> {
    if (!(await this.exists(bridge))) await this.ip(["link", "add", "name", bridge, "type", "bridge"]);
    const lines = [`addr replace ${gatewayCidr} dev ${bridge}`, `link set dev ${bridge} up`];
    const result = await this.batch(lines);
    if (result.exitCode !== 0) throw new Error(`ip -batch (${lines.join("; ")}) failed: ${result.stderr.trim()}`);
  }

  /**
   * TAP attached to the bridge, isolated from the other ports, up. Idempotent. One process when
   * `likelyNew` guesses right (a new VM's TAP does not exist, a recovered VM's does): the batch
   * stops at its first failing line, so a wrong guess changed nothing and is redone after a look.
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

  /** Deletes the link; a missing one is fine. */
  async remove(name: string): Promise<void> {
    const result = await this.run("ip", ["link", "delete", "dev", name]);
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
