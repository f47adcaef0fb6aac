// Fault injection over the ports, the use case: validates a fault (fault-model.ts), applies it to one
// VM, remembers how to undo it, and undoes it on clear, on expiry (durationMs) or when the VM goes
// away. The host adapters are in worker/faults/; in-guest faults go through the VM's guest agent
// (agent/faults.go). docs/faults.md.
import { randomBytes } from "node:crypto";
import type { Logger } from "pino";
import type { ActiveFault, FaultInput, FaultKind, FaultName, VmStatus } from "./api.js";
import { asWorkerError, failedPrecondition, notFound, unavailable } from "./errors.js";
import { describeFault, type GuestFaultKind, isGuestFault, isInstant, validateFault } from "./fault-model.js";
import { acceptsFaults } from "./lifecycle.js";
import type {
  AgentConnection,
  BackendName,
  CpuThrottlePort,
  GuestFault,
  GuestFaultResult,
  NetFaultPort,
  VmmHandle,
} from "../ports/index.js";

export interface FaultPorts {
  net?: NetFaultPort;
  cpu?: CpuThrottlePort;
}

/** What the controller may see and do of one VM; the VM (vm.ts) builds it. */
export interface FaultTarget {
  id: string;
  status: VmStatus;
  backend: BackendName;
  handle?: VmmHandle;
  tap?: string;
  /** The channel to the guest agent, while the VM has one (in-guest faults go through it). */
  agent?: AgentConnection;
  /** Pauses or resumes the guest and moves the VM through the lifecycle (its transition). */
  setPaused(paused: boolean): Promise<void>;
  /** A caged VMM's own cgroup: `percent` of one CPU, or no limit. The cpuThrottle fault uses it where there is one. */
  limitCpu?(percent: number | undefined): Promise<void>;
}

type Undo = (target: FaultTarget) => Promise<void>;

/** How long an in-guest fault may take before the call gives up: the VM's other operations queue behind it. */
export const GUEST_FAULT_DEADLINE_MS = { fillDisk: 15 * 60_000, other: 60_000 } as const;
/** After a worker restart, how long the reset of a VM's in-guest faults waits for its agent's hello. */
export const GUEST_RESET_WAIT_MS = 10 * 60_000;
/** What a guest reboot ends: processes and the clock start afresh (a fill file on a disk stays). */
const ENDED_BY_REBOOT: ReadonlySet<FaultName> = new Set<FaultName>(["freezeProcess", "clockShift", "clockStrobe"]);

interface Entry {
  view: ActiveFault;
  fault: FaultKind;
  timer?: NodeJS.Timeout;
  /** Undoes the fault; the VMM may be gone already. */
  undo(target: FaultTarget): Promise<void>;
  /**
   * Its undo has begun: no longer listed. (A pause's undo moves the VM back to running, and who sees
   * the VM running must not see the pause still listed.)
   */
  clearing?: boolean;
}

export class FaultController {
  private readonly byVm = new Map<string, Map<string, Entry>>();
  /** Resets of in-guest faults a previous worker left, by VM, until they are done. */
  private readonly guestResets = new Map<string, Promise<void>>();

  constructor(
    private readonly ports: FaultPorts,
    private readonly log: Logger,
    /** Called when a fault's durationMs is over; the service clears it in the VM's queue. */
    private readonly onExpired: (vmId: string, faultId: string) => void,
  ) {}

  /**
   * After a worker restart: faults are not kept across one, so whatever a previous worker applied
   * (rules, qdiscs, cgroups, filters inside the VMMs) is removed and the VMs run unfaulted.
   */
  async resetAfterRestart(handles: VmmHandle[], taps: string[]): Promise<string[]> {
    const attempts: Promise<string[]>[] = [
      this.ports.net?.reset(taps) ?? Promise.resolve([]),
      this.ports.cpu?.reset() ?? Promise.resolve([]),
      ...handles.map((handle) => handle.resetFaults?.() ?? Promise.resolve([])),
    ];
    const removed: string[] = [];
    for (const attempt of attempts) {
      removed.push(
        ...(await attempt.catch((err) => {
          this.log.warn({ err: asWorkerError(err).message }, "cannot remove a fault left by a previous worker");
          return [];
        })),
      );
    }
    return removed;
  }

