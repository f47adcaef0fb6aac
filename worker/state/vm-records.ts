// Per-VM state on disk: <stateDir>/vms/<id>/vm.json, written atomically (temp file, fsync, rename).
// The console file is bounded by punching holes at its head (fallocate): the VMM keeps appending
// at the same offsets, disk use stays bounded and offsets stay monotonic for readers, until the
// VMM creates the file again (Cloud Hypervisor does on a guest reboot): then reading starts over.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { type FileHandle, lstat, mkdir, open, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { isWorkerStatus } from "../core/lifecycle.js";
import type { ConsoleStore, RecordRepo, VmRecord } from "../ports/index.js";
import { ifMissing } from "../missing.js";

/** Records under <stateDir>/vms, which is made when missing. */
export async function createFileRecords(options: { stateDir: string }): Promise<FileRecordRepo> {
  const repo = new FileRecordRepo(options.stateDir);
  await mkdir(repo.vmsDir, { recursive: true, mode: 0o700 });
  return repo;
}

export type { FileRecordRepo };

class FileRecordRepo implements RecordRepo, ConsoleStore {
  readonly vmsDir: string;
  /** Console start offsets, read from disk once per VM and kept here: `read` runs often. */
  private readonly consoleStarts = new Map<string, number>();
  /** VMs whose vm.json name is on disk (its directory synced after the first rename, or found at start). */
  private readonly durable = new Set<string>();

  constructor(stateDir: string) {
    this.vmsDir = join(stateDir, "vms");
  }

  vmDir(id: string): string {
    return join(this.vmsDir, id);
  }

  consolePath(id: string): string {
    return join(this.vmDir(id), "console.log");
  }

  /** Offset of the oldest console byte still kept (a file next to the console, for restarts; 0 when absent). */
  private async consoleStart(id: string): Promise<number> {
    let start = this.consoleStarts.get(id);
    if (start === undefined) {
      const text = await ifMissing(readFile(join(this.vmDir(id), "console.start"), "utf8"), "0");
      start = Number.parseInt(text, 10) || 0;
      this.consoleStarts.set(id, start);
    }
    return start;
  }

  async createDir(id: string): Promise<string> {
    const dir = this.vmDir(id);
    await mkdir(dir, { mode: 0o700 });
    return dir;
  }

