// Backend detection with real binaries: QEMU from Debian, the contract fake standing in for a
// cloud-hypervisor binary (answers --version), missing names, a binary whose --version fails. The
// KVM verdict is injected for the decision table and taken from accel.ts's real probe once.
// Detection runs over the registry's descriptors (worker/vmm/registry.ts), plus the fake backend
// passed explicitly.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, test } from "node:test";
import { WorkerError } from "../../worker/core/errors.js";
import { detectAccelerator, probeKvmWithCloudHypervisor, type AcceleratorChoice } from "../../worker/vmm/accel.js";
import {
  detectBackends,
  findBinary,
  formatDetectionReport,
  requireChosenBackend,
  type DetectBackendsOptions,
} from "../../worker/vmm/detect.js";
import { backend as fakeBackend } from "../../worker/vmm/fake/index.js";
import { BACKENDS, selectBackend } from "../../worker/vmm/registry.js";
import { FAKE_CH_BINARY } from "../fixtures/ch/fixtures.js";

const QEMU = "qemu-system-x86_64";
const kvmWorks = async (): Promise<AcceleratorChoice> => ({ accel: "kvm", reason: "kernel booted under KVM in 900 ms (injected)" });
const kvmBroken = async (): Promise<AcceleratorChoice> => ({ accel: "tcg", reason: "KVM firmware probe failed (injected)" });
const haveQemu = existsSync("/usr/bin/qemu-system-x86_64");
/** These probes run a stand-in hypervisor on a stand-in device: whatever KVM the host has (PVM here) is beside the point. */
const NOT_PVM = "/nonexistent/kvm_pvm";

/** The binaries and probes of the two registered backends, by what each stands for. */
interface Overrides {
  preference?: string;
  chBinary?: string;
  qemuBinary?: string;
  /** The host's verdict (QEMU's probe). */
  kvmProbe?: (binaryPath: string) => Promise<AcceleratorChoice>;
  /** Cloud Hypervisor's own probe; without it, it relies on the host's verdict. */
  chKvmProbe?: (chPath: string) => Promise<AcceleratorChoice>;
}

function options({
  preference = "auto",
  chBinary = FAKE_CH_BINARY,
  qemuBinary = QEMU,
  kvmProbe = kvmWorks,
  chKvmProbe,
}: Overrides): DetectBackendsOptions {
  return {
    preference,
    backends: BACKENDS,
    binaries: { cloudHypervisorBinary: chBinary, qemuBinary },
    kvmProbes: { kvm: kvmProbe, ...(chKvmProbe ? { chKvm: chKvmProbe } : {}) },
  };
}

