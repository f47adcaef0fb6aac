// --pool entries (config.ts) turned into pool configurations: each spec file read and validated as
// a create's would be, at start, so a bad pool stops the worker instead of failing in the background.
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { POOL_ENTRY } from "./config.js";
import type { PoolConfig } from "./core/pools.js";
import { machineKey } from "./core/pools.js";
import { parseVmSpecJson, validateSpec, type SpecLimits } from "./core/spec.js";
import type { BackendCapabilities, SnapshotStore } from "./ports/index.js";

/** The most VMs one pool keeps booted. */
export const MAX_HOT = 64;

export function parsePools(entries: string[], limits: SpecLimits): PoolConfig[] {
  const pools: PoolConfig[] = [];
  for (const entry of entries) {
    const match = POOL_ENTRY.exec(entry);
    if (!match) throw new Error(`--pool ${entry}: expected <spec.json>:<N>[+disk]`);
    const [, file, hotText, disk] = match;
    const hot = Number(hotText);
    if (hot > MAX_HOT) throw new Error(`--pool ${entry}: at most ${MAX_HOT} hot VMs`);
    if (hot === 0 && !disk) throw new Error(`--pool ${entry}: a pool of 0 hot VMs needs +disk`);
    let spec: PoolConfig["spec"];
    try {
      spec = validateSpec(parseVmSpecJson(readFileSync(file!, "utf8")), limits);
    } catch (err) {
      throw new Error(`--pool ${entry}: ${(err as Error).message}`);
    }
    if (spec.dataDiskBytes) throw new Error(`--pool ${entry}: a pooled machine has no data disk (each create's would be its own)`);
    const key = machineKey(spec);
    const twin = pools.find((pool) => machineKey(pool.spec) === key);
    if (twin) throw new Error(`--pool ${entry}: the same machine as pool ${twin.name}`);
    // A store path's hash is no name: /nix/store/<hash>-pcr-pool-agent.json is pool "pcr-pool-agent".
    const stem =
      basename(file!)
        .replace(/^[0-9a-df-np-sv-z]{32}-/, "")
        .replace(/\.json$/, "")
        .replace(/[^A-Za-z0-9_.-]/g, "_") || "pool";
    const name = pools.some((pool) => pool.name === stem) ? `${stem}-${key.slice(0, 6)}` : stem;
    pools.push({ name, spec, hot, disk: Boolean(disk) });
  }
  return pools;
}

/** Refuses, at start, pools the backend cannot serve. */
export function checkPoolsSupported(pools: PoolConfig[], backend: { name: string; capabilities: BackendCapabilities }): void {
  if (pools.length === 0) return;
  if (!backend.capabilities.agent) throw new Error(`pools need a guest agent channel, which the ${backend.name} backend lacks`);
  const disk = pools.find((pool) => pool.disk);
  if (disk && !backend.capabilities.snapshot) {
    throw new Error(`pool ${disk.name}: +disk needs snapshots, which the ${backend.name} backend cannot take here`);
  }
}

/** The lines --check prints about pools and the snapshots on disk. */
export async function describePools(pools: PoolConfig[], snapshots: SnapshotStore): Promise<string> {
  const lines = ["pools:"];
  if (pools.length === 0) lines.push("  none configured (--pool <spec.json>:<N>[+disk])");
  for (const pool of pools) {
    lines.push(
      `  ${pool.name}: ${pool.hot} hot${pool.disk ? " + snapshot on disk" : ""}; machine ${machineKey(pool.spec)} ` +
        `(${pool.spec.cpu} vCPU, ${pool.spec.memoryBytes / 1024 ** 2} MiB; ${(pool.hot * pool.spec.memoryBytes) / 1024 ** 2} MiB held hot)`,
    );
  }
  const files = await snapshots.list();
  lines.push("snapshots:");
  if (files.length === 0) lines.push("  none on disk");
  for (const { name, file, problem } of files) {
    const owner = pools.find((pool) => file && machineKey(pool.spec) === file.key);
    const what = file ? `${(file.bytes / 1024 ** 2).toFixed(1)} MiB, ${file.backend} ${file.version}` : "unreadable";
    lines.push(`  ${name}: ${what}; ${owner ? `pool ${owner.name}` : "no pool (removed at start)"}${problem ? `; ${problem}` : ""}`);
  }
  return lines.join("\n");
}
