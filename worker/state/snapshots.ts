// Pool snapshots on disk, under <state>/snapshots: <key>-<backend>-<version tag>.state (what the
// VMM saved, read-only once committed) beside its .json (id, size, sha256, and the inode and
// mtime it was committed with, so a file replaced or rewritten since is never restored).
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { chmod, mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import type { SnapshotFile, SnapshotId, SnapshotLookup, SnapshotStore } from "../ports/index.js";

const STATE = ".state";
const META = ".json";
const DRAFT = ".draft";

const Meta = z.object({
  key: z.string(),
  backend: z.string(),
  version: z.string(),
  bytes: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  createdAtMs: z.number().int(),
  ino: z.number().int(),
  mtimeMs: z.number(),
});

/** The file name of a snapshot: readable key and backend, the version as a short hash. */
export function snapshotName(id: SnapshotId): string {
  const tag = createHash("sha256").update(id.version).digest("hex").slice(0, 12);
  return `${id.key}-${id.backend}-${tag}`;
}

export class FileSnapshots implements SnapshotStore {
  constructor(private readonly dir: string) {}

  async draft(id: SnapshotId): Promise<string> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const path = this.draftPath(id);
    await rm(path, { force: true });
    return path;
  }

  private draftPath(id: SnapshotId): string {
    return join(this.dir, snapshotName(id) + DRAFT);
  }

  async commit(id: SnapshotId): Promise<SnapshotFile> {
    const name = snapshotName(id);
    const draft = this.draftPath(id);
    await chmod(draft, 0o400);
    const sha256 = await hashFile(draft);
    const path = join(this.dir, name + STATE);
    await rename(draft, path);
    const info = await stat(path);
    const file: SnapshotFile = { ...id, path, bytes: info.size, sha256, createdAtMs: Date.now() };
    const meta = { ...file, path: undefined, ino: info.ino, mtimeMs: info.mtimeMs };
    await writeFile(join(this.dir, `${name}${META}.tmp`), JSON.stringify(meta), { mode: 0o600 });
    await rename(join(this.dir, `${name}${META}.tmp`), join(this.dir, name + META));
    return file;
  }

  async find(id: SnapshotId, options: { verify?: boolean } = {}): Promise<SnapshotLookup> {
    const name = snapshotName(id);
    const checked = await this.check(name, options.verify === true);
    if ("missing" in checked) return checked;
    if (checked.problem) return { broken: checked.problem };
    const { file } = checked;
    if (file.key !== id.key || file.backend !== id.backend || file.version !== id.version) {
      return { broken: `${name}${META} describes another machine or version` };
    }
    return { found: file };
  }

  async list(): Promise<{ name: string; file?: SnapshotFile; problem?: string }[]> {
    const names = new Set((await this.entries()).filter((entry) => entry.endsWith(META)).map((entry) => entry.slice(0, -META.length)));
    const listed = [];
    for (const name of [...names].sort()) {
      const checked = await this.check(name, false);
      listed.push("missing" in checked ? { name, problem: "its state file is missing" } : { name, ...checked });
    }
    return listed;
  }

  async remove(id: SnapshotId): Promise<void> {
    const name = snapshotName(id);
    await Promise.all([STATE, META, DRAFT, `${META}.tmp`].map((suffix) => rm(join(this.dir, name + suffix), { force: true })));
  }

  async removeOthers(keep: SnapshotId[]): Promise<string[]> {
    const kept = new Set(keep.flatMap((id) => [snapshotName(id) + STATE, snapshotName(id) + META]));
    const removed: string[] = [];
    for (const entry of await this.entries()) {
      if (kept.has(entry)) continue;
      await rm(join(this.dir, entry), { force: true, recursive: true });
      removed.push(`snapshot:${entry}`);
    }
    return removed;
  }

  private async entries(): Promise<string[]> {
    return readdir(this.dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return [];
      throw err;
    });
  }

  /** The snapshot's description and what is wrong with its file, if anything. */
  private async check(name: string, verify: boolean): Promise<{ missing: true } | { file: SnapshotFile; problem?: string }> {
    let meta: z.infer<typeof Meta>;
    try {
      meta = Meta.parse(JSON.parse(await readFile(join(this.dir, name + META), "utf8")));
    } catch {
      // No description, or one that does not parse: nothing to trust, so nothing is there.
      return { missing: true };
    }
    const path = join(this.dir, name + STATE);
    const file: SnapshotFile = {
      key: meta.key,
      backend: meta.backend,
      version: meta.version,
      path,
      bytes: meta.bytes,
      sha256: meta.sha256,
      createdAtMs: meta.createdAtMs,
    };
    const info = await stat(path).catch(() => undefined);
    if (!info) return { file, problem: `${name}${STATE} is missing` };
    if (info.size !== meta.bytes || info.ino !== meta.ino || Math.trunc(info.mtimeMs) !== Math.trunc(meta.mtimeMs)) {
      return { file, problem: `${name}${STATE} changed since it was saved` };
    }
    if (verify && (await hashFile(path)) !== meta.sha256) return { file, problem: `${name}${STATE} does not match its checksum` };
    return { file };
  }
}

function hashFile(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash("sha256");
    createReadStream(path, { highWaterMark: 1024 * 1024 })
      .on("data", (chunk) => hash.update(chunk))
      .on("error", reject)
      .on("end", () => resolve(hash.digest("hex")));
  });
}
