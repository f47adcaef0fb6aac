// I/O errors on the data disk at runtime with QEMU's blkdebug: the data disk is a raw node over a
// file node; injecting slides a blkdebug filter between them (blockdev-add + blockdev-reopen of the
// raw node's `file`), clearing slides it out again and deletes it. blkdebug's inject-error rules
// only become active on an event, so each rule listens for flush_to_os and the worker sends one
// flush (HMP qemu-io) right after inserting; the guest's own flushes merely re-arm the same rules.
import { createHash } from "node:crypto";
import type { Logger } from "pino";
import { failedPrecondition, invalidArgument } from "../../core/errors.js";
import type { DiskErrorRule } from "../../ports/index.js";

export const DATA_FILE_NODE = "data-file";
export const DATA_NODE = "data";
export const DATA_DEVICE = "datadisk";
const BLOCK_BYTES = 4096;
/** blkdebug checks every active rule on every request: keep the bad-block map small. */
export const MAX_BAD_BLOCKS = 4096;
const AFTER_OPS_POLL_MS = 20;

type Execute = (command: string, args?: Record<string, unknown>) => Promise<unknown>;

interface InjectErrorRule {
  event: "flush_to_os";
  iotype: "read" | "write";
  errno: number;
  once: false;
  sector?: number;
}

