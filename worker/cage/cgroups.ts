// A cgroup per caged VM: memory (guest RAM + overhead), pids and CPU weight. cgroup v2 where its
// hierarchy has the memory, pids and cpu controllers; cgroup v1 otherwise (hosts in hybrid mode,
// as these are: /sys/fs/cgroup/<controller>). A v1 hierarchy that is not visible (a private /sys,
// as under `ip netns exec`) is mounted under the worker's runtime dir: the kernel attaches the
// same hierarchy, so the limits are the host's.
import { execa } from "execa";
import { mkdir, readdir, readFile, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { failedPrecondition } from "../core/errors.js";
import { mounts } from "../faults/cgroup.js";
import { ifMissing } from "../missing.js";

export const CAGE_PARENT = "procurator-vms";
const V1_CONTROLLERS = ["memory", "pids", "cpu"] as const;
type Controller = (typeof V1_CONTROLLERS)[number];

export type CgroupLayout = { version: 2; root: string } | { version: 1; roots: Record<Controller, string> };

export interface CgroupLimits {
  memoryBytes: number;
  pidsMax: number;
  /** Relative CPU weight, 1..10000 (v2's cpu.weight; 100 is the default). */
  cpuWeight: number;
}

/** Where this host's cgroups with memory, pids and cpu are; mounts missing v1 hierarchies under `mountDir`. */
export async function locateCgroups(mountDir: string): Promise<CgroupLayout> {
  const all = await mounts();
  const v2 = all.find((mount) => mount.fstype === "cgroup2")?.path;
  if (v2) {
    const controllers = (await ifMissing(readFile(join(v2, "cgroup.controllers"), "utf8"), "")).trim().split(/\s+/);
    if (V1_CONTROLLERS.every((controller) => controllers.includes(controller))) return { version: 2, root: v2 };
  }
  const roots = {} as Record<Controller, string>;
  for (const controller of V1_CONTROLLERS) {
    const visible = all.find((mount) => mount.fstype === "cgroup" && mount.superOptions.includes(controller));
    if (visible) {
      roots[controller] = visible.path;
      continue;
    }
    const dir = join(mountDir, controller);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const mounted = await execa("mount", ["-t", "cgroup", "-o", controller, `procurator-${controller}`, dir], { reject: false });
    if (mounted.exitCode !== 0)
      throw failedPrecondition(
        `the cage needs the ${controller} cgroup controller, and mounting its v1 hierarchy failed: ${mounted.stderr.trim()}`,
      );
    roots[controller] = dir;
  }
  return { version: 1, roots };
}

export function describeLayout(layout: CgroupLayout): string {
  return layout.version === 2
    ? `cgroup v2 at ${layout.root}`
    : `cgroup v1 (${V1_CONTROLLERS.map((controller) => `${controller} at ${layout.roots[controller]}`).join(", ")})`;
}

/** The VM's cgroup directories: one (v2) or one per controller (v1); the VMM joins each. */
export function vmCgroupDirs(layout: CgroupLayout, id: string): string[] {
  return layout.version === 2
    ? [join(layout.root, CAGE_PARENT, id)]
    : V1_CONTROLLERS.map((controller) => join(layout.roots[controller], CAGE_PARENT, id));
}

/** The directory whose CPU controller files belong to the VM (the cpuThrottle fault writes there). */
export function vmCpuDir(layout: CgroupLayout, id: string): string {
  return layout.version === 2 ? join(layout.root, CAGE_PARENT, id) : join(layout.roots.cpu, CAGE_PARENT, id);
}

export async function createVmCgroups(layout: CgroupLayout, id: string, limits: CgroupLimits): Promise<string[]> {
  const dirs = vmCgroupDirs(layout, id);
  try {
    if (layout.version === 2) {
      await writeFile(join(layout.root, "cgroup.subtree_control"), "+memory +pids +cpu");
      await mkdir(join(layout.root, CAGE_PARENT), { recursive: true });
      await writeFile(join(layout.root, CAGE_PARENT, "cgroup.subtree_control"), "+memory +pids +cpu");
      const [dir] = dirs as [string];
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, "memory.max"), String(limits.memoryBytes));
      await writeFile(join(dir, "memory.swap.max"), "0").catch(() => undefined); // no swap accounting: nothing to cap
      await writeFile(join(dir, "pids.max"), String(limits.pidsMax));
      await writeFile(join(dir, "cpu.weight"), String(limits.cpuWeight));
    } else {
      const [memory, pids, cpu] = dirs as [string, string, string];
      await Promise.all([
        mkdir(memory, { recursive: true }).then(async () => {
          await writeFile(join(memory, "memory.limit_in_bytes"), String(limits.memoryBytes));
          // With swap accounting, memory + swap gets the same bound: the VM cannot grow into swap.
          await writeFile(join(memory, "memory.memsw.limit_in_bytes"), String(limits.memoryBytes)).catch(() => undefined);
        }),
        mkdir(pids, { recursive: true }).then(() => writeFile(join(pids, "pids.max"), String(limits.pidsMax))),
        // v1 cpu.shares: 1024 is the default, as weight 100 is in v2.
        mkdir(cpu, { recursive: true }).then(() =>
          writeFile(join(cpu, "cpu.shares"), String(Math.max(2, Math.round((limits.cpuWeight * 1024) / 100)))),
        ),
      ]);
    }
  } catch (err) {
    await removeVmCgroups(layout, id);
    throw failedPrecondition(`cannot make the VM's cgroup (${describeLayout(layout)}): ${(err as Error).message}`);
  }
  return dirs;
}

