// Prometheus metrics of the worker (prom-client), in a registry of its own.
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { VmView } from "../core/api.js";
import { WORKER_STATUSES } from "../core/lifecycle.js";
import type { PoolStats } from "../core/pools.js";

export class WorkerMetrics {
  readonly registry = new Registry();
  readonly rpcCalls = new Counter({
    name: "pcr_rpc_calls_total",
    help: "RPC calls by method and result code",
    labelNames: ["method", "code"],
    registers: [this.registry],
  });
  readonly rpcErrors = new Counter({
    name: "pcr_rpc_errors_total",
    help: "RPC calls that failed, by method and code",
    labelNames: ["method", "code"],
    registers: [this.registry],
  });
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
  readonly nixCopyBytes = new Counter({
    name: "pcr_nix_copy_bytes_total",
    help: "NAR bytes pulled with nix copy",
    registers: [this.registry],
  });
  readonly nixCopySeconds = new Counter({
    name: "pcr_nix_copy_seconds_total",
    help: "Seconds spent in nix copy",
    registers: [this.registry],
  });

  /** Gauges computed at scrape time from the current VMs. */
  constructor(listVms: () => Promise<VmView[]>, poolStats: () => PoolStats[] = () => []) {
    const registers = [this.registry];
    // prom-client collects all metrics of a scrape concurrently: every gauge below awaits the same
    // listVms snapshot, taken once per scrape.
    let snapshot: Promise<VmView[]> | undefined;
    const current = (): Promise<VmView[]> => {
      snapshot ??= listVms().finally(() => setTimeout(() => (snapshot = undefined), 0));
      return snapshot;
    };
    new Gauge({
      name: "pcr_vms",
      help: "VMs by status",
      labelNames: ["status"],
      registers,
      async collect() {
        const vms = await current();
        // A worker's own statuses: `lost` is only ever a fleet gateway's, never a series here.
        for (const status of WORKER_STATUSES) this.set({ status }, vms.filter((vm) => vm.status === status).length);
      },
    });
    const perVm = (name: string, help: string, value: (vm: VmView) => bigint) =>
      new Gauge({
        name,
        help,
        labelNames: ["vm", "hostname"],
        registers,
        async collect() {
          const vms = await current();
          this.reset();
          for (const vm of vms) this.set({ vm: vm.id, hostname: vm.hostname }, Number(value(vm)));
        },
      });
    perVm("pcr_vm_block_read_bytes", "Bytes read from the VM's disks", (vm) => vm.counters.blockReadBytes);
    perVm("pcr_vm_block_write_bytes", "Bytes written to the VM's disks", (vm) => vm.counters.blockWriteBytes);
    perVm("pcr_vm_block_read_ops", "Read operations on the VM's disks", (vm) => vm.counters.blockReadOps);
    perVm("pcr_vm_block_write_ops", "Write operations on the VM's disks", (vm) => vm.counters.blockWriteOps);
    perVm("pcr_vm_net_rx_bytes", "Bytes the guest received", (vm) => vm.counters.netRxBytes);
    perVm("pcr_vm_net_tx_bytes", "Bytes the guest sent", (vm) => vm.counters.netTxBytes);
    perVm("pcr_vm_net_rx_packets", "Packets the guest received", (vm) => vm.counters.netRxPackets);
    perVm("pcr_vm_net_tx_packets", "Packets the guest sent", (vm) => vm.counters.netTxPackets);
    perVm("pcr_vm_egress_drops", "Packets the VM's egress allowlist dropped", (vm) => vm.egressDrops);

    const perPool = (name: string, help: string, value: (pool: PoolStats) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ["pool"],
        registers,
        collect() {
          this.reset();
          for (const pool of poolStats()) this.set({ pool: pool.name }, value(pool));
        },
      });
    perPool("pcr_pool_ready_vms", "Pooled VMs booted, paused and ready to claim", (pool) => pool.ready);
    perPool("pcr_pool_target_vms", "Pooled VMs the pool keeps ready", (pool) => pool.target);
    perPool("pcr_pool_memory_bytes", "Guest memory the pool's ready VMs hold", (pool) => pool.memoryBytes);
    perPool("pcr_pool_snapshot_bytes", "Size of the pool's snapshot on disk (0: none)", (pool) => pool.snapshotBytes);
    perPool("pcr_pool_snapshot_ready", "1 when the pool's snapshot on disk can be restored", (pool) => (pool.snapshot === "ready" ? 1 : 0));
    perPool("pcr_pool_snapshot_rebuilds", "Snapshots found missing, changed or unloadable and saved again", (pool) => pool.rebuilds);
    new Gauge({
      name: "pcr_pool_claims",
      help: "Creates of a pooled machine, by where the VM came from (pool, snapshot, boot)",
      labelNames: ["pool", "origin"],
      registers,
      collect() {
        this.reset();
        for (const pool of poolStats()) {
          for (const [origin, count] of Object.entries(pool.claims)) this.set({ pool: pool.name, origin }, count);
        }
      },
    });
  }
}
