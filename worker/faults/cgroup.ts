// CPU throttling of a VMM process with the CFS bandwidth controller: cgroup v2 `cpu.max` where
// the v2 hierarchy has the cpu controller, else cgroup v1 `cpu.cfs_quota_us` (hosts in v1 or
// hybrid mode). The process moves into a cgroup of its own for the fault's lifetime and back to
// where it was when cleared. When no hierarchy is visible (a private mount namespace with a fresh
// /sys, as under `ip netns exec`), the worker mounts the v1 cpu hierarchy under its runtime dir:
// the kernel attaches the same hierarchy, so the limit is real.
import { execa } from "execa";
import { mkdir, readdir, readFile, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { failedPrecondition } from "../core/errors.js";
import type { CpuThrottlePort } from "../ports/index.js";
import { ifMissing } from "../missing.js";

const PERIOD_US = 100_000;
const PARENT = "procurator-faults";

export interface Mount {
  path: string;
  fstype: string;
  superOptions: string[];
}

/** The mounts this process sees (/proc/self/mountinfo): where, what filesystem, its super options. */
export async function mounts(mountinfo = "/proc/self/mountinfo"): Promise<Mount[]> {
  const text = await ifMissing(readFile(mountinfo, "utf8"), "");
  return text
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const [before, after] = line.split(" - ");
      const [fstype, , superOptions] = (after ?? "").split(" ");
      return { path: before!.split(" ")[4]!, fstype: fstype ?? "", superOptions: (superOptions ?? "").split(",") };
    });
}

/** Mount point of the cgroup v2 hierarchy; undefined when none is mounted. */
export async function cgroup2Mount(mountinfo?: string): Promise<string | undefined> {
  return (await mounts(mountinfo)).find((mount) => mount.fstype === "cgroup2")?.path;
}

/** Mount point of a cgroup v1 hierarchy with the cpu controller; undefined when none is mounted. */
export async function cgroup1CpuMount(mountinfo?: string): Promise<string | undefined> {
  return (await mounts(mountinfo)).find((mount) => mount.fstype === "cgroup" && mount.superOptions.includes("cpu"))?.path;
}

/** Why cgroup v2 cpu.max cannot work under root, or undefined when it can. */
export async function cpuThrottleUnavailable(root: string | undefined): Promise<string | undefined> {
  if (!root) return "no cgroup v2 hierarchy is mounted on this host";
  const controllers = (await ifMissing(readFile(join(root, "cgroup.controllers"), "utf8"), "")).trim();
  if (!controllers.split(/\s+/).includes("cpu")) {
    return (
      `the cgroup v2 hierarchy at ${root} has no cpu controller (cgroup.controllers: "${controllers}"); ` +
      "the host runs cgroup v1 or hybrid mode with cpu bound to v1"
    );
  }
  return undefined;
}

type Hierarchy = { version: 2; root: string } | { version: 1; root: string };

export interface CgroupCpuThrottleOptions {
  /** A cgroup v2 root to use (tests); otherwise found from mountinfo. */
  root?: string;
  /** Where to mount the v1 cpu hierarchy when no cgroup hierarchy with cpu is visible. */
  mountDir?: string;
}

