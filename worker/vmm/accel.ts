// Chooses KVM or TCG by booting something under KVM, not by trusting that /dev/kvm exists:
// some hosts expose a KVM variant (PVM) where QEMU aborts setting up a `-cpu host` vCPU, and
// where other CPU models run small firmware yet hang stock kernels. So both probes use the
// exact accelerator options the backend launches with (`-accel kvm -cpu host`).
import { spawn } from "node:child_process";
import { constants, readFileSync } from "node:fs";
import { access, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Logger } from "pino";

export type Accelerator = "kvm" | "tcg";

export interface AcceleratorChoice {
  accel: Accelerator;
  /** What the probes saw, for the log and for operators. */
  reason: string;
}

export interface DetectAcceleratorOptions {
  qemuBinary?: string;
  kvmDevice?: string;
  /** The -cpu model the backend will use under KVM ("host" unless it was configured otherwise). */
  cpuModel?: string;
  /** Hard limit per probe boot; the probe process is killed when it passes. */
  probeTimeoutMs: number;
  /** A stock kernel to boot under KVM after the firmware probe passed: the stronger proof. */
  probeKernel?: { kernel: string; initrd?: string; cmdline?: string; readyPattern?: RegExp };
  logger?: Logger;
}

const FIRMWARE_MARKER = "PCR-PROBE-OK";
/** Printed by a kernel that got as far as mounting its root: it ran, whatever comes next. */
const DEFAULT_KERNEL_READY = /pcr-guest: ready|VFS: Unable to mount root fs|No working init found|Run \/init as init process/;

/**
 * A 64 KiB flat firmware: from the reset vector it enters protected then long mode, jumps to a
 * higher-half address (where stock kernels live), prints PCR-PROBE-OK on COM1 and exits through
 * isa-debug-exit. Assembled once with GNU as; only the non-zero head and the reset vector are kept.
 */
const FIRMWARE_HEAD =
  "fa2e660f0116f0000f20c06683c8010f22c066ea1a000f00080066b818008ed88ec08ed0bf0010000031c0b9000c0000" +
  "f3abc7050010000003200000c7050020000003300000c7050030000083000000c705f81f000003200000c705f02f0000" +
  "033000000f20e083c8200f22e0b8001000000f22d8b9800000c00f320d000100000f300f20c00d000000800f22c0ea95" +
  "000f00100048b8a1000f80ffffffffffe066baf803488d3512000000ac84c07403eeebf866baf40031c0eef4ebf65043" +
  "522d50524f42452d4f4b0a008db400000000000000000000ffff0000009acf00ffff0000009aaf00ffff00000092cf00" +
  "1f00d0000f";
const RESET_VECTOR = "e90d00"; // jmp near to offset 0, at 0xfff0

export function probeFirmware(): Buffer {
  const firmware = Buffer.alloc(65536);
  Buffer.from(FIRMWARE_HEAD, "hex").copy(firmware, 0);
  Buffer.from(RESET_VECTOR, "hex").copy(firmware, 0xfff0);
  return firmware;
}

const cache = new Map<string, Promise<AcceleratorChoice>>();

/** Probes once per process and option set; later calls share the first result. */
export function detectAccelerator(options: DetectAcceleratorOptions): Promise<AcceleratorChoice> {
  const key = JSON.stringify({ ...options, logger: undefined, probeKernel: options.probeKernel && { ...options.probeKernel, readyPattern: String(options.probeKernel.readyPattern) } });
  let choice = cache.get(key);
  if (!choice) {
    choice = probe(options)
      .catch((err: unknown): AcceleratorChoice => ({ accel: "tcg", reason: `KVM probe error: ${(err as Error).message}` }))
      .then((result) => {
        options.logger?.info(result, "accelerator chosen");
        return result;
      });
    cache.set(key, choice);
  }
  return choice;
}

