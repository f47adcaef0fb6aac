// Hosts that left for good (docs/fleet.md "Failure modes"): a pcr_hosts entry lost for longer than
// a gateway's --forget-lost-after-ms, whose host has no VM left in pcr_vms, is deleted. Several
// gateways may run this at once, and a host may come back at any moment: every delete is checked
// against the revision that was read as lost, so a heartbeat stored in between always wins.
import type { KV } from "@nats-io/kv";
import type { Logger } from "pino";
import type { FleetDirectory } from "./directory.js";
import { HOST_ID } from "./host-info.js";

export const DEFAULT_FORGET_LOST_AFTER_MS = 24 * 3600_000;

export interface ForgetLostOptions {
  hosts: KV;
  /** Where VMs are (pcr_vms, followed by a watch): a host with any there is kept. */
  directory: Pick<FleetDirectory, "vmsOn">;
  /** An entry older than this (by NATS's clock) is forgotten; 0: never. */
  forgetAfterMs: number;
  logger: Logger;
}

/**
 * One pass over pcr_hosts: deletes each entry older than `forgetAfterMs` whose host has no VM in
 * pcr_vms; answers the host ids it deleted. Hosts that still have VMs are kept (and logged): those
 * VMs may run on, so they stay `lost`, never vanish, until the host returns or someone deletes
 * their pcr_vms entries.
 */
export async function forgetLostHosts(options: ForgetLostOptions, nowMs = Date.now()): Promise<string[]> {
  const { hosts, directory, forgetAfterMs, logger } = options;
  if (forgetAfterMs <= 0) return [];
  const keys: string[] = [];
  for await (const key of await hosts.keys()) keys.push(key);
  const forgotten: string[] = [];
  for (const key of keys) {
    const entry = await hosts.get(key);
    if (entry?.operation !== "PUT") continue;
    const silentMs = nowMs - entry.created.getTime();
    if (silentMs <= forgetAfterMs) continue;
    // The key is the host id VMs name (an entry that is junk inside is nobody's heartbeat either).
    const vms = HOST_ID.test(key) ? directory.vmsOn(key).length : 0;
    if (vms > 0) {
      logger.warn({ hostId: key, vms, silentMs }, "host lost long ago still has VMs in pcr_vms: kept, its VMs show lost");
      continue;
    }
    if (await forgetHost(hosts, key, entry.revision)) {
      logger.info({ hostId: key, silentMs }, "forgot a host lost longer than --forget-lost-after-ms");
      forgotten.push(key);
    }
  }
  return forgotten;
}

/** Deletes pcr_hosts entry `key` if its revision is still `revision`; false when it moved on (a heartbeat came). */
export async function forgetHost(hosts: KV, key: string, revision: number): Promise<boolean> {
  try {
    await hosts.delete(key, { previousSeq: revision });
    return true;
  } catch (err) {
    if (/wrong last sequence/i.test((err as Error).message)) return false;
    throw err;
  }
}

/** Runs forgetLostHosts now and then (every quarter of the limit, at most every minute) until stopped. */
export function startForgettingLostHosts(options: ForgetLostOptions & { everyMs?: number }): { stop(): void } {
  if (options.forgetAfterMs <= 0) return { stop() {} };
  const everyMs = options.everyMs ?? Math.max(1_000, Math.min(60_000, Math.floor(options.forgetAfterMs / 4)));
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    forgetLostHosts(options)
      .catch((err: Error) => options.logger.warn({ err: err.message }, "forgetting lost hosts failed; trying again later"))
      .finally(() => (running = false));
  }, everyMs);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