  /**
   * After a worker restart: once the VM's agent says hello, it undoes every in-guest fault it still
   * holds (frozen processes, clock steps, strobes, fill files), which the new worker does not know.
   * Runs in the background: recovery never waits for a guest. In-guest faults injected meanwhile
   * wait for it, so the reset cannot undo them.
   */
  resetGuestAfterRestart(vmId: string, agent: AgentConnection, waitMs = GUEST_RESET_WAIT_MS): Promise<void> {
    const log = this.log.child({ vmId });
    const reset: Promise<void> = agent
      .whenReady(waitMs)
      .then(() => agent.fault({ kind: "reset" }, GUEST_FAULT_DEADLINE_MS.other))
      .then(
        ({ pids, bytes }) => {
          if (pids.length || bytes) log.info({ thawed: pids, freedBytes: bytes }, "in-guest faults a previous worker left were undone");
        },
        (err) => log.warn({ err: asWorkerError(err).message }, "cannot reset the in-guest faults a previous worker left"),
      )
      .finally(() => {
        if (this.guestResets.get(vmId) === reset) this.guestResets.delete(vmId);
      });
    this.guestResets.set(vmId, reset);
    return reset;
  }

  list(vmId: string): ActiveFault[] {
    return [...(this.byVm.get(vmId)?.values() ?? [])].filter((entry) => !entry.clearing).map((entry) => ({ ...entry.view }));
  }

  async inject(target: FaultTarget, input: FaultInput): Promise<string> {
    const fault = validateFault(input);
    if (!acceptsFaults(target.status)) {
      throw failedPrecondition(`vm ${target.id} is ${target.status}; faults need a running or paused VM`);
    }
    const handle = target.handle;
    if (!handle) throw failedPrecondition(`vm ${target.id} has no VMM attached`);
    const faultId = `fault-${randomBytes(4).toString("hex")}`;
    const log = this.log.child({ vmId: target.id, faultId, fault: fault.kind });

    const { undo, detail } = isGuestFault(fault)
      ? await this.applyInGuest(target, faultId, fault)
      : { undo: await this.apply(target, handle, faultId, fault), detail: "" };
    const description = `${describeFault(fault)}${detail ? ` (${detail})` : ""}`;
    if (isInstant(fault.kind)) {
      log.info({ description }, "instant fault injected");
      return faultId;
    }
    const now = Date.now();
    const durationMs = fault.durationMs ?? 0;
    const entry: Entry = {
      fault,
      undo: undo!,
      view: {
        id: faultId,
        kind: fault.kind,
        description,
        injectedAtMs: BigInt(now),
        expiresAtMs: durationMs > 0 ? BigInt(now + durationMs) : 0n,
      },
    };
    if (durationMs > 0) {
      entry.timer = setTimeout(() => this.onExpired(target.id, faultId), durationMs);
      entry.timer.unref();
    }
    let faults = this.byVm.get(target.id);
    if (!faults) {
      faults = new Map();
      this.byVm.set(target.id, faults);
    }
    faults.set(faultId, entry);
    log.info({ description: entry.view.description, durationMs }, "fault injected");
    return faultId;
  }

  async clear(target: FaultTarget, faultId: string): Promise<void> {
    const entry = this.byVm.get(target.id)?.get(faultId);
    if (!entry) throw notFound(`vm ${target.id} has no active fault ${JSON.stringify(faultId)}`);
    entry.clearing = true;
    try {
      await entry.undo(target);
    } catch (err) {
      entry.clearing = false; // still there: listed, and a later clear may try again
      throw err;
    }
    this.forget(target.id, faultId);
    this.log.info({ vmId: target.id, faultId, fault: entry.fault.kind }, "fault cleared");
  }

  /** The VM is going away (or gone): undo what can still be undone, never throw. */
  async clearAll(target: FaultTarget): Promise<void> {
    for (const faultId of [...(this.byVm.get(target.id)?.keys() ?? [])]) {
      await this.clear(target, faultId).catch((err) => {
        this.log.warn({ vmId: target.id, faultId, err: asWorkerError(err).message }, "fault clear failed");
        this.forget(target.id, faultId);
      });
    }
  }