/** Deterministic per fault id, so a run can be repeated: mulberry32 seeded from a hash. */
function seededRandom(seed: string): () => number {
  let state = createHash("sha256").update(seed).digest().readUInt32LE(0);
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The blkdebug inject-error rules for one fault on a disk of `diskBytes`. */
export function blkdebugRules(faultId: string, rule: DiskErrorRule, diskBytes: number): InjectErrorRule[] {
  const iotypes = rule.op === "readWrite" ? (["read", "write"] as const) : ([rule.op] as const);
  const base = { event: "flush_to_os" as const, errno: rule.errno, once: false as const };
  if (rule.probabilityPercent <= 0 || rule.probabilityPercent >= 100) return iotypes.map((iotype) => ({ ...base, iotype }));
  const random = seededRandom(faultId);
  const blocks = Math.floor(diskBytes / BLOCK_BYTES);
  const tooMany = () =>
    invalidArgument(
      `${rule.probabilityPercent}% of the data disk's ${blocks} blocks ` +
        `is about ${Math.round((blocks * rule.probabilityPercent) / 100)} bad blocks, ` +
        `above the ${MAX_BAD_BLOCKS} this supports; lower the probability or the disk size`,
    );
  // Refuse what is surely too many before any work; otherwise jump from bad block to bad block
  // (geometric gaps), so the work is bounded by MAX_BAD_BLOCKS, not by the disk's size.
  if ((blocks * rule.probabilityPercent) / 100 > 2 * MAX_BAD_BLOCKS) throw tooMany();
  const p = rule.probabilityPercent / 100;
  const bad: number[] = [];
  for (let block = -1; ; ) {
    block += 1 + Math.floor(Math.log(1 - random()) / Math.log(1 - p));
    if (block >= blocks) break;
    bad.push(block);
    if (bad.length > MAX_BAD_BLOCKS) throw tooMany();
  }
  return bad.flatMap((block) => iotypes.map((iotype) => ({ ...base, iotype, sector: (block * BLOCK_BYTES) / 512 })));
}

interface Active {
  faultId: string;
  node: string;
  inserted: boolean;
  poll?: NodeJS.Timeout;
}

export class DiskFaults {
  private active: Active | undefined;

  constructor(
    private readonly execute: Execute,
    private readonly log: Logger,
  ) {}

  async inject(faultId: string, rule: DiskErrorRule): Promise<void> {
    if (this.active) throw failedPrecondition(`disk fault ${this.active.faultId} is already active; clear it first`);
    const nodes = (await this.execute("query-named-block-nodes", { flat: true })) as {
      "node-name": string;
      image: { "virtual-size": number };
    }[];
    const data = nodes.find((node) => node["node-name"] === DATA_NODE);
    if (!data) throw failedPrecondition("the VM has no data disk to fail; create it with dataDiskBytes > 0");
    const rules = blkdebugRules(faultId, rule, data.image["virtual-size"]);
    const active: Active = { faultId, node: `blkdebug-${faultId}`, inserted: false };
    this.active = active;
    if (rule.afterOps === 0) {
      await this.insert(active, rules).catch((err) => {
        this.active = undefined;
        throw err;
      });
      return;
    }
    // blkdebug cannot count requests on a raw disk, so watch the device's counters instead: the
    // filter goes in within one poll interval of the Nth operation.
    const baseline = await this.ops(rule.op);
    const poll = async () => {
      if (this.active !== active) return;
      const ops = await this.ops(rule.op).catch(() => undefined); // asked again at the next poll
      if (this.active !== active) return;
      if (ops !== undefined && ops - baseline >= rule.afterOps) {
        await this.insert(active, rules).catch((err) =>
          this.log.error({ faultId, err: (err as Error).message }, "disk fault insert failed"),
        );
        return;
      }
      active.poll = setTimeout(() => void poll(), AFTER_OPS_POLL_MS);
    };
    active.poll = setTimeout(() => void poll(), AFTER_OPS_POLL_MS);
  }

  /** Restores the raw node's original child; `vmmGone` skips QMP (nothing left to restore). */
  async clear(faultId: string, vmmGone: boolean): Promise<void> {
    const active = this.active;
    if (!active || active.faultId !== faultId) return;
    clearTimeout(active.poll);
    this.active = undefined;
    if (!active.inserted || vmmGone) return;
    await this.execute("blockdev-reopen", { options: [{ driver: "raw", "node-name": DATA_NODE, file: DATA_FILE_NODE }] });
    await this.execute("blockdev-del", { "node-name": active.node });
  }

  /** Slides out and deletes any blkdebug filter a previous worker left under the data disk. */
  static async reset(execute: Execute): Promise<string[]> {
    // A QEMU that cannot list its nodes has none left to us to remove; the adoption goes on.
    const nodes = ((await execute("query-named-block-nodes", { flat: true }).catch(() => [])) as { "node-name": string }[])
      .map((node) => node["node-name"])
      .filter((name) => name.startsWith("blkdebug-"));
    if (nodes.length === 0) return [];
    await execute("blockdev-reopen", { options: [{ driver: "raw", "node-name": DATA_NODE, file: DATA_FILE_NODE }] });
    // Out of the graph after the reopen: a node that stays is inert, and named in the result.
    for (const node of nodes) await execute("blockdev-del", { "node-name": node }).catch(() => undefined);
    return nodes.map((node) => `qemu:${node}`);
  }

  private async insert(active: Active, rules: InjectErrorRule[]): Promise<void> {
    await this.execute("blockdev-add", { driver: "blkdebug", "node-name": active.node, image: DATA_FILE_NODE, "inject-error": rules });
    try {
      await this.execute("blockdev-reopen", { options: [{ driver: "raw", "node-name": DATA_NODE, file: active.node }] });
    } catch (err) {
      await this.execute("blockdev-del", { "node-name": active.node }).catch((cleanup: Error) =>
        this.log.warn(
          { faultId: active.faultId, node: active.node, err: cleanup.message },
          "cannot delete the blkdebug node of a failed insert",
        ),
      );
      throw err;
    }
    active.inserted = true;
    await this.execute("human-monitor-command", { "command-line": `qemu-io ${DATA_NODE} "flush"` });
    this.log.info({ faultId: active.faultId, rules: rules.length }, "blkdebug filter inserted");
  }

  private async ops(op: DiskErrorRule["op"]): Promise<number> {
    const stats = (await this.execute("query-blockstats")) as { "node-name"?: string; qdev?: string; stats: Record<string, number> }[];
    const entry = stats.find((item) => item["node-name"] === DATA_NODE || item.qdev === DATA_DEVICE);
    const s = entry?.stats ?? {};
    const reads = s.rd_operations ?? 0;
    const writes = s.wr_operations ?? 0;
    return op === "read" ? reads : op === "write" ? writes : reads + writes;
  }
}
