// Raw QEMU boot, no worker: the baseline the worker's createVm overhead is measured against.
// Same machine options as the QEMU backend (qemuArgv), serial on a pipe, timed to the ready marker.
import { spawn } from "node:child_process";
import type { Accelerator } from "../../worker/vmm/accel.js";
import { extraCmdlineFor, qemuArgv } from "../../worker/vmm/qemu/backend.js";

export interface RawBootOptions {
  kernel: string;
  initrd?: string;
  image?: string;
  cmdline: string;
  accel: Accelerator;
  cpu?: number;
  memoryBytes?: number;
  qemuBinary?: string;
  cpuModel?: string;
  readyMarker?: string;
  timeoutMs?: number;
  /** A virtio-net device on a TAP QEMU creates itself (run it inside a namespace: see `wrapper`). */
  net?: { tap: string; mac: string };
  /** The guest agent's virtio-serial port on a unix socket QEMU serves (nobody need connect). */
  agentSocket?: string;
  /** Command QEMU runs under, e.g. ["ip", "netns", "exec", "<ns>"]. */
  wrapper?: string[];
}

/** Boots, waits for the ready marker on the console, kills QEMU; rejects on exit or timeout. */
export function bootRawQemu(options: RawBootOptions): Promise<{ msToReady: number }> {
  const extra = extraCmdlineFor(options.accel).filter((param) => !options.cmdline.includes(param.split("=")[0]!));
  const argv = qemuArgv(
    {
      id: "raw-bench",
      kernel: options.kernel,
      initrd: options.initrd,
      image: options.image,
      cmdline: [options.cmdline, ...extra].join(" "),
      cpu: options.cpu ?? 1,
      memoryBytes: options.memoryBytes ?? 256 * 1024 * 1024,
      net: options.net,
      agentSocket: options.agentSocket,
    },
    { accel: options.accel, cpuModel: options.cpuModel },
  );
  const marker = options.readyMarker ?? "pcr-guest: ready";
  const timeoutMs = options.timeoutMs ?? 60000;
  const started = performance.now();
  const command = [...(options.wrapper ?? []), options.qemuBinary ?? "qemu-system-x86_64", ...argv];
  const child = spawn(command[0]!, command.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
  return new Promise((resolve, reject) => {
    let output = "";
    let settled = false;
    const finish = (err: Error | undefined) => {
      if (settled) return;
      settled = true;
      const msToReady = performance.now() - started;
      clearTimeout(timer);
      child.kill("SIGKILL");
      // Resolve once QEMU is gone, so back-to-back runs never overlap.
      const done = () => (err ? reject(err) : resolve({ msToReady }));
      if (child.exitCode !== null || child.signalCode !== null) done();
      else child.once("exit", done);
    };
    const timer = setTimeout(() => finish(new Error(`no "${marker}" within ${timeoutMs} ms`)), timeoutMs);
    child.stdout.on("data", (chunk: Buffer) => {
      output = (output + chunk.toString("utf8")).slice(-8192);
      if (output.includes(marker)) finish(undefined);
    });
    child.stderr.on("data", (chunk: Buffer) => (output = (output + chunk.toString("utf8")).slice(-8192)));
    child.once("error", (err) => finish(err));
    // "close" comes after the pipes drained: the marker, if printed, has been seen.
    child.once("close", (code, signal) =>
      finish(new Error(`QEMU ended (${signal ?? `code ${code}`}) before "${marker}": ${output.trim().split("\n").slice(-5).join(" | ")}`)),
    );
  });
}