/** Removes the VM's cgroups (empty once its processes are gone); returns what could not be removed, and why. */
export async function removeVmCgroups(layout: CgroupLayout, id: string): Promise<string[]> {
  const failures: string[] = [];
  for (const dir of vmCgroupDirs(layout, id)) {
    // EBUSY: a task is still in it. A VMM whose cage helper was SIGKILLed dies of its parent-death
    // signal a moment after the helper; its cgroup empties then.
    for (let waitedMs = 0; ; waitedMs += BUSY_RETRY_MS) {
      try {
        await rmdir(dir);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === "ENOENT") break;
        if (code === "EBUSY" && waitedMs < BUSY_WAIT_MS) {
          await delay(BUSY_RETRY_MS);
          continue;
        }
        failures.push(`${dir}: ${code ?? (err as Error).message}`);
        break;
      }
    }
  }
  return failures;
}

/** How long removing a VM's cgroup waits for its last task to be gone, and how often it looks. */
const BUSY_WAIT_MS = 2_000;
const BUSY_RETRY_MS = 20;

/** The VM ids that have a cgroup under the cage's parent (after a restart: which to keep). */
export async function listVmCgroups(layout: CgroupLayout): Promise<string[]> {
  const parents = layout.version === 2 ? [join(layout.root, CAGE_PARENT)] : V1_CONTROLLERS.map((c) => join(layout.roots[c], CAGE_PARENT));
  const ids = new Set<string>();
  for (const parent of parents) {
    for (const entry of await ifMissing(readdir(parent, { withFileTypes: true }), [])) if (entry.isDirectory()) ids.add(entry.name);
  }
  return [...ids].sort();
}

/** Lifts a CPU quota left on the VM's cgroup (a previous worker's cpuThrottle); true when there was one. */
export async function liftCpuQuota(layout: CgroupLayout, id: string): Promise<boolean> {
  const dir = vmCpuDir(layout, id);
  const now = (await ifMissing(readFile(join(dir, layout.version === 2 ? "cpu.max" : "cpu.cfs_quota_us"), "utf8"), "")).trim();
  if (!now || now === "-1" || now.startsWith("max")) return false;
  await setCpuQuota(layout, id, undefined);
  return true;
}

/** CFS bandwidth of the VM's cgroup: `percent` of one CPU, or no limit (undefined). */
export async function setCpuQuota(layout: CgroupLayout, id: string, percent: number | undefined, periodUs = 100_000): Promise<void> {
  const dir = vmCpuDir(layout, id);
  const quota = percent === undefined ? undefined : Math.max(1_000, Math.round((percent / 100) * periodUs));
  if (layout.version === 2) {
    await writeFile(join(dir, "cpu.max"), quota === undefined ? `max ${periodUs}` : `${quota} ${periodUs}`);
  } else {
    await writeFile(join(dir, "cpu.cfs_period_us"), String(periodUs));
    await writeFile(join(dir, "cpu.cfs_quota_us"), quota === undefined ? "-1" : String(quota));
  }
}
