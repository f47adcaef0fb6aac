// Network namespaces that a test makes for itself and always removes.
import { execa } from "execa";
import { randomBytes } from "node:crypto";

export async function createNetns(prefix = "pcr-t"): Promise<string> {
  const name = `${prefix}-${randomBytes(3).toString("hex")}`;
  await execa("ip", ["netns", "add", name]);
  await execa("ip", ["-n", name, "link", "set", "lo", "up"]);
  return name;
}

export async function deleteNetns(name: string): Promise<void> {
  // Kill anything still running inside, then remove the namespace.
  const pids = await execa("ip", ["netns", "pids", name], { reject: false });
  for (const pid of pids.stdout.split("\n").filter(Boolean)) {
    try {
      process.kill(Number(pid), "SIGKILL");
    } catch {
      /* already gone */
    }
  }
  await execa("ip", ["netns", "delete", name], { reject: false });
}

export async function inNetns(name: string, command: string, args: string[]) {
  return execa("ip", ["netns", "exec", name, command, ...args], { reject: false });
}
