// Pool snapshots on disk, under <state>/snapshots: <key>-<backend>-<version tag>.state (what the
// VMM saved, read-only once committed: one file from QEMU, a directory of files from Cloud
// Hypervisor) beside its .json (id, size, sha256, and each file's size, inode and mtime as
// committed, so a file replaced or rewritten since is never restored).
import { createHash, type Hash } from "node:crypto";
import { createReadStream } from "node:fs";
import { chmod, chown, lstat, mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
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
  /** Each file as committed: "" is the snapshot itself when it is one file. */
  parts: z.array(z.object({ name: z.string(), bytes: z.number().int().nonnegative(), ino: z.number().int(), mtimeMs: z.number() })).min(1),
});
type Part = z.infer<typeof Meta>["parts"][number];

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
    await rm(path, { force: true, recursive: true });
    return path;
  }

  private draftPath(id: SnapshotId): string {
    return join(this.dir, snapshotName(id) + DRAFT);
  }

  async commit(id: SnapshotId): Promise<SnapshotFile> {
    const name = snapshotName(id);
    const draft = this.draftPath(id);
    const names = await partNames(draft);
    // Root's (a VMM may have written them as its own uid) and read-only; readable by the caged
    // VMMs that restore from it (each its own uid), as the state directory keeps everyone else out.
    for (const part of names) {
      await chown(join(draft, part), 0, 0);
      await chmod(join(draft, part), 0o444);
    }
    if (names[0] !== "") {
      await chown(draft, 0, 0);
      await chmod(draft, 0o555);
    }
    const sha256 = await hashParts(draft, names);
    const path = join(this.dir, name + STATE);
    await rename(draft, path);
    const parts = await Promise.all(names.map((part) => stat(join(path, part)).then((info) => partOf(part, info))));
    const bytes = parts.reduce((sum, part) => sum + part.bytes, 0);
    const file: SnapshotFile = { ...id, path, bytes, sha256, createdAtMs: Date.now() };
    const meta = { ...file, path: undefined, parts };
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
    await Promise.all(
      [STATE, META, DRAFT, `${META}.tmp`].map((suffix) => rm(join(this.dir, name + suffix), { force: true, recursive: true })),
    );
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
    if (!(await stat(path).catch(() => undefined))) return { file, problem: `${name}${STATE} is missing` };
    const names = await partNames(path).catch(() => []);
    if (names.join("/") !== meta.parts.map((part) => part.name).join("/"))
      return { file, problem: `${name}${STATE} changed since it was saved` };
    for (const part of meta.parts) {
      const info = await lstat(join(path, part.name)).catch(() => undefined);
      const now = info && partOf(part.name, info);
      if (!now || now.bytes !== part.bytes || now.ino !== part.ino || now.mtimeMs !== part.mtimeMs) {
        return { file, problem: `${name}${STATE}${part.name ? `/${part.name}` : ""} changed since it was saved` };
      }
    }
    if (verify && (await hashParts(path, names)) !== meta.sha256) return { file, problem: `${name}${STATE} does not match its checksum` };
    return { file };
  }
}

/** The snapshot's files: [""] when it is one file, else the regular files of its directory, sorted. */
async function partNames(path: string): Promise<string[]> {
  const info = await lstat(path);
  if (info.isFile()) return [""];
  if (!info.isDirectory()) throw new Error(`${path} is neither a file nor a directory`);
  const entries = await readdir(path, { withFileTypes: true });
  const odd = entries.find((entry) => !entry.isFile());
  if (odd) throw new Error(`${join(path, odd.name)} is not a regular file`);
  return entries.map((entry) => entry.name).sort();
}

/** mtime to the millisecond: the fraction JSON keeps is not always the one stat gives back. */
function partOf(name: string, info: { size: number; ino: number; mtimeMs: number }): Part {
  return { name, bytes: info.size, ino: info.ino, mtimeMs: Math.trunc(info.mtimeMs) };
}

/** One file: the sha256 of its bytes (what sha256sum prints). A directory: of each file's name, size and bytes in turn. */
async function hashParts(path: string, names: string[]): Promise<string> {
  const hash = createHash("sha256");
  for (const name of names) {
    if (name) hash.update(`${name}\0${(await stat(join(path, name))).size}\0`);
    await hashInto(hash, join(path, name));
  }
  return hash.digest("hex");
}

function hashInto(hash: Hash, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    createReadStream(path, { highWaterMark: 1024 * 1024 })
      .on("data", (chunk) => hash.update(chunk))
      .on("error", reject)
      .on("end", () => resolve());
  });
}
