// The QEMU backend's descriptor (module.ts): runs anywhere, with KVM when a probe boot under KVM
// works, else TCG. The implementation is backend.ts.
import { detectAccelerator } from "../accel.js";
import type { BackendModule } from "../module.js";

export const backend = {
  name: "qemu",
  binaries: [{ configKey: "qemuBinary", default: "qemu-system-x86_64", help: "QEMU binary (a name is looked up on PATH)" }],
  install: "apt-get install qemu-system-x86 (runs everywhere, KVM or TCG)",
  // Slower to boot than Cloud Hypervisor, but the one that runs without KVM.
  preference: 1,
  capabilities: { dataDisk: true, agent: "virtio-serial", snapshot: true },
  shareKind: "9p",
  kvmProbe: {
    reportKey: "kvm",
    label: "KVM",
    name: "KVM probe",
    run: (qemuBinary, { timeoutMs, logger }) => detectAccelerator({ qemuBinary, probeTimeoutMs: timeoutMs, logger }),
  },
  detect({ binary, kvm }) {
    if (!binary.found) return { usable: false, accel: "tcg", why: binary.reason };
    return {
      usable: true,
      accel: kvm.usable ? "kvm" : "tcg",
      why: `runs here with ${kvm.usable ? "KVM" : "TCG (software emulation: slow)"}`,
    };
  },
  async create({ binaries, accel, logger }) {
    const { createQemuBackend } = await import("./backend.js");
    return createQemuBackend({ qemuBinary: binaries.qemuBinary, accel, logger });
  },
} as const satisfies BackendModule;