  async save(record: VmRecord): Promise<void> {
    const path = join(this.vmDir(record.id), "vm.json");
    // A temp name of its own per save: two saves of one record never share (and truncate) a file.
    // Random and created exclusively: a caged VMM may make entries in its directory, and a link
    // it planted under a name the worker then writes would be followed.
    const temp = `${path}.${randomBytes(6).toString("hex")}.tmp`;
    const file = await open(temp, "wx", 0o600);
    try {
      await file.writeFile(JSON.stringify(record, null, 2));
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temp, path);
    // The first rename must reach the disk too (a directory fsync), or a power loss could leave the
    // VM with no record at all. A later one replaces a complete record with a complete one: a power
    // loss may at worst bring back the previous status, which recovery treats like any other (and
    // after a power loss no VMM is left to adopt). That fsync was a third of each save's cost.
    if (this.durable.has(record.id)) return;
    const dir = await open(this.vmDir(record.id), "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    this.durable.add(record.id);
  }

  async remove(id: string): Promise<void> {
    this.consoleStarts.delete(id);
    this.durable.delete(id);
    // Retries: a save racing the delete may add a temp file while rm walks the directory.
    await rm(this.vmDir(id), { recursive: true, force: true, maxRetries: 3 });
  }

  async loadAll(): Promise<{ records: VmRecord[]; unreadable: string[] }> {
    const records: VmRecord[] = [];
    const unreadable: string[] = [];
    for (const id of await ifMissing(readdir(this.vmsDir), [] as string[])) {
      // A temp file is a save cut short by a crash: never authoritative, so it goes.
      for (const name of await ifMissing(readdir(this.vmDir(id)), [] as string[])) {
        if (name.endsWith(".tmp")) await rm(join(this.vmDir(id), name), { force: true });
      }
      try {
        const record = JSON.parse(await readFile(join(this.vmDir(id), "vm.json"), "utf8")) as VmRecord;
        // A status no worker writes (`lost` is a gateway's, anything else is damage) would send
        // recovery down no path it knows: such a record is as unreadable as a torn one.
        if (!isWorkerStatus(record.status)) throw new Error(`status ${String(record.status)}`);
        records.push(record);
        this.durable.add(id);
      } catch {
        unreadable.push(id);
      }
    }
    return { records, unreadable };
  }

  async readConsoleTail(id: string, maxBytes: number): Promise<Uint8Array> {
    // A link in place of the console (ELOOP) is no console at all.
    const file = await open(this.consolePath(id), READ_NO_LINK).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT" || err.code === "ELOOP") return undefined;
      throw err;
    });
    if (!file) return new Uint8Array(0);
    try {
      const { size } = await file.stat();
      const start = Math.max(0, size - maxBytes, await this.liveConsoleStart(id, size));
      const buffer = Buffer.alloc(size - start);
      const { bytesRead } = await file.read(buffer, 0, buffer.length, start);
      return buffer.subarray(0, bytesRead);
    } finally {
      await file.close();
    }
  }

  /**
   * Reads from `offset`. A file shorter than the offset was created again under the reader
   * (Cloud Hypervisor truncates its serial file when the guest reboots): reading then starts over
   * at the file's start, and nextOffset says so.
   */
  async readConsole(id: string, offset: bigint, maxBytes: number): Promise<{ data: Uint8Array; nextOffset: bigint }> {
    let file: FileHandle;
    try {
      file = await open(this.consolePath(id), READ_NO_LINK);
    } catch {
      return { data: new Uint8Array(0), nextOffset: offset };
    }
    try {
      if (offset >= BigInt(Number.MAX_SAFE_INTEGER)) return { data: new Uint8Array(0), nextOffset: offset };
      const { size } = await file.stat();
      const start = await this.liveConsoleStart(id, size);
      const from = Number(offset) > size ? start : Math.max(Number(offset), start);
      const buffer = Buffer.alloc(maxBytes);
      const { bytesRead } = await file.read(buffer, 0, maxBytes, from);
      if (bytesRead === 0) return { data: new Uint8Array(0), nextOffset: Number(offset) > size ? BigInt(from) : offset };
      return { data: buffer.subarray(0, bytesRead), nextOffset: BigInt(from + bytesRead) };
    } finally {
      await file.close();
    }
  }

  /** The console start, unless the file shrank below it (created again): then 0, on disk too. */
  private async liveConsoleStart(id: string, size: number): Promise<number> {
    const start = await this.consoleStart(id);
    if (start <= size) return start;
    this.consoleStarts.set(id, 0);
    await rm(join(this.vmDir(id), "console.start"), { force: true });
    return 0;
  }

  async trimConsole(id: string, keepBytes: number): Promise<void> {
    const path = this.consolePath(id);
    const info = await ifMissing(lstat(path), undefined);
    if (!info?.isFile()) return;
    const size = info.size;
    const start = await this.consoleStart(id);
    // Trim in whole pages, and only once the file is a quarter over, so this runs rarely.
    if (size - start <= keepBytes + keepBytes / 4) return;
    const newStart = Math.floor((size - keepBytes) / 4096) * 4096;
    if (newStart <= start) return;
    // Readers move past the bytes first, so that none of them reads the hole.
    const startFile = join(this.vmDir(id), "console.start");
    const temp = `${startFile}.${randomBytes(6).toString("hex")}.tmp`;
    await writeFile(temp, String(newStart), { flag: "wx", mode: 0o600 });
    await rename(temp, startFile);
    this.consoleStarts.set(id, newStart);
    await execFileAsync("fallocate", ["--punch-hole", "--offset", "0", "--length", String(newStart), path]);
  }
}

const execFileAsync = promisify(execFile);

/** The console is the VMM's file, in a directory it may write to: a link there is never followed. */
const READ_NO_LINK = constants.O_RDONLY | constants.O_NOFOLLOW;
