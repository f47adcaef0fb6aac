// A worker restart: re-adopts the VMMs that survived, marks dead ones failed, finishes interrupted
// creates and deletes, and removes what no record accounts for. Every status change is the VM's own
// transition, as it would have been had the worker not stopped.
import type { Logger } from "pino";
import { asWorkerError } from "./errors.js";
import type { FaultController } from "./faults.js";
import { isLive } from "./lifecycle.js";
import type { VmRegistry } from "./registry.js";
import { ManagedVm, type VmContext } from "./vm.js";
import type { NetworkPort, RecordRepo, SecretsPort, VmmBackend, VmmHandle, VmRecord } from "../ports/index.js";

export interface RecoveryDeps {
  backend: VmmBackend;
  network?: NetworkPort;
  records: RecordRepo;
  secrets: SecretsPort;
  faults: FaultController;
  registry: VmRegistry;
  vmContext: VmContext;
  /** Directories a VMM or helper of ours points into: unrecorded processes there are killed. */
  strayRoots: string[];
  log: Logger;
}

export interface RecoveryResult {
  adopted: string[];
  failed: string[];
  removed: string[];
  orphans: string[];
}

export async function recover(deps: RecoveryDeps): Promise<RecoveryResult> {
  const { records, backend, network, registry, log } = deps;
  const { records: saved, unreadable } = await records.loadAll();
  const result: RecoveryResult = { adopted: [], failed: [], removed: [...unreadable], orphans: [] };
  for (const id of unreadable) await records.remove(id);
  for (const record of saved) {
    const vm = ManagedVm.recovered(record, deps.vmContext);
    const handle = await adopt(deps, record);
    switch (record.status) {
      case "creating":
        // Interrupted create: rolled back, as its plan would have done.
        await handle?.kill();
        await vm.transition("failed", "create interrupted by a worker restart", { save: "none" });
        await records.remove(record.id);
        result.removed.push(record.id);
        continue;
      case "stopping":
        // Interrupted delete: finished.
        await handle?.kill();
        await vm.transition("stopped", "deleted", { save: "none" });
        await records.remove(record.id);
        result.removed.push(record.id);
        continue;
    }
    registry.add(vm);
    if (handle) {
      vm.own(handle);
      result.adopted.push(record.id);
    } else if (isLive(record.status)) {
      await vm.fail("the VMM exited while the worker was down");
      result.failed.push(record.id);
    }
  }

  // VMMs and helpers that no record accounts for (a worker killed between spawning a VMM and
  // saving its pid): everything adopted is kept, the rest pointing into our directories dies.
  const adopted = registry.all().flatMap((vm) => (vm.handle ? [{ vm, handle: vm.handle }] : []));
  const keepPids = new Set(adopted.flatMap(({ handle }) => [handle.record.pid, ...handle.record.helpers.map((helper) => helper.pid)]));
  result.orphans.push(...((await backend.killStrays?.(deps.strayRoots, keepPids)) ?? []));
  // Oldest first: the network rebuilds its rules in the order the VMs' creates made them.
  const live = registry
    .all()
    .filter((vm) => isLive(vm.status))
    .sort((a, b) => a.record.createdAtMs - b.record.createdAtMs);
  const keep = live.flatMap(({ id, record }) =>
    record.net
      ? [
          {
            vmId: id,
            net: record.net,
            allowedDomains: record.spec.allowedDomains,
            member: record.spec.group ? { group: record.spec.group, hostname: record.spec.hostname } : undefined,
          },
        ]
      : [],
  );
  if (network) {
    await network.init(keep);
    result.orphans.push(...(await network.removeOrphans(new Set(keep.map((entry) => entry.vmId)))));
  }
  result.orphans.push(
    ...(await deps.faults.resetAfterRestart(
      adopted.map(({ handle }) => handle),
      adopted.flatMap(({ vm }) => (vm.record.net ? [vm.record.net.tap] : [])),
    )),
  );
  // What a previous worker did inside the guests, their agents undo once they answer (in the background).
  for (const { vm } of adopted) if (vm.agent) void deps.faults.resetGuestAfterRestart(vm.id, vm.agent);
  result.orphans.push(...(await deps.secrets.removeOrphans(new Set(live.map((vm) => vm.id)))));
  // Uids of caged VMMs that live on stay taken; every other cage's cgroup and root go (and the
  // cpuThrottle limits of the live ones, as every fault of a previous worker does).
  const cage = deps.vmContext.cage;
  if (cage) {
    const caged = live.flatMap(({ id, record }) => (record.cage ? [{ id, uid: record.cage.uid }] : []));
    result.orphans.push(...(await cage.recover(caged)));
  }
  log.info({ ...result, known: registry.all().length }, "recovered state");
  return result;
}

/** The record's VMM if it still runs and this backend can take it back; undefined otherwise. */
async function adopt({ backend, records, log }: RecoveryDeps, record: VmRecord): Promise<VmmHandle | undefined> {
  if (!record.vmm || !isLive(record.status) || record.backend !== backend.name) return undefined;
  try {
    return await backend.adopt(record.vmm, records.vmDir(record.id));
  } catch (err) {
    log.warn({ vmId: record.id, err: asWorkerError(err).message }, "cannot adopt the VMM; taken as gone");
    return undefined;
  }
}
