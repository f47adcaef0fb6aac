// The cage adapter (ports/cage.ts): per VM, a uid from the configured range, a cgroup with limits
// (cgroups.ts), an empty directory for its root, and its directories handed to its uid. The cage
// itself is built by the helper, cage/pcr-cage.c, which the VMM's backend starts it through.
import { chmod, chown, lchown, lstat, mkdir, open, readdir, rm, rmdir } from "node:fs/promises";
import { constants, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Logger } from "pino";
import { WorkerError, failedPrecondition } from "../core/errors.js";
import type { CagePort, CageRequest, CageSpec } from "../ports/index.js";
import { ifMissing } from "../missing.js";
import {
  createVmCgroups,
  describeLayout,
  liftCpuQuota,
  listVmCgroups,
  locateCgroups,
  removeVmCgroups,
  setCpuQuota,
  type CgroupLayout,
} from "./cgroups.js";

export interface CageOptions {
  /** cage/build/pcr-cage of the checkout unless set. */
  helper?: string;
  /** VMM uids (and gids, the same numbers) are taken from here, never 0. */
  uidRange: { first: number; last: number };
  /** The cgroup's memory limit is the guest's RAM plus this (the VMM's own code, caches, TCG's translations). */
  memoryOverheadBytes: number;
  pidsMax: number;
  nofile: number;
  /** Roots of the cages and, where needed, mounted cgroup hierarchies. */
  runtimeDir: string;
  logger: Logger;
}

/**
 * What every VMM reads besides its own paths: the host's programs and libraries (Debian's QEMU lives
 * in /usr), those the host has: NixOS has no /etc/ld.so.cache (a VMM from /nix/store comes with its
 * closure, worker/process/supervisor.ts), and the helper refuses to bind what does not exist.
 */
const HOST_READ_ONLY = ["/usr", "/etc/ld.so.cache"];

export function defaultCageHelper(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const candidate = join(dir, "cage", "build", "pcr-cage");
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  return join(dirname(fileURLToPath(import.meta.url)), "..", "..", "cage", "build", "pcr-cage");
}

export function parseUidRange(text: string): { first: number; last: number } {
  const match = /^(\d+)-(\d+)$/.exec(text.trim());
  const first = Number(match?.[1]);
  const last = Number(match?.[2]);
  if (!match || first < 1000 || last < first || last > 2 ** 31 - 2) {
    throw new Error(`--vmm-uid-range must be FIRST-LAST with 1000 <= FIRST <= LAST, got "${text}"`);
  }
  return { first, last };
}

