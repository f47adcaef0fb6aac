// Hosts and store paths for the fleet unit tests.
import type { HostInfo } from "../../worker/fleet/host-info.js";
import { summarizeStore } from "../../worker/fleet/store-summary.js";

export const NOW = 1_800_000_000_000;
export const GiB = 1024 ** 3;

/** A store path whose hash is `c` 32 times (a base32 character: not e, o, u or t). */
export const storePath = (c: string, name = "x") => `/nix/store/${c.repeat(32)}-${name}`;

/** A host heard from just now: 4 VMs, 8 vCPU, 16 GiB, 100 GiB of disk, nothing used or held. */
export function host(hostId: string, overrides: Partial<HostInfo> & { paths?: string[] } = {}): HostInfo {
  const { paths = [], ...rest } = overrides;
  return {
    hostId,
    backend: "qemu",
    labels: {},
    capacity: { vms: 4, cpu: 8, memoryBytes: 16 * GiB, diskBytes: 100 * GiB },
    used: { vms: 0, cpu: 0, memoryBytes: 0, diskBytes: 0 },
    groups: [],
    store: summarizeStore(paths),
    version: "0.1.0",
    startedAtMs: NOW - 60_000,
    seenAtMs: NOW - 1_000,
    ...rest,
  };
}
