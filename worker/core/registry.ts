// The VMs this worker knows, and the host resources promised to creates still in flight: a create
// reserves its share against the limits before its first step and keeps it until it ends.
import { alreadyExists, notFound, resourceExhausted } from "./errors.js";
import { isLive } from "./lifecycle.js";
import type { ValidSpec } from "./spec.js";
import type { ManagedVm } from "./vm.js";

/** The host-wide limits a reservation is checked against. */
export interface HostLimits {
  maxVms: number;
  /** Sums over all live VMs. */
  maxTotalCpu: number;
  maxTotalMemoryBytes: number;
  /** Data disks of every VM not yet deleted, together (they are preallocated). */
  maxTotalDiskBytes: number;
}

export class VmRegistry {
  private readonly vms = new Map<string, ManagedVm>();
  /** Creates in flight by VM id, with the share of the host each was promised. */
  private readonly reservations = new Map<string, ValidSpec>();
  /** Pooled VMs (core/pools.ts): nobody's yet, but they use the host as much as any VM. */
  private readonly held = new Map<string, ValidSpec>();
  /** VMs by their create's idempotency key: rebuilt by recovery's add()s after a restart. */
  private readonly byKey = new Map<string, ManagedVm>();

  constructor(private readonly limits: HostLimits) {}

  /** The VM, or NOT_FOUND. */
  lookup(id: string): ManagedVm {
    const vm = this.vms.get(id);
    if (!vm) throw notFound(`vm ${JSON.stringify(id)} not found`);
    return vm;
  }

  has(id: string): boolean {
    return this.vms.has(id);
  }

  add(vm: ManagedVm): void {
    this.vms.set(vm.id, vm);
    const key = vm.record.idempotency?.key;
    if (key !== undefined) this.byKey.set(key, vm);
  }

  remove(id: string): void {
    const key = this.vms.get(id)?.record.idempotency?.key;
    if (key !== undefined && this.byKey.get(key)?.id === id) this.byKey.delete(key);
    this.vms.delete(id);
  }

  /** The VM whose create carried idempotency key `key`, in whatever status, until it is removed. */
  byIdempotencyKey(key: string): ManagedVm | undefined {
    return this.byKey.get(key);
  }

  all(): ManagedVm[] {
    return [...this.vms.values()];
  }

  /** Promises `spec`'s share of the host to the create of VM `id`, or RESOURCE_EXHAUSTED naming the limit. */
  reserve(id: string, spec: ValidSpec): void {
    this.admit(spec);
    this.reservations.set(id, spec);
  }

  /** Counts a pooled VM against the host's limits (RESOURCE_EXHAUSTED when it does not fit). */
  hold(id: string, spec: ValidSpec): void {
    this.admit(spec);
    this.held.set(id, spec);
  }

  /** The pooled VM is gone, or claimed (its claim reserves instead). */
  release(id: string): void {
    this.held.delete(id);
  }

  /** Whether `spec` would fit with no pooled VM on the host: ending pooled VMs for it is worth it. */
  fitsWithoutPools(spec: ValidSpec): boolean {
    try {
      this.admit(spec, false);
      return true;
    } catch {
      return false;
    }
  }

  private admit(spec: ValidSpec, countHeld = true): void {
    const { limits } = this;
    // A VM being created counts once, by its reservation, whether or not it is registered yet.
    const settled = this.all().filter((vm) => !this.reservations.has(vm.id));
    const promised = [...this.reservations.values(), ...(countHeld ? this.held.values() : [])];
    const specs = [...settled.filter((vm) => isLive(vm.status)).map((vm) => vm.record.spec), ...promised, spec];
    const cpu = sum(specs.map((each) => each.cpu));
    const memory = sum(specs.map((each) => each.memoryBytes));
    if (specs.length > limits.maxVms) throw resourceExhausted(`host limit of ${limits.maxVms} VMs reached`);
    if (cpu > limits.maxTotalCpu)
      throw resourceExhausted(`host vCPU limit ${limits.maxTotalCpu} would be exceeded (${cpu} requested in all)`);
    if (memory > limits.maxTotalMemoryBytes) {
      throw resourceExhausted(`host memory limit ${limits.maxTotalMemoryBytes} bytes would be exceeded (${memory} requested in all)`);
    }
    // A data disk holds its blocks until its VM is deleted, whatever the VM's status.
    const diskBytes = spec.dataDiskBytes ?? 0;
    const disks = [...settled.map((vm) => vm.record.spec), ...promised, spec];
    const disk = sum(disks.map((each) => each.dataDiskBytes ?? 0));
    if (diskBytes > 0 && disk > limits.maxTotalDiskBytes) {
      throw resourceExhausted(
        `host data-disk limit ${limits.maxTotalDiskBytes} bytes would be exceeded (${disk} held or requested in all)`,
      );
    }
    if (spec.group) {
      // Members find each other by hostname, so one group has each at most once.
      const taken = [...settled.map((vm) => vm.record.spec), ...this.reservations.values()].some(
        (other) => other.group === spec.group && other.hostname === spec.hostname,
      );
      if (taken) throw alreadyExists(`group ${spec.group} already has a member named ${spec.hostname}`);
    }
  }

  /** The create has ended: its VM, if it lives on, counts for itself now. */
  unreserve(id: string): void {
    this.reservations.delete(id);
  }
}

function sum(values: number[]): number {
  return values.reduce((total, value) => total + value, 0);
}