export function createCage(options: CageOptions): CagePort {
  const helper = options.helper ?? defaultCageHelper();
  const hostReadOnly = HOST_READ_ONLY.filter((path) => existsSync(path));
  const log = options.logger.child({ component: "cage" });
  const uids = new Map<string, number>();
  const taken = new Set<number>();
  let layout: Promise<CgroupLayout> | undefined;
  const cgroups = (): Promise<CgroupLayout> => {
    layout ??= locateCgroups(join(options.runtimeDir, "cgroup")).catch((err) => {
      layout = undefined; // the host may change: look again next time
      throw err;
    });
    return layout;
  };
  const rootOf = (id: string) => join(options.runtimeDir, "cage", id);

  /** Each caged VM's directory and uid, for seal(). */
  const dirs = new Map<string, { vmDir: string; uid: number }>();
  const allocate = (id: string): number => {
    for (let uid = options.uidRange.first; uid <= options.uidRange.last; uid++) {
      if (taken.has(uid)) continue;
      taken.add(uid);
      uids.set(id, uid);
      return uid;
    }
    throw new WorkerError("RESOURCE_EXHAUSTED", `every VMM uid of ${options.uidRange.first}-${options.uidRange.last} is in use`);
  };
  const free = (id: string) => {
    const uid = uids.get(id);
    if (uid !== undefined) taken.delete(uid);
    uids.delete(id);
  };

  return {
    async prepare(id: string, request: CageRequest): Promise<CageSpec> {
      if (!existsSync(helper)) throw failedPrecondition(`the cage helper ${helper} is missing; run scripts/setup (or --no-cage)`);
      const uid = allocate(id);
      try {
        const root = rootOf(id);
        // Independent of each other: at once, as this is on every create's path.
        const [cgroupDirs] = await Promise.all([
          cgroups().then((layoutNow) =>
            createVmCgroups(layoutNow, id, {
              memoryBytes: request.memoryBytes + options.memoryOverheadBytes,
              pidsMax: options.pidsMax,
              cpuWeight: 100,
            }),
          ),
          mkdir(root, { recursive: true, mode: 0o755 }),
          openToVmm(request.vmDir, uid),
          request.shared ? readableByVmm(request.shared, uid) : undefined,
        ]);
        dirs.set(id, { vmDir: request.vmDir, uid });
        return {
          helper,
          uid,
          gid: uid,
          root,
          readOnly: [...hostReadOnly, ...request.storePaths, ...(request.shared ? [request.shared] : [])],
          readWrite: [request.vmDir],
          devices: [],
          cgroups: cgroupDirs,
          nofile: options.nofile,
        };
      } catch (err) {
        await this.release(id);
        throw err;
      }
    },

    async seal(id: string): Promise<void> {
      const vm = dirs.get(id);
      if (!vm) return;
      for (const entry of await readdir(vm.vmDir)) {
        const path = join(vm.vmDir, entry);
        const info = await lstat(path);
        if (info.uid !== vm.uid) continue;
        if (info.isFile()) {
          // The VMM keeps writing through what it holds open (and may create it again: Cloud
          // Hypervisor's console on a reboot), as the group; the file is root's, so not its to swap.
          const file = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
          await file.chown(0, vm.uid).finally(() => file.close());
          await chmod(path, 0o660);
        } else {
          await lchown(path, 0, vm.uid); // its sockets: the worker connects to them, the VMM serves them
        }
      }
    },

    async release(id: string): Promise<void> {
      const failures = layout ? await removeVmCgroups(await cgroups(), id) : [];
      await rmdir(rootOf(id)).catch(() => undefined); // the helper's mounts died with its namespace: an empty directory
      free(id);
      dirs.delete(id);
      if (failures.length) log.warn({ vmId: id, failures }, "cannot remove the VM's cgroup");
    },

    async recover(live: { id: string; uid: number }[]): Promise<string[]> {
      for (const { id, uid } of live) {
        taken.add(uid);
        uids.set(id, uid);
      }
      const keep = new Set(live.map((vm) => vm.id));
      const removed: string[] = [];
      const layoutNow = await cgroups().catch(() => undefined);
      // A previous worker's cpuThrottle faults are over, as all its faults are.
      for (const { id } of live) {
        if (layoutNow && (await liftCpuQuota(layoutNow, id).catch(() => false))) removed.push(`cgroup:${id} cpu quota (cpuThrottle)`);
      }
      for (const id of layoutNow ? await listVmCgroups(layoutNow) : []) {
        if (keep.has(id)) continue;
        const failures = await removeVmCgroups(layoutNow!, id);
        removed.push(failures.length ? `cgroup:${id} (not removed: ${failures.join("; ")})` : `cgroup:${id}`);
      }
      for (const entry of await ifMissing(readdir(join(options.runtimeDir, "cage")), [])) {
        if (keep.has(entry)) continue;
        await rm(join(options.runtimeDir, "cage", entry), { recursive: true, force: true }).catch(() => undefined);
        removed.push(`cage-root:${entry}`);
      }
      return removed;
    },

    async limitCpu(id: string, percent: number | undefined): Promise<void> {
      await setCpuQuota(await cgroups(), id, percent);
    },

    async describe(): Promise<string> {
      const helperState = existsSync(helper) ? helper : `${helper} MISSING (run scripts/setup)`;
      const where = await cgroups().then(describeLayout, (err: Error) => `no usable cgroups: ${err.message}`);
      return (
        `on: uids ${options.uidRange.first}-${options.uidRange.last}, helper ${helperState}, ${where}; ` +
        `memory limit = guest RAM + ${options.memoryOverheadBytes / 1024 ** 2} MiB, pids ${options.pidsMax}, open files ${options.nofile}`
      );
    },
  };
}

/**
 * The VM's directory, open to its VMM as a group member: root's, sticky (1770), so that the VMM
 * makes its own files there but can neither remove nor replace the worker's (its record), nor,
 * once sealed, its own console and sockets, with links the worker would follow.
 */
async function openToVmm(dir: string, gid: number): Promise<void> {
  const info = await lstat(dir);
  if (!info.isDirectory()) throw failedPrecondition(`${dir} is not a directory`);
  await chown(dir, 0, gid);
  await chmod(dir, 0o1770);
}

/**
 * A directory the VMM only reads (the secrets share, bound read-only into its cage): its and its
 * files' owner becomes the VMM's uid, modes kept (0700, 0400); never follows links.
 */
async function readableByVmm(dir: string, uid: number): Promise<void> {
  const info = await lstat(dir);
  if (!info.isDirectory()) throw failedPrecondition(`${dir} is not a directory`);
  await chown(dir, uid, uid);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await readableByVmm(path, uid);
    else if (entry.isFile()) await chown(path, uid, uid);
  }
}