  private forget(vmId: string, faultId: string): void {
    const faults = this.byVm.get(vmId);
    clearTimeout(faults?.get(faultId)?.timer);
    faults?.delete(faultId);
    if (faults?.size === 0) this.byVm.delete(vmId);
  }

  /** Applies the fault; returns its undo (undefined for instant faults). */
  private async apply(
    target: FaultTarget,
    handle: VmmHandle,
    faultId: string,
    fault: Exclude<FaultKind, GuestFaultKind>,
  ): Promise<Undo | undefined> {
    const unsupported = (what: string) => failedPrecondition(`${fault.kind} is not supported on ${target.backend}: ${what}`);
    switch (fault.kind) {
      case "partition":
      case "loss":
      case "delay":
      case "bandwidth": {
        const net = this.ports.net;
        const tap = target.tap;
        if (!net || !tap)
          throw failedPrecondition(`${fault.kind} needs the VM's network, and vm ${target.id} has none (networking disabled?)`);
        try {
          await net.apply(faultId, tap, fault);
        } catch (err) {
          // No sch_netem on this host: the VMM can hold packets itself (QEMU's filter-redirector).
          if (
            fault.kind !== "delay" ||
            asWorkerError(err).code !== "FAILED_PRECONDITION" ||
            !handle.delayNetwork ||
            !handle.clearNetworkDelay
          )
            throw err;
          await handle.delayNetwork(faultId, { ms: fault.ms, jitterMs: fault.jitterMs, ...(fault.cidrs ? { cidrs: fault.cidrs } : {}) });
          return () => handle.clearNetworkDelay!(faultId);
        }
        return () => net.clear(faultId, tap, fault);
      }
      case "pause":
        if (target.status === "paused") throw failedPrecondition(`vm ${target.id} is already paused`);
        await target.setPaused(true);
        return async (t) => {
          if (t.status === "paused") await t.setPaused(false);
        };
      case "resume":
        if (target.status !== "paused") throw failedPrecondition(`vm ${target.id} is not paused`);
        await target.setPaused(false);
        for (const [id, entry] of this.byVm.get(target.id) ?? []) if (entry.fault.kind === "pause") this.forget(target.id, id);
        return undefined;
      case "killVmm":
        await handle.kill();
        return undefined;
      case "powerOff":
        if (!handle.powerOff) throw unsupported("no hard power off");
        await handle.powerOff();
        return undefined;
      case "reboot":
        if (!handle.reset) throw unsupported("no hard reset");
        await handle.reset();
        // The guest starts afresh: nothing of these is left to undo (and stepping its new clock back would be wrong).
        for (const [id, entry] of this.byVm.get(target.id) ?? []) if (ENDED_BY_REBOOT.has(entry.fault.kind)) this.forget(target.id, id);
        return undefined;
      case "diskErrors": {
        if (!handle.injectDiskErrors || !handle.clearDiskErrors) {
          throw unsupported("it has no runtime block-error injection (QEMU's blkdebug has no equivalent there); use the QEMU backend");
        }
        const active = [...(this.byVm.get(target.id)?.values() ?? [])].find((entry) => entry.fault.kind === "diskErrors");
        if (active) throw failedPrecondition(`a diskErrors fault (${active.view.id}) is already active on vm ${target.id}; clear it first`);
        await handle.injectDiskErrors(faultId, { ...fault, errno: fault.errno || 5 });
        return () => handle.clearDiskErrors!(faultId);
      }
      case "cpuThrottle": {
        const cpu = this.ports.cpu;
        if (!cpu && !target.limitCpu) throw failedPrecondition("cpuThrottle is not available on this worker");
        if ([...(this.byVm.get(target.id)?.values() ?? [])].some((entry) => entry.fault.kind === "cpuThrottle")) {
          throw failedPrecondition(`a cpuThrottle fault is already active on vm ${target.id}; clear it first`);
        }
        if (target.limitCpu) {
          await target.limitCpu(fault.percent);
          return (later) => later.limitCpu?.(undefined) ?? Promise.resolve();
        }
        if (!cpu) throw failedPrecondition("cpuThrottle is not available on this worker");
        const pid = handle.record.pid;
        await cpu.throttle(faultId, pid, fault.percent);
        return () => cpu.clear(faultId, pid);
      }
    }
  }

