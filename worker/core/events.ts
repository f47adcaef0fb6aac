// An ordered, bounded feed of lifecycle events that callers can poll with a wait.
import type { VmEvent, VmStatus } from "./api.js";

export class EventLog {
  private readonly events: VmEvent[] = [];
  private nextSeq = 1n;
  private waiters = new Set<() => void>();

  constructor(private readonly capacity = 10_000) {}

  append(vmId: string, status: VmStatus, reason = ""): VmEvent {
    const event: VmEvent = { seq: this.nextSeq++, vmId, status, atMs: BigInt(Date.now()), reason };
    this.events.push(event);
    if (this.events.length > this.capacity) this.events.splice(0, this.events.length - this.capacity);
    const waiters = this.waiters;
    this.waiters = new Set();
    for (const wake of waiters) wake();
    return event;
  }

  /** Events with seq >= sinceSeq (at most max), waiting up to waitMs for one if there are none yet. */
  async since(sinceSeq: bigint, max: number, waitMs: number): Promise<{ events: VmEvent[]; nextSeq: bigint }> {
    let found = this.collect(sinceSeq, max);
    if (found.length === 0 && waitMs > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.waiters.delete(wake);
          resolve();
        }, waitMs);
        const wake = () => {
          clearTimeout(timer);
          resolve();
        };
        this.waiters.add(wake);
      });
      found = this.collect(sinceSeq, max);
    }
    const last = found.at(-1);
    return { events: found, nextSeq: last ? last.seq + 1n : sinceSeq > this.nextSeq ? this.nextSeq : sinceSeq };
  }

  private collect(sinceSeq: bigint, max: number): VmEvent[] {
    const first = this.events.findIndex((event) => event.seq >= sinceSeq);
    return first < 0 ? [] : this.events.slice(first, first + max);
  }
}
