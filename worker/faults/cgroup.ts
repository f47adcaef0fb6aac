// CPU throttling of a VMM process with cgroup v2 `cpu.max`: the process moves into a cgroup of
// its own for the fault's lifetime and back to where it was when cleared.
import { mkdir, readFile, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { failedPrecondition } from "../core/errors.js";
import type { CpuThrottlePort } from "../ports.js";

const PERIOD_US = 100_000;
const PARENT = "procurator-faults";

/** Mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo; undefined when none is mounted. */
export async function cgroup2Mount(mountinfo = "/proc/self/mountinfo"): Promise<string | undefined> {
  const text = await readFile(mountinfo, "utf8").catch(() => "");
  for (const line of text.split("\n")) {
    const [before, after] = line.split(" - ");
    if (after?.split(" ")[0] === "cgroup2") return before!.split(" ")[4];
  }
  return undefined;
}

/** Why cpu.max cannot work here, or undefined when it can. */
export async function cpuThrottleUnavailable(root: string | undefined): Promise<string | undefined> {
  if (!root) return "no cgroup v2 hierarchy is mounted on this host";
  const controllers = (await readFile(join(root, "cgroup.controllers"), "utf8").catch(() => "")).trim();
  if (!controllers.split(/\s+/).includes("cpu")) {
    return `the cgroup v2 hierarchy at ${root} has no cpu controller (cgroup.controllers: "${controllers}"); the host runs cgroup v1 or hybrid mode with cpu bound to v1`;
  }
  return undefined;
}

export function createCgroupCpuThrottle(options: { root?: string } = {}): CpuThrottlePort {
  const origins = new Map<string, string>();
  const rootOf = async () => options.root ?? (await cgroup2Mount());
  return {
    async throttle(faultId, pid, percent) {
      const root = await rootOf();
      const why = await cpuThrottleUnavailable(root);
      if (why) throw failedPrecondition(`cpuThrottle needs cgroup v2 cpu.max: ${why}`);
      const parent = join(root!, PARENT);
      const dir = join(parent, faultId);
      try {
        await writeFile(join(root!, "cgroup.subtree_control"), "+cpu");
        await mkdir(dir, { recursive: true });
        await writeFile(join(parent, "cgroup.subtree_control"), "+cpu").catch(() => undefined);
        await writeFile(join(dir, "cpu.max"), `${Math.max(1_000, Math.round((percent / 100) * PERIOD_US))} ${PERIOD_US}`);
        const origin = /^0::(.*)$/m.exec(await readFile(`/proc/${pid}/cgroup`, "utf8"))?.[1] ?? "/";
        origins.set(faultId, join(root!, origin));
        await writeFile(join(dir, "cgroup.procs"), String(pid));
      } catch (err) {
        await rmdir(dir).catch(() => undefined);
        throw failedPrecondition(`cannot set cpu.max for the VMM: ${(err as Error).message}`);
      }
    },
    async clear(faultId, pid) {
      const root = await rootOf();
      if (!root) return;
      const origin = origins.get(faultId);
      origins.delete(faultId);
      if (origin) await writeFile(join(origin, "cgroup.procs"), String(pid)).catch(() => undefined); // gone already: fine
      await rmdir(join(root, PARENT, faultId)).catch(() => undefined);
    },
  };
}