  /**
   * Makes a fault inside the guest through its agent; returns its undo (none for a kill) and what
   * the agent reached, for the description.
   */
  private async applyInGuest(target: FaultTarget, faultId: string, fault: GuestFaultKind): Promise<{ undo?: Undo; detail: string }> {
    const agent = guestAgent(target);
    const pending = this.guestResets.get(target.id);
    if (pending && agent.state === "ready") await pending;
    switch (fault.kind) {
      case "killProcess": {
        const { pids } = await guestCall(agent, { kind: "kill", ...processOf(fault), signal: fault.signal });
        return { detail: `pids ${pids.join(", ")}` };
      }
      case "freezeProcess": {
        const { pids } = await guestCall(agent, { kind: "freeze", ...processOf(fault) });
        return { detail: `pids ${pids.join(", ")}`, undo: undoInGuest({ kind: "thaw", pids }) };
      }
      case "clockShift":
        await guestCall(agent, { kind: "clockShift", deltaMs: fault.deltaMs });
        return { detail: "", undo: undoInGuest({ kind: "clockShift", deltaMs: -fault.deltaMs }) };
      case "clockStrobe": {
        const active = [...(this.byVm.get(target.id)?.values() ?? [])].find((entry) => entry.fault.kind === "clockStrobe");
        if (active)
          throw failedPrecondition(`a clockStrobe fault (${active.view.id}) is already active on vm ${target.id}; clear it first`);
        await guestCall(agent, { kind: "clockStrobe", id: faultId, deltaMs: fault.deltaMs, periodMs: fault.periodMs });
        return { detail: "", undo: undoInGuest({ kind: "clockStrobeStop", id: faultId }) };
      }
      case "fillDisk": {
        const unfill: GuestFault = { kind: "unfillDisk", id: faultId, dir: fault.dir };
        const { bytes } = await guestCall(agent, { kind: "fillDisk", id: faultId, dir: fault.dir }).catch((err) => {
          // Given up on (or failed): whatever the agent wrote must not stay behind.
          if (asWorkerError(err).code === "DEADLINE_EXCEEDED")
            void agent.fault(unfill, GUEST_FAULT_DEADLINE_MS.other).catch(() => undefined);
          throw err;
        });
        return { detail: `${bytes} bytes written`, undo: undoInGuest(unfill) };
      }
    }
  }
}

/** Which guest processes: by pid, or (pid 0) by name. */
const processOf = (fault: { pid: number; name: string }) => (fault.pid ? { pid: fault.pid } : { name: fault.name });

/** The VM's agent, ready for an in-guest fault; FAILED_PRECONDITION without one, UNAVAILABLE while paused. */
function guestAgent(target: FaultTarget): AgentConnection {
  if (!target.agent) {
    throw failedPrecondition(`vm ${target.id} has no guest agent channel (its backend has none, or it is ${target.status})`);
  }
  // A paused guest cannot answer: the call would hold the VM's queue until its deadline.
  if (target.status === "paused") throw unavailable(`vm ${target.id} is paused: its guest agent cannot answer until it is resumed`);
  return target.agent;
}

/** The channel's deadline cancels the agent's request too, so a fill given up on stops writing. */
function guestCall(agent: AgentConnection, fault: GuestFault): Promise<GuestFaultResult> {
  return agent.fault(fault, fault.kind === "fillDisk" ? GUEST_FAULT_DEADLINE_MS.fillDisk : GUEST_FAULT_DEADLINE_MS.other);
}

/** Undoes an in-guest fault; nothing to do when the guest is going away (the VM stops, fails or is deleted). */
function undoInGuest(fault: GuestFault): Undo {
  return async (target) => {
    if (!acceptsFaults(target.status)) return;
    await guestCall(guestAgent(target), fault);
  };
}