test("findBinary: path + version for real binaries; a clear reason otherwise", {
  skip: !haveQemu && "qemu-system-x86_64 not installed",
}, async () => {
  const qemu = await findBinary(QEMU);
  assert.ok(qemu.found && qemu.path === "/usr/bin/qemu-system-x86_64" && /QEMU emulator version/.test(qemu.version), JSON.stringify(qemu));
  const fake = await findBinary(FAKE_CH_BINARY);
  assert.ok(fake.found && /cloud-hypervisor v/.test(fake.version));
  assert.deepEqual(await findBinary("cloud-hypervisor-surely-absent"), {
    found: false,
    reason: "cloud-hypervisor-surely-absent not found on PATH",
  });
  assert.deepEqual(await findBinary("/nonexistent/cloud-hypervisor"), {
    found: false,
    reason: "/nonexistent/cloud-hypervisor does not exist or is not executable",
  });

  const dir = await mkdtemp(join(tmpdir(), "pcr-detect-"));
  try {
    const broken = join(dir, "cloud-hypervisor");
    await writeFile(broken, "#!/bin/sh\necho 'error while loading shared libraries: libfoo.so' >&2\nexit 127\n");
    await chmod(broken, 0o755);
    const finding = await findBinary(broken);
    assert.ok(!finding.found && /--version failed: error while loading shared libraries/.test(finding.reason), JSON.stringify(finding));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("auto: Cloud Hypervisor when its binary works and KVM runs a vCPU", {
  skip: !haveQemu && "qemu-system-x86_64 not installed",
}, async () => {
  const report = await detectBackends(options({}));
  assert.deepEqual(report.chosen, { backend: "cloud-hypervisor", accel: "kvm" });
  assert.deepEqual(
    report.candidates.map((c) => [c.backend, c.usable, c.chosen]),
    [
      ["cloud-hypervisor", true, true],
      ["qemu", true, false],
    ],
  );
  assert.match(report.candidates[1]!.why, /not chosen: cloud-hypervisor is preferred/);
});

test("auto: QEMU with TCG when KVM does not really work, even with cloud-hypervisor present", {
  skip: !haveQemu && "qemu-system-x86_64 not installed",
}, async () => {
  const report = await detectBackends(options({ kvmProbe: kvmBroken }));
  assert.deepEqual(report.chosen, { backend: "qemu", accel: "tcg" });
  assert.match(report.candidates[0]!.why, /needs KVM, which does not run a vCPU here/);
  const text = formatDetectionReport(report);
  assert.match(text, /KVM: not usable \(KVM firmware probe failed \(injected\)\)/);
  assert.match(text, /\* qemu: \/usr\/bin\/qemu-system-x86_64, QEMU emulator version/);
  assert.match(text, /Chosen: qemu \(tcg\)/);
});

test("auto: QEMU with KVM when cloud-hypervisor is not installed", { skip: !haveQemu && "qemu-system-x86_64 not installed" }, async () => {
  const report = await detectBackends(options({ chBinary: "cloud-hypervisor-surely-absent" }));
  assert.deepEqual(report.chosen, { backend: "qemu", accel: "kvm" });
  assert.match(formatDetectionReport(report), /- cloud-hypervisor: not found\n\s+cloud-hypervisor-surely-absent not found on PATH/);
});

test("explicit preferences are honoured or fail clearly", { skip: !haveQemu && "qemu-system-x86_64 not installed" }, async () => {
  assert.deepEqual((await detectBackends(options({ preference: "qemu" }))).chosen, { backend: "qemu", accel: "kvm" });
  const noKvm = await detectBackends(options({ preference: "cloud-hypervisor", kvmProbe: kvmBroken }));
  assert.equal(noKvm.chosen, undefined);
  assert.match(noKvm.error!, /cloud-hypervisor was asked for but cannot run: needs KVM/);
  assert.throws(
    () => requireChosenBackend(noKvm),
    (err: unknown) => err instanceof WorkerError && err.code === "FAILED_PRECONDITION",
  );
});

test("nothing can run: an error that names what to install", async () => {
  const report = await detectBackends(
    options({ chBinary: "/nonexistent/cloud-hypervisor", qemuBinary: "/nonexistent/qemu-system-x86_64", kvmProbe: kvmBroken }),
  );
  assert.equal(report.chosen, undefined);
  assert.match(report.error!, /apt-get install qemu-system-x86/);
  assert.match(report.error!, /cloud-hypervisor static release binary/);
  assert.match(formatDetectionReport(report), /Error: no VMM backend can run here/);
  assert.throws(() => requireChosenBackend(report), /FAILED_PRECONDITION|no VMM backend/);
  // A throwing probe is a "not usable" verdict, not a crash.
  const thrown = await detectBackends(options({ kvmProbe: async () => Promise.reject(new Error("boom")) }));
  assert.deepEqual(thrown.kvm, { usable: false, reason: "KVM probe failed: boom" });
});

test("with accel.ts's real KVM probe (firmware only, no probe kernel)", {
  skip: !haveQemu && "qemu-system-x86_64 not installed",
}, async () => {
  const report = await detectBackends(options({ kvmProbe: () => detectAccelerator({ qemuBinary: QEMU, probeTimeoutMs: 10_000 }) }));
  // Without a probe kernel accel.ts cannot prove stock kernels boot and says TCG, with its reason.
  assert.ok(report.kvm.reason.length > 0);
  assert.deepEqual(report.chosen, report.kvm.usable ? { backend: "cloud-hypervisor", accel: "kvm" } : { backend: "qemu", accel: "tcg" });
  console.log(formatDetectionReport(report).replace(/^/gm, "# "));
});

afterEach(() => {
  for (const key of Object.keys(process.env)) if (key.startsWith("FAKE_CH_")) delete process.env[key];
});

/** A file standing for /dev/kvm, for the probe's access check and the stand-in's hypervisor open. */
async function fakeKvmDevice(): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), "pcr-detect-kvm-"));
  const path = join(dir, "kvm");
  await writeFile(path, "");
  return { path, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

// The stand-in has no vCPU: it runs the probe kernel under QEMU's TCG (FAKE_CH_VCPU=qemu-tcg), so
// the kernel really executes; the worker's QEMU is absent all the same.
test("a host with cloud-hypervisor and no QEMU: Cloud Hypervisor's own KVM probe boots its probe kernel, and it is chosen", {
  skip: !haveQemu && "qemu-system-x86_64 (the stand-in's vCPU) not installed",
}, async () => {
  const kvm = await fakeKvmDevice();
  try {
    process.env.FAKE_CH_KVM_DEVICE = kvm.path;
    process.env.FAKE_CH_VCPU = "qemu-tcg";
    const noQemu = "/nonexistent/qemu-system-x86_64";
    const report = await detectBackends(
      options({
        qemuBinary: noQemu,
        // The QEMU probe as the worker runs it: with no QEMU it cannot say KVM works.
        kvmProbe: () => detectAccelerator({ qemuBinary: noQemu, kvmDevice: kvm.path, pvmModuleDir: NOT_PVM, probeTimeoutMs: 5000 }),
        chKvmProbe: (chPath) =>
          probeKvmWithCloudHypervisor({ chBinary: chPath, kvmDevice: kvm.path, pvmModuleDir: NOT_PVM, probeTimeoutMs: 30_000 }),
      }),
    );
    assert.equal(report.kvm.usable, false, report.kvm.reason);
    assert.equal(report.chKvm?.usable, true, report.chKvm?.reason);
    assert.deepEqual(report.chosen, { backend: "cloud-hypervisor", accel: "kvm" });
    const text = formatDetectionReport(report);
    assert.match(text, /KVM under cloud-hypervisor: usable \(cloud-hypervisor booted its KVM probe kernel in \d+ ms\)/);
    assert.match(text, /\* cloud-hypervisor: .*fake-cloud-hypervisor\.mjs, cloud-hypervisor v/);
    assert.match(text, /Chosen: cloud-hypervisor \(kvm\)/);
  } finally {
    await kvm.cleanup();
  }
});

test("Cloud Hypervisor's own KVM probe fails clearly: no hypervisor, or a vCPU that never runs the kernel", async () => {
  const kvm = await fakeKvmDevice();
  try {
    const chProbe = (timeoutMs: number) => (chPath: string) =>
      probeKvmWithCloudHypervisor({ chBinary: chPath, kvmDevice: kvm.path, pvmModuleDir: NOT_PVM, probeTimeoutMs: timeoutMs });
    process.env.FAKE_CH_KVM_DEVICE = "/nonexistent/kvm";
    const noHypervisor = await detectBackends(options({ kvmProbe: kvmWorks, chKvmProbe: chProbe(30_000) }));
    assert.equal(noHypervisor.chKvm?.usable, false);
    assert.match(noHypervisor.chKvm!.reason, /cloud-hypervisor exited with code 1; last output: .*no supported hypervisor/);
    assert.match(noHypervisor.candidates[0]!.why, /needs KVM, which does not run a vCPU here \(cloud-hypervisor's KVM probe failed/);
    assert.equal(noHypervisor.chosen?.backend ?? "none", haveQemu ? "qemu" : "none");

    process.env.FAKE_CH_KVM_DEVICE = kvm.path;
    process.env.FAKE_CH_VCPU = "hang";
    const started = Date.now();
    const hangs = await detectBackends(options({ preference: "cloud-hypervisor", kvmProbe: kvmWorks, chKvmProbe: chProbe(1500) }));
    assert.ok(Date.now() - started < 20_000, "the probe is bounded");
    assert.match(hangs.chKvm!.reason, /no success marker within 1500 ms/);
    assert.equal(hangs.chosen, undefined);
    assert.match(hangs.error!, /cloud-hypervisor was asked for but cannot run: needs KVM/);
    // The device itself unusable: nothing is started.
    const none = await probeKvmWithCloudHypervisor({ chBinary: FAKE_CH_BINARY, kvmDevice: "/nonexistent/kvm", probeTimeoutMs: 1000 });
    assert.deepEqual(none, { accel: "tcg", reason: "/nonexistent/kvm unusable (ENOENT)" });
  } finally {
    await kvm.cleanup();
  }
});

test("a backend passed explicitly (the fake: no binary, in memory) is detected, reported and built like a registered one", async () => {
  const report = await detectBackends({
    preference: "fake",
    backends: [...BACKENDS, fakeBackend],
    binaries: { qemuBinary: "/nonexistent/qemu" },
    kvmProbes: { kvm: kvmBroken },
  });
  assert.deepEqual(report.chosen, { backend: "fake", accel: "kvm" });
  assert.match(formatDetectionReport(report), /\* fake: in memory\n\s+runs anywhere \(in memory\); chosen: asked for with --vmm fake/);
  const logger = (await import("pino")).pino({ level: "silent" });
  const backend = await selectBackend({ vmm: "auto", accel: "tcg" }, logger, [fakeBackend]);
  assert.equal(backend.name, "fake");
  assert.equal(backend.shareKind, fakeBackend.shareKind);
});
