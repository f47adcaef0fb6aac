// Prometheus metrics of the worker (prom-client), in a registry of its own.
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { VM_STATUSES, type VmView } from "../core/api.js";

export class WorkerMetrics {
  readonly registry = new Registry();
  readonly rpcCalls = new Counter({ name: "pcr_rpc_calls_total", help: "RPC calls by method and result code", labelNames: ["method", "code"], registers: [this.registry] });
  readonly rpcErrors = new Counter({ name: "pcr_rpc_errors_total", help: "RPC calls that failed, by method and code", labelNames: ["method", "code"], registers: [this.registry] });
  readonly callSeconds = new Histogram({
    name: "pcr_rpc_call_seconds",
    help: "RPC call latency by method",
    labelNames: ["method"],
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly createSeconds = new Histogram({
    name: "pcr_create_vm_seconds",
    help: "createVm latency (validation to VMM running)",
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly deleteSeconds = new Histogram({
    name: "pcr_delete_vm_seconds",
    help: "deleteVm latency (request to everything freed)",
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly nixCopyBytes = new Counter({ name: "pcr_nix_copy_bytes_total", help: "NAR bytes pulled with nix copy", registers: [this.registry] });
  readonly nixCopySeconds = new Counter({ name: "pcr_nix_copy_seconds_total", help: "Seconds spent in nix copy", registers: [this.registry] });

  /** Gauges computed at scrape time from the current VMs. */
  constructor(listVms: () => Promise<VmView[]>) {
    const registers = [this.registry];
    // Registered first: its collect hook refreshes every per-VM gauge from one listVms before they are read.
    const vmsByStatus: Gauge<"status"> = new Gauge({ name: "pcr_vms", help: "VMs by status", labelNames: ["status"], registers, collect: async () => {
      const vms = await listVms();
      vmsByStatus.reset();
      for (const status of VM_STATUSES) vmsByStatus.set({ status }, vms.filter((vm) => vm.status === status).length);
      for (const gauge of [...Object.values(io), drops]) gauge.reset();
      for (const vm of vms) {
        const labels = { vm: vm.id, hostname: vm.hostname };
        for (const [key, gauge] of Object.entries(io)) gauge.set(labels, Number(vm.counters[key as keyof typeof io]));
        drops.set(labels, Number(vm.egressDrops));
      }
    } });
    const perVm = (name: string, help: string) => new Gauge({ name, help, labelNames: ["vm", "hostname"], registers });
    const io = {
      blockReadBytes: perVm("pcr_vm_block_read_bytes", "Bytes read from the VM's disks"),
      blockWriteBytes: perVm("pcr_vm_block_write_bytes", "Bytes written to the VM's disks"),
      blockReadOps: perVm("pcr_vm_block_read_ops", "Read operations on the VM's disks"),
      blockWriteOps: perVm("pcr_vm_block_write_ops", "Write operations on the VM's disks"),
      netRxBytes: perVm("pcr_vm_net_rx_bytes", "Bytes the guest received"),
      netTxBytes: perVm("pcr_vm_net_tx_bytes", "Bytes the guest sent"),
      netRxPackets: perVm("pcr_vm_net_rx_packets", "Packets the guest received"),
      netTxPackets: perVm("pcr_vm_net_tx_packets", "Packets the guest sent"),
    };
    const drops = perVm("pcr_vm_egress_drops", "Packets the VM's egress allowlist dropped");

  }
}
