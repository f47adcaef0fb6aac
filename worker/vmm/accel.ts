// Chooses KVM or TCG by booting something under KVM, not by trusting that /dev/kvm exists:
// some hosts expose a KVM variant (PVM) where QEMU aborts setting up a `-cpu host` vCPU, and
// where other CPU models run small firmware yet hang stock kernels. So both probes use the
// exact accelerator options the backend launches with (`-accel kvm -cpu host`). Cloud Hypervisor
// is probed with itself (probeKvmWithCloudHypervisor): its own KVM setup, no QEMU needed.
import { spawn } from "node:child_process";
import { constants, existsSync, readFileSync } from "node:fs";
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
  /** Present when the host's KVM is PVM (tests point it elsewhere). */
  pvmModuleDir?: string;
  logger?: Logger;
}

/**
 * PVM, a KVM variant for hosts without hardware virtualization, runs only guest kernels built for
 * it: stock kernels hang silently at their first instructions, while the small probes here pass
 * (seen on these hosts: `kvm_pvm` loaded, the firmware and PVH probes print, a Linux guest never
 * does). So on PVM only a kernel probe may choose KVM.
 */
function isPvm(moduleDir = "/sys/module/kvm_pvm"): boolean {
  return existsSync(moduleDir);
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

/** Where the probe kernel is linked and loaded: 1 MiB, the lowest address CH loads an ELF to (HIGH_RAM_START). */
const PVH_LOAD = 0x100000;
const PVH_CODE_OFFSET = 0x100;

/**
 * A tiny ELF kernel booted through its PVH note (XEN_ELFNOTE_PHYS32_ENTRY, type 18, name "Xen"),
 * the entry Cloud Hypervisor uses for an ELF payload (vmm/src/vm.rs load_kernel): in 32-bit
 * protected mode it prints PCR-PROBE-OK on COM1 and halts. One PT_LOAD at 1 MiB and one PT_NOTE.
 */
export function probeKernelElf(): Buffer {
  const message = Buffer.from(`${FIRMWARE_MARKER}\n\0`, "latin1");
  // cld; mov dx,0x3f8; mov esi,message; 1: lodsb; test al,al; jz 2f; out dx,al; jmp 1b; 2: hlt; jmp 2b
  const code = Buffer.from("fc66baf803be00000000ac84c07403eeebf8f4ebfd", "hex");
  code.writeUInt32LE(PVH_LOAD + PVH_CODE_OFFSET + code.length, 6);
  const size = PVH_CODE_OFFSET + code.length + message.length;
  const elf = Buffer.alloc(size);
  // ELF header: ELFCLASS64, little-endian, ET_EXEC, EM_X86_64, program headers right after it.
  elf.write("\x7fELF", 0, "latin1");
  elf.set([2, 1, 1], 4);
  elf.writeUInt16LE(2, 16);
  elf.writeUInt16LE(62, 18);
  elf.writeUInt32LE(1, 20);
  elf.writeBigUInt64LE(BigInt(PVH_LOAD + PVH_CODE_OFFSET), 24);
  elf.writeBigUInt64LE(64n, 32);
  elf.writeUInt16LE(64, 52);
  elf.writeUInt16LE(56, 54);
  elf.writeUInt16LE(2, 56);
  const noteOffset = 64 + 2 * 56;
  const programHeader = (at: number, type: number, flags: number, offset: number, length: number, align: number) => {
    elf.writeUInt32LE(type, at);
    elf.writeUInt32LE(flags, at + 4);
    elf.writeBigUInt64LE(BigInt(offset), at + 8);
    elf.writeBigUInt64LE(BigInt(PVH_LOAD + offset), at + 16); // vaddr
    elf.writeBigUInt64LE(BigInt(PVH_LOAD + offset), at + 24); // paddr
    elf.writeBigUInt64LE(BigInt(length), at + 32);
    elf.writeBigUInt64LE(BigInt(length), at + 40);
    elf.writeBigUInt64LE(BigInt(align), at + 48);
  };
  programHeader(64, 1, 5, 0, size, 0x1000); // PT_LOAD, R+X: the whole file at 1 MiB
  programHeader(64 + 56, 4, 4, noteOffset, 20, 4); // PT_NOTE
  elf.writeUInt32LE(4, noteOffset); // namesz ("Xen\0")
  elf.writeUInt32LE(4, noteOffset + 4); // descsz (a 32-bit address)
  elf.writeUInt32LE(18, noteOffset + 8); // XEN_ELFNOTE_PHYS32_ENTRY
  elf.write("Xen\0", noteOffset + 12, "latin1");
  elf.writeUInt32LE(PVH_LOAD + PVH_CODE_OFFSET, noteOffset + 16);
  code.copy(elf, PVH_CODE_OFFSET);
  message.copy(elf, PVH_CODE_OFFSET + code.length);
  return elf;
}

export interface ChKvmProbeOptions {
  chBinary: string;
  kvmDevice?: string;
  /** Hard limit on the probe boot; the process is killed when it passes. */
  probeTimeoutMs: number;
  /** Present when the host's KVM is PVM (tests point it elsewhere). */
  pvmModuleDir?: string;
  logger?: Logger;
}

/**
 * Whether KVM really runs a vCPU for Cloud Hypervisor, asked of Cloud Hypervisor itself: it boots
 * the probe kernel (PVH) with its serial on stdout, as the backend would boot a guest. Needs no
 * QEMU, so a host with only Cloud Hypervisor can choose it.
 */
export async function probeKvmWithCloudHypervisor(options: ChKvmProbeOptions): Promise<AcceleratorChoice> {
  const kvmDevice = options.kvmDevice ?? "/dev/kvm";
  try {
    await access(kvmDevice, constants.R_OK | constants.W_OK);
  } catch (err) {
    return { accel: "tcg", reason: `${kvmDevice} unusable (${(err as NodeJS.ErrnoException).code})` };
  }
  if (isPvm(options.pvmModuleDir)) return { accel: "tcg", reason: `${kvmDevice} is PVM (kvm_pvm), which boots only PVM guest kernels` };
  const dir = await mkdtemp(join(tmpdir(), "pcr-ch-probe-"));
  try {
    const kernel = join(dir, "probe.elf");
    await writeFile(kernel, probeKernelElf());
    const argv = [
      "--kernel",
      kernel,
      "--cmdline",
      "console=ttyS0",
      "--cpus",
      "boot=1",
      "--memory",
      "size=64M",
      "--serial",
      "tty",
      "--console",
      "off",
    ];
    const boot = await runProbe(
      "cloud-hypervisor",
      options.chBinary,
      argv,
      (output) => output.includes(FIRMWARE_MARKER),
      options.probeTimeoutMs,
    );
    const result: AcceleratorChoice = boot.ok
      ? { accel: "kvm", reason: `cloud-hypervisor booted its KVM probe kernel in ${boot.ms} ms` }
      : { accel: "tcg", reason: `cloud-hypervisor's KVM probe failed: ${boot.summary}` };
    options.logger?.info(result, "cloud-hypervisor KVM probe");
    return result;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const cache = new Map<string, Promise<AcceleratorChoice>>();

/** Probes once per process and option set; later calls share the first result. */
export function detectAccelerator(options: DetectAcceleratorOptions): Promise<AcceleratorChoice> {
  const key = JSON.stringify({
    ...options,
    logger: undefined,
    probeKernel: options.probeKernel && { ...options.probeKernel, readyPattern: String(options.probeKernel.readyPattern) },
  });
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
  if (!options.probeKernel && isPvm(options.pvmModuleDir)) {
    return { accel: "tcg", reason: `${kvmDevice} is PVM (kvm_pvm), which boots only PVM guest kernels; no probe kernel to try` };
  }
  const dir = await mkdtemp(join(tmpdir(), "pcr-accel-"));
  try {
    const firmwarePath = join(dir, "probe.fw");
    await writeFile(firmwarePath, probeFirmware());
    const firmware = await runProbe(
      "QEMU",
      qemuBinary,
      [
        ...QEMU_PROBE_ARGV,
        "-M",
        "microvm,x-option-roms=off,rtc=off,acpi=off",
        "-cpu",
        cpuModel,
        "-bios",
        firmwarePath,
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "-m",
        "16",
      ],
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
      "QEMU",
      qemuBinary,
      [
        ...QEMU_PROBE_ARGV,
        "-M",
        "microvm",
        "-cpu",
        cpuModel,
        "-m",
        "256",
        "-kernel",
        kernel.kernel,
        ...(kernel.initrd ? ["-initrd", kernel.initrd] : []),
        "-append",
        cmdline,
      ],
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

/** QEMU under KVM with serial on stdout. */
const QEMU_PROBE_ARGV = ["-accel", "kvm", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio"];

/** Runs a probe boot; success when `done` matches the output (stdout and stderr). Always kills. */
function runProbe(
  name: string,
  binary: string,
  argv: string[],
  done: (output: string) => boolean,
  timeoutMs: number,
): Promise<ProbeResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(binary, argv, { stdio: ["ignore", "pipe", "pipe"] });
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
    child.once("error", (err) => finish(false, `cannot run ${binary}: ${err.message}`));
    // "close" comes after the pipes drained, so the output is complete.
    child.once("close", (code, signal) => {
      if (done(output)) finish(true, "ok");
      else finish(false, signal ? `${name} killed by ${signal}` : `${name} exited with code ${code}`);
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
