// Accelerator detection: real probes with real QEMU; every probe must end within its timeout.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { detectAccelerator, hostTscKhz, probeFirmware, probeKernelElf, probeKvmWithCloudHypervisor } from "../../worker/vmm/accel.js";
import { testGuest } from "../helpers/repo.js";

test("the probe firmware prints its marker and exits, under TCG (so it is correct whatever the host)", () => {
  const dir = mkdtempSync(join(tmpdir(), "pcr-accel-test-"));
  try {
    const firmware = probeFirmware();
    assert.equal(firmware.length, 65536);
    writeFileSync(join(dir, "fw"), firmware);
    const run = spawnSync(
      "qemu-system-x86_64",
      [
        "-accel",
        "tcg",
        "-M",
        "microvm,x-option-roms=off,rtc=off,acpi=off",
        "-bios",
        join(dir, "fw"),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "-m",
        "16",
      ],
      { timeout: 10000, encoding: "utf8" },
    );
    assert.match(run.stdout, /PCR-PROBE-OK/);
    assert.equal(run.status, 1, "isa-debug-exit with value 0 exits QEMU with status 1");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("Cloud Hypervisor's probe kernel is an ELF booted through its PVH note: it prints the marker under TCG", () => {
  const dir = mkdtempSync(join(tmpdir(), "pcr-accel-test-"));
  try {
    const elf = probeKernelElf();
    assert.equal(elf.subarray(0, 4).toString("latin1"), "\x7fELF");
    writeFileSync(join(dir, "probe.elf"), elf);
    // QEMU takes the same PVH entry note as Cloud Hypervisor; the kernel halts, so the run is killed.
    const run = spawnSync(
      "qemu-system-x86_64",
      [
        "-accel",
        "tcg",
        "-M",
        "microvm",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-m",
        "32",
        "-kernel",
        join(dir, "probe.elf"),
      ],
      { timeout: 5000, killSignal: "SIGKILL", encoding: "utf8" },
    );
    assert.match(run.stdout, /PCR-PROBE-OK/, run.stderr);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("no usable KVM device means TCG without running anything", async () => {
  const choice = await detectAccelerator({ kvmDevice: "/nonexistent/kvm", probeTimeoutMs: 1000 });
  assert.equal(choice.accel, "tcg");
  assert.match(choice.reason, /\/nonexistent\/kvm unusable \(ENOENT\)/);
});

test("a PVM KVM (stock kernels hang on it) means TCG unless a probe kernel boots; nothing runs to decide", async () => {
  const dir = await mkdtemp(join(tmpdir(), "pcr-pvm-test-"));
  try {
    const kvmDevice = join(dir, "kvm");
    await writeFile(kvmDevice, "");
    const pvmModuleDir = join(dir, "kvm_pvm");
    await mkdir(pvmModuleDir);
    // A QEMU or Cloud Hypervisor that cannot run: had a probe started, the reason would say so.
    const qemu = await detectAccelerator({ kvmDevice, pvmModuleDir, qemuBinary: "/nonexistent/qemu", probeTimeoutMs: 1000 });
    assert.equal(qemu.accel, "tcg");
    assert.match(qemu.reason, /is PVM \(kvm_pvm\), which boots only PVM guest kernels/);
    const ch = await probeKvmWithCloudHypervisor({ chBinary: "/nonexistent/ch", kvmDevice, pvmModuleDir, probeTimeoutMs: 1000 });
    assert.equal(ch.accel, "tcg");
    assert.match(ch.reason, /is PVM/);
    const withKernel = await detectAccelerator({
      kvmDevice,
      pvmModuleDir,
      qemuBinary: "/nonexistent/qemu",
      probeTimeoutMs: 1000,
      probeKernel: { kernel: "/nonexistent/vmlinux" },
    });
    assert.match(withKernel.reason, /cannot run \/nonexistent\/qemu/, "with a probe kernel the probes decide");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("a missing QEMU binary means TCG, with the reason", { skip: !existsSync("/dev/kvm") && "no /dev/kvm here" }, async () => {
  const choice = await detectAccelerator({ qemuBinary: "/nonexistent/qemu", pvmModuleDir: "/nonexistent/kvm_pvm", probeTimeoutMs: 2000 });
  assert.equal(choice.accel, "tcg");
  assert.match(choice.reason, /cannot run \/nonexistent\/qemu/);
});

test("the firmware probe runs -cpu host under KVM, bounded by its timeout; results are cached", async (t) => {
  const started = Date.now();
  const first = detectAccelerator({ probeTimeoutMs: 5000 });
  const choice = await first;
  t.diagnostic(`firmware-only probe: ${JSON.stringify(choice)} in ${Date.now() - started} ms`);
  if (choice.accel === "kvm") assert.match(choice.reason, /firmware probe passed/);
  else assert.match(choice.reason, /unusable|firmware probe failed|is PVM/);
  assert.ok(Date.now() - started < 5000 + 2000, "the probe is bounded by its timeout");
  assert.equal(detectAccelerator({ probeTimeoutMs: 5000 }), first, "same options share one probe");
});

test("with the test guest's kernel, KVM is chosen only if the kernel really boots (this host: TCG)", async (t) => {
  const guest = testGuest();
  if ("skip" in guest) return t.skip(guest.skip);
  const probeTimeoutMs = 15000;
  const started = Date.now();
  const choice = await detectAccelerator({ probeTimeoutMs, probeKernel: { kernel: guest.spec.kernel } });
  t.diagnostic(`kernel probe: ${JSON.stringify(choice)} in ${Date.now() - started} ms`);
  assert.ok(Date.now() - started < 2 * probeTimeoutMs + 2000, "each probe is bounded by its timeout");
  if (choice.accel === "kvm") assert.match(choice.reason, /kernel booted under KVM/);
  else assert.match(choice.reason, /unusable|probe/);
});

test("the kernel probe catches what the firmware probe misses (here: -cpu qemu64 runs firmware, hangs kernels)", async (t) => {
  const guest = testGuest();
  if ("skip" in guest) return t.skip(guest.skip);
  const probeTimeoutMs = 6000;
  const started = Date.now();
  const choice = await detectAccelerator({ probeTimeoutMs, cpuModel: "qemu64", probeKernel: { kernel: guest.spec.kernel } });
  t.diagnostic(`-cpu qemu64 probes: ${JSON.stringify(choice)} in ${Date.now() - started} ms`);
  assert.ok(Date.now() - started < 2 * probeTimeoutMs + 2000, "the hung kernel probe was killed at its timeout");
  if (choice.accel === "tcg") assert.match(choice.reason, /unusable|firmware probe failed|kernel probe under KVM failed/);
});

test("the host TSC frequency is known (tsc_early_khz for TCG guests)", () => {
  const khz = hostTscKhz();
  assert.ok(khz !== undefined && khz > 100_000 && khz < 10_000_000, `plausible kHz, got ${khz}`);
});
