// Builds (once, cached by content hash under .cache/interop/<hash>/) the reference C++ client and
// server used by the interop tests and the RPC benchmark.
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { repoRoot } from "../rpc/repo-root.js";

const run = promisify(execFile);

export interface CppPrograms {
  client: string;
  server: string;
}

/** Why the C++ programs cannot be built here, or undefined when they can. */
export async function cppToolchainMissing(): Promise<string | undefined> {
  for (const [tool, args] of [
    ["capnp", ["--version"]],
    ["g++", ["--version"]],
    ["pkg-config", ["--exists", "capnp-rpc"]],
  ] as const) {
    try {
      await run(tool, [...args]);
    } catch {
      return `${tool} ${args.join(" ")} failed: needs capnproto, libcapnp-dev, g++ and pkg-config`;
    }
  }
  return undefined;
}

export async function buildCppPrograms(): Promise<CppPrograms> {
  const root = repoRoot();
  const here = join(root, "test", "interop");
  const hash = createHash("sha256");
  const inputs = [
    join(here, "build.sh"),
    ...readdirSync(join(here, "cpp"))
      .sort()
      .map((f) => join(here, "cpp", f)),
    join(root, "schema", "common.capnp"),
    join(root, "schema", "worker.capnp"),
  ];
  for (const file of inputs) hash.update(file.slice(root.length)).update(readFileSync(file));
  hash.update((await run("capnp", ["--version"])).stdout);
  hash.update((await run("g++", ["--version"])).stdout);
  const dir = join(root, ".cache", "interop", hash.digest("hex").slice(0, 16));
  const programs = { client: join(dir, "client"), server: join(dir, "server") };
  if (existsSync(programs.client) && existsSync(programs.server)) return programs;

  // Build beside the final directory and rename, so a concurrent or interrupted build never leaves half a cache.
  mkdirSync(join(root, ".cache", "interop"), { recursive: true });
  const staging = `${dir}.tmp-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  await run("bash", [join(here, "build.sh"), staging], { maxBuffer: 16 * 1024 * 1024 });
  try {
    renameSync(staging, dir);
  } catch {
    rmSync(staging, { recursive: true, force: true }); // someone else finished first
  }
  return programs;
}
