// The Cloud Hypervisor backend's descriptor (module.ts): needs KVM that really runs a vCPU, asked
// of Cloud Hypervisor itself (accel.ts boots a probe kernel with it), and virtiofsd for shares.
// The implementation is backend.ts.
import { probeKvmWithCloudHypervisor } from "../accel.js";
import type { BackendModule } from "../module.js";

export const backend = {
  name: "cloud-hypervisor",
  binaries: [
    { configKey: "cloudHypervisorBinary", default: "cloud-hypervisor", help: "Cloud Hypervisor binary (a name is looked up on PATH)" },
    { configKey: "virtiofsdBinary", default: "/usr/lib/qemu/virtiofsd", help: "virtiofsd binary (Cloud Hypervisor's secrets share)" },
  ],
  install:
    "the cloud-hypervisor static release binary (https://github.com/cloud-hypervisor/cloud-hypervisor/releases) " +
    "on PATH, on a host with working KVM",
  // Boots in ~100 ms on KVM: preferred wherever it runs.
  preference: 2,
  // Its data disk would work; the disk faults built on it (QEMU's blkdebug) would not, so not yet.
  capabilities: { dataDisk: false, agent: "vsock", snapshot: true },
  shareKind: "virtiofs",
  kvmProbe: {
    reportKey: "chKvm",
    label: "KVM under cloud-hypervisor",
    name: "cloud-hypervisor's KVM probe",
    run: (chBinary, { timeoutMs, logger }) => probeKvmWithCloudHypervisor({ chBinary, probeTimeoutMs: timeoutMs, logger }),
  },
  detect({ binary, kvm, ownKvm }) {
    if (!binary.found) return { usable: false, accel: "kvm", why: binary.reason };
    if (kvm.usable) return { usable: true, accel: "kvm", why: `runs here (KVM works${ownKvm ? " under cloud-hypervisor" : ""})` };
    return { usable: false, accel: "kvm", why: `needs KVM, which does not run a vCPU here${ownKvm ? ` (${kvm.reason})` : ""}` };
  },
  async create({ binaries, logger }) {
    const { createCloudHypervisorBackend } = await import("./backend.js");
    return createCloudHypervisorBackend({ binary: binaries.cloudHypervisorBinary, virtiofsdBinary: binaries.virtiofsdBinary, logger });
  },
} as const satisfies BackendModule;
