// Delay and bandwidth with tc on the VM's TAP: netem (delay, jitter) or tbf (rate) as the root qdisc,
// so it shapes traffic towards the guest. Clearing deletes the root qdisc, which gives the device its
// default back. One shaping fault per TAP at a time (a device has one root qdisc). A delay towards
// chosen peers is a prio root whose second band holds the netem, and u32 filters sending packets
// from those peers there; everything else takes the first band, undelayed.
import { failedPrecondition, internal } from "../core/errors.js";
import type { TcFault } from "../core/fault-model.js";
import type { Runner } from "../net/run.js";

/** The tc commands that make a fault, in order. */
export function tcCommands(tap: string, fault: TcFault): string[][] {
  const cidrs = fault.kind === "delay" ? (fault.cidrs ?? []) : [];
  if (cidrs.length === 0) return [tcArgs(tap, fault)];
  const netem = tcArgs(tap, fault).slice(5); // "netem delay …" without "qdisc add dev TAP root"
  return [
    ["qdisc", "add", "dev", tap, "root", "handle", "1:", "prio", "bands", "2", "priomap", ...Array(16).fill("0")],
    ["qdisc", "add", "dev", tap, "parent", "1:2", "handle", "20:", ...netem],
    ...cidrs.map((cidr) => [
      "filter",
      "add",
      "dev",
      tap,
      "parent",
      "1:",
      "protocol",
      "ip",
      "prio",
      "1",
      "u32",
      "match",
      "ip",
      "src",
      cidr,
      "flowid",
      "1:2",
    ]),
  ];
}

export function tcArgs(tap: string, fault: TcFault): string[] {
  if (fault.kind === "delay") {
    // A queue long enough that the delay line itself never drops (netem's default limit is 1000 packets).
    return [
      "qdisc",
      "add",
      "dev",
      tap,
      "root",
      "netem",
      "delay",
      `${fault.ms}ms`,
      ...(fault.jitterMs > 0 ? [`${fault.jitterMs}ms`] : []),
      "limit",
      "10000",
    ];
  }
  // Burst: at least one full frame, and about 20 ms worth at the rate, so the rate holds on average.
  const burstBytes = Math.max(3_200, Math.ceil((fault.kbitPerSecond * 1000) / 8 / 50));
  return ["qdisc", "add", "dev", tap, "root", "tbf", "rate", `${fault.kbitPerSecond}kbit`, "burst", String(burstBytes), "latency", "400ms"];
}

export class TcShaper {
  constructor(private readonly run: Runner) {}

  async apply(tap: string, fault: TcFault): Promise<void> {
    const commands = tcCommands(tap, fault);
    for (const [index, args] of commands.entries()) {
      const result = await this.run("tc", args);
      if (result.exitCode === 0) continue;
      // A half-made shaping must not stay: the root qdisc goes, and everything under it.
      if (index > 0) await this.clear(tap);
      throw this.failure(fault, args, result.stderr.trim());
    }
  }

  private failure(fault: TcFault, args: string[], stderr: string): Error {
    const qdisc = fault.kind === "delay" ? "netem" : "tbf";
    if (/qdisc kind is unknown/i.test(stderr)) {
      return failedPrecondition(`${fault.kind} needs the sch_${qdisc} qdisc, which this host's kernel does not have (tc: ${stderr})`);
    }
    if (/exclusivity flag on|file exists/i.test(stderr)) {
      return failedPrecondition(`another delay or bandwidth fault already shapes this VM's traffic; clear it first (tc: ${stderr})`);
    }
    return internal(`tc ${args.join(" ")} failed: ${stderr}`);
  }

  /** Back to the device's default qdisc. A device or qdisc already gone is fine. */
  async clear(tap: string): Promise<void> {
    const result = await this.run("tc", ["qdisc", "del", "dev", tap, "root"]);
    if (result.exitCode === 0 || /cannot find device|no such|invalid handle|cannot delete qdisc with handle of zero/i.test(result.stderr))
      return;
    throw internal(`tc qdisc del dev ${tap} root failed: ${result.stderr.trim()}`);
  }

  /** `tc -j qdisc show dev TAP`, for tests and diagnostics. */
  async show(tap: string): Promise<{ kind: string; handle: string }[]> {
    const result = await this.run("tc", ["-j", "qdisc", "show", "dev", tap]);
    return result.exitCode === 0 ? (JSON.parse(result.stdout) as { kind: string; handle: string }[]) : [];
  }
}
