// Delay and bandwidth with tc on the VM's TAP: netem (delay, jitter) or tbf (rate) as the root qdisc,
// so it shapes traffic towards the guest. Clearing deletes the root qdisc, which gives the device its
// default back. One shaping fault per TAP at a time (a device has one root qdisc).
import { failedPrecondition, internal } from "../core/errors.js";
import type { TcFault } from "../core/fault-model.js";
import type { Runner } from "../net/run.js";

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
    const result = await this.run("tc", tcArgs(tap, fault));
    if (result.exitCode === 0) return;
    const stderr = result.stderr.trim();
    const qdisc = fault.kind === "delay" ? "netem" : "tbf";
    if (/qdisc kind is unknown/i.test(stderr)) {
      throw failedPrecondition(`${fault.kind} needs the sch_${qdisc} qdisc, which this host's kernel does not have (tc: ${stderr})`);
    }
    if (/exclusivity flag on|file exists/i.test(stderr)) {
      throw failedPrecondition(`another delay or bandwidth fault already shapes this VM's traffic; clear it first (tc: ${stderr})`);
    }
    throw internal(`tc ${tcArgs(tap, fault).join(" ")} failed: ${stderr}`);
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