export function createCgroupCpuThrottle(options: CgroupCpuThrottleOptions = {}): CpuThrottlePort {
  const origins = new Map<string, string>();
  let found: Promise<Hierarchy> | undefined;

  const locate = async (): Promise<Hierarchy> => {
    const v2 = options.root ?? (await cgroup2Mount());
    const v2Why = await cpuThrottleUnavailable(v2);
    if (!v2Why) return { version: 2, root: v2! };
    const v1 = await cgroup1CpuMount();
    if (v1) return { version: 1, root: v1 };
    if (options.mountDir) {
      await mkdir(options.mountDir, { recursive: true, mode: 0o700 });
      const mounted = await execa("mount", ["-t", "cgroup", "-o", "cpu", "procurator-cpu", options.mountDir], { reject: false });
      if (mounted.exitCode === 0) return { version: 1, root: options.mountDir };
      throw failedPrecondition(
        `cpuThrottle needs the cpu cgroup controller: ${v2Why}, no cgroup v1 cpu hierarchy is mounted, ` +
          `and mounting one failed: ${mounted.stderr.trim()}`,
      );
    }
    throw failedPrecondition(`cpuThrottle needs the cpu cgroup controller: ${v2Why}, and no cgroup v1 cpu hierarchy is mounted`);
  };
  const hierarchy = (): Promise<Hierarchy> => {
    found ??= locate().catch((err) => {
      found = undefined; // retry next time: the host may change
      throw err;
    });
    return found;
  };

  return {
    async throttle(faultId, pid, percent) {
      const { version, root } = await hierarchy();
      const parent = join(root, PARENT);
      const dir = join(parent, faultId);
      const quota = Math.max(1_000, Math.round((percent / 100) * PERIOD_US));
      try {
        const procCgroup = await readFile(`/proc/${pid}/cgroup`, "utf8");
        if (version === 2) {
          await writeFile(join(root, "cgroup.subtree_control"), "+cpu");
          await mkdir(dir, { recursive: true });
          // Already on, or refused: then the cpu.max write below fails and says so.
          await writeFile(join(parent, "cgroup.subtree_control"), "+cpu").catch(() => undefined);
          await writeFile(join(dir, "cpu.max"), `${quota} ${PERIOD_US}`);
          origins.set(faultId, join(root, /^0::(.*)$/m.exec(procCgroup)?.[1] ?? "/"));
        } else {
          await mkdir(dir, { recursive: true });
          await writeFile(join(dir, "cpu.cfs_period_us"), String(PERIOD_US));
          await writeFile(join(dir, "cpu.cfs_quota_us"), String(quota));
          // "4:cpu:/some/path" or "4:cpu,cpuacct:/some/path"
          const origin = /^\d+:([^:]*):(.*)$/gm;
          let path = "/";
          for (const match of procCgroup.matchAll(origin)) if (match[1]!.split(",").includes("cpu")) path = match[2]!;
          origins.set(faultId, join(root, path));
        }
        // In v1 and v2 alike, cgroup.procs moves the whole process, every thread of it.
        await writeFile(join(dir, "cgroup.procs"), String(pid));
      } catch (err) {
        await rmdir(dir).catch(() => undefined); // undoing; the error thrown below is the one that matters
        throw failedPrecondition(`cannot limit the VMM's CPU with cgroup v${version}: ${(err as Error).message}`);
      }
    },
    async reset() {
      const found = await hierarchy().catch(() => undefined); // no cpu hierarchy: nothing of ours can be there
      if (!found) return [];
      const parent = join(found.root, PARENT);
      const removed: string[] = [];
      const entries = await ifMissing(readdir(parent, { withFileTypes: true }), []);
      for (const faultId of entries.filter((entry) => entry.isDirectory()).map((entry) => entry.name)) {
        const dir = join(parent, faultId);
        const pids = (await ifMissing(readFile(join(dir, "cgroup.procs"), "utf8"), "")).split("\n").filter(Boolean);
        // The origin died with the worker that knew it: back to the root, which every host allows.
        for (const pid of pids) await writeFile(join(found.root, "cgroup.procs"), pid).catch(() => undefined); // gone already: fine
        const failure = await removeCgroup(dir);
        removed.push(failure ? `cgroup:${faultId} (not removed: ${failure})` : `cgroup:${faultId}`);
      }
      return removed;
    },
    async clear(faultId, pid) {
      const origin = origins.get(faultId);
      origins.delete(faultId);
      const { root } = await hierarchy().catch(() => ({ root: undefined })); // as in reset
      if (!root) return;
      if (origin) await writeFile(join(origin, "cgroup.procs"), String(pid)).catch(() => undefined); // gone already: fine
      const failure = await removeCgroup(join(root, PARENT, faultId));
      if (failure) throw failedPrecondition(`cannot remove the cpuThrottle cgroup of fault ${faultId}: ${failure}`);
    },
  };
}

/** Removes a cgroup directory; undefined when it is gone (or never was), else why not. */
async function removeCgroup(dir: string): Promise<string | undefined> {
  try {
    await rmdir(dir);
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === "ENOENT" ? undefined : `${code ?? "error"}: ${(err as Error).message}`;
  }
}