async function probe(options: DetectAcceleratorOptions): Promise<AcceleratorChoice> {
  const qemuBinary = options.qemuBinary ?? "qemu-system-x86_64";
  const kvmDevice = options.kvmDevice ?? "/dev/kvm";
  const cpuModel = options.cpuModel ?? "host";
  try {
    await access(kvmDevice, constants.R_OK | constants.W_OK);
  } catch (err) {
    return { accel: "tcg", reason: `${kvmDevice} unusable (${(err as NodeJS.ErrnoException).code})` };
  }
  const dir = await mkdtemp(join(tmpdir(), "pcr-accel-"));
  try {
    const firmwarePath = join(dir, "probe.fw");
    await writeFile(firmwarePath, probeFirmware());
    const firmware = await runProbe(
      qemuBinary,
      ["-M", "microvm,x-option-roms=off,rtc=off,acpi=off", "-cpu", cpuModel, "-bios", firmwarePath, "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-m", "16"],
      (output) => output.includes(FIRMWARE_MARKER),
      options.probeTimeoutMs,
    );
    if (!firmware.ok) return { accel: "tcg", reason: `KVM firmware probe failed: ${firmware.summary}` };
    const firmwareSeen = `KVM firmware probe passed in ${firmware.ms} ms`;
    const kernel = options.probeKernel;
    if (!kernel) return { accel: "kvm", reason: `${firmwareSeen} (no probe kernel configured: kernels not tried)` };
    const ready = kernel.readyPattern ?? DEFAULT_KERNEL_READY;
    const cmdline = [kernel.cmdline ?? "", "console=ttyS0 panic=-1 reboot=t"].join(" ").trim();
    const boot = await runProbe(
      qemuBinary,
      ["-M", "microvm", "-cpu", cpuModel, "-m", "256", "-kernel", kernel.kernel, ...(kernel.initrd ? ["-initrd", kernel.initrd] : []), "-append", cmdline],
      (output) => ready.test(output),
      options.probeTimeoutMs,
    );
    if (!boot.ok) return { accel: "tcg", reason: `${firmwareSeen}; kernel probe under KVM failed: ${boot.summary}` };
    return { accel: "kvm", reason: `${firmwareSeen}; kernel booted under KVM in ${boot.ms} ms` };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

interface ProbeResult {
  ok: boolean;
  ms: number;
  /** Why it failed: the exit or the timeout, and the last output line. */
  summary: string;
}

/** Boots QEMU under KVM with serial on stdout; success when `done` matches the output. Always kills. */
function runProbe(qemuBinary: string, machineArgs: string[], done: (output: string) => boolean, timeoutMs: number): Promise<ProbeResult> {
  const started = Date.now();
  const argv = ["-accel", "kvm", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio", ...machineArgs];
  return new Promise((resolve) => {
    const child = spawn(qemuBinary, argv, { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    let settled = false;
    const finish = (ok: boolean, why: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill("SIGKILL");
      const lastLine = output.trim().split("\n").filter(Boolean).at(-1)?.slice(0, 300) ?? "no output";
      resolve({ ok, ms: Date.now() - started, summary: `${why}; last output: ${lastLine}` });
    };
    const timer = setTimeout(() => finish(false, `no success marker within ${timeoutMs} ms`), timeoutMs);
    const onData = (chunk: Buffer) => {
      output = (output + chunk.toString("utf8")).slice(-65536);
      if (done(output)) finish(true, "ok");
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.once("error", (err) => finish(false, `cannot run ${qemuBinary}: ${err.message}`));
    // "close" comes after the pipes drained, so the output is complete.
    child.once("close", (code, signal) => {
      if (done(output)) finish(true, "ok");
      else finish(false, signal ? `QEMU killed by ${signal}` : `QEMU exited with code ${code}`);
    });
  });
}

/** The host TSC frequency in kHz, for tsc_early_khz on TCG microvm guests (which hang without it). */
export function hostTscKhz(): number | undefined {
  try {
    const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
    const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo);
    return mhz ? Math.round(Number(mhz[1]) * 1000) : undefined;
  } catch {
    return undefined;
  }
}
