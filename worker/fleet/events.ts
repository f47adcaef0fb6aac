// The fleet's lifecycle events: hosts publish theirs to the JetStream stream PCR_EVENTS (member.ts);
// the stream's sequence is the fleet's event sequence, and a VM's events, published in order by its
// one host, stay in order. A gateway answers `events` from it.
import { DeliverPolicy, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import type { VmEvent } from "../core/api.js";
import { unavailable } from "../core/errors.js";
import { EVENTS_STREAM, EVENTS_SUBJECTS } from "./buckets.js";
import { parseFleetEvent } from "./records.js";

export interface FleetEvents {
  read(sinceSeq: bigint, maxEvents: number, waitMs: number): Promise<{ events: VmEvent[]; nextSeq: bigint }>;
  close(): void;
}

export function streamEvents(nc: NatsConnection, js: JetStreamClient, jsm: JetStreamManager, logger: Logger): FleetEvents {
  // Wakes waiting readers when anything is published: a core subscription sees JetStream's subjects too.
  const waiters = new Set<() => void>();
  const wake: Subscription = nc.subscribe(EVENTS_SUBJECTS, {
    callback: () => {
      for (const waiter of waiters) waiter();
      waiters.clear();
    },
  });
  const lastSeq = async (): Promise<{ first: number; last: number }> => {
    const info = await jsm.streams.info(EVENTS_STREAM).catch((err: Error) => {
      throw unavailable(`cannot read the fleet's event stream: ${err.message}`);
    });
    return { first: info.state.first_seq, last: info.state.last_seq };
  };

  return {
    async read(sinceSeq, maxEvents, waitMs) {
      const wanted = Math.max(1, Number(sinceSeq));
      let { first, last } = await lastSeq();
      if (last < wanted && waitMs > 0) {
        let woken!: () => void;
        const published = new Promise<void>((resolve) => {
          woken = resolve;
          waiters.add(resolve);
        });
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([published, new Promise((resolve) => (timer = setTimeout(resolve, waitMs)))]);
        clearTimeout(timer);
        waiters.delete(woken);
        ({ first, last } = await lastSeq());
      }
      const start = Math.max(wanted, first);
      const count = Math.min(maxEvents, last - start + 1);
      if (count <= 0) return { events: [], nextSeq: BigInt(Math.max(wanted, last + 1)) };
      const consumer = await js.consumers.get(EVENTS_STREAM, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start });
      const events: VmEvent[] = [];
      let nextSeq = start;
      try {
        const batch = await consumer.fetch({ max_messages: count, expires: 1000 });
        for await (const message of batch) {
          nextSeq = message.seq + 1;
          try {
            const event = parseFleetEvent(message.data);
            events.push({
              seq: BigInt(message.seq),
              vmId: event.vmId,
              status: event.status,
              atMs: BigInt(event.atMs),
              reason: event.reason,
            });
          } catch (err) {
            logger.warn({ seq: message.seq, err: (err as Error).message }, "skipping an event that does not parse");
          }
          if (nextSeq > start + count - 1) break;
        }
      } finally {
        await consumer.delete().catch(() => undefined);
      }
      return { events, nextSeq: BigInt(nextSeq) };
    },
    close() {
      wake.unsubscribe();
    },
  };
}
