// Secrets live only on tmpfs, one directory per VM (0700, files 0400), shared read-only
// into the guest. Values never reach argv, environment, logs or state files.
import { execa } from "execa";
import { constants } from "node:fs";
import { mkdir, open, readdir, rm, statfs } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { failedPrecondition, resourceExhausted } from "../core/errors.js";
import { SECRET_LIMITS } from "../core/secrets.js";
import type { SecretsPort } from "../ports/index.js";
import { ifMissing } from "../missing.js";

const TMPFS_MAGIC = 0x01021994;

export interface TmpfsSecretsOptions {
  root: string;
  logger: Logger;
  /** Size of the tmpfs, all VMs' secrets together. */
  sizeBytes?: number;
}

/** Secrets under `root`, which is made a tmpfs (mounted when it is not one) before this returns. */
export async function createTmpfsSecrets(options: TmpfsSecretsOptions): Promise<SecretsPort> {
  const secrets = new TmpfsSecrets(options.root, options.logger, options.sizeBytes);
  await secrets.mountTmpfs();
  return secrets;
}

class TmpfsSecrets implements SecretsPort {
  constructor(
    private readonly root: string,
    private readonly logger: Logger,
    private readonly sizeBytes = 64 * 1024 * 1024,
  ) {}

  /**
   * Makes sure root is a tmpfs, mounting a private one there if it is not: bounded in size, and
   * `noswap` (Linux 6.4+) so that secret pages never reach a swap device; older kernels get a
   * warning. (The per-VM bound is core/secrets.ts's.)
   */
  async mountTmpfs(): Promise<void> {
    await mkdir(this.root, { recursive: true, mode: 0o700 });
    if ((await statfs(this.root)).type === TMPFS_MAGIC) return;
    const mount = (extra: string) =>
      execa(
        "mount",
        ["-t", "tmpfs", "-o", `mode=0700,size=${this.sizeBytes},nosuid,nodev,noexec${extra}`, "procurator-secrets", this.root],
        { reject: false },
      );
    let mounted = await mount(",noswap");
    if (mounted.exitCode !== 0) {
      mounted = await mount("");
      if (mounted.exitCode === 0) this.logger.warn({ root: this.root }, "this kernel's tmpfs has no noswap: secrets could be swapped out");
    }
    if (mounted.exitCode !== 0 || (await statfs(this.root)).type !== TMPFS_MAGIC) {
      throw failedPrecondition(`secrets directory ${this.root} is not on tmpfs and mounting one failed: ${mounted.stderr.trim()}`);
    }
    this.logger.info({ root: this.root }, "mounted tmpfs for secrets");
  }

  dirFor(vmId: string): string {
    return join(this.root, vmId);
  }

  async write(vmId: string, secrets: { name: string; value: Uint8Array }[]): Promise<string> {
    const dir = this.dirFor(vmId);
    await mkdir(dir, { mode: 0o700 });
    try {
      for (const { name, value } of secrets) {
        const file = await open(join(dir, name), "wx", 0o400);
        try {
          await file.writeFile(value);
        } finally {
          await file.close();
        }
      }
    } catch (err) {
      await this.wipe(vmId);
      if ((err as NodeJS.ErrnoException).code === "ENOSPC")
        throw resourceExhausted("the secrets tmpfs is full: too many secrets held by running VMs");
      throw err;
    }
    return dir;
  }

  async wipe(vmId: string): Promise<void> {
    const dir = this.dirFor(vmId);
    const names = await ifMissing(readdir(dir), undefined);
    if (!names) return;
    // Overwrite before unlinking so a file still held open elsewhere reads zeros. The directory may
    // hold what a guest put there (a writable share, a bug): never follow a link, never open a
    // FIFO or device, never touch a file with other names (a hard link's other name is not ours).
    for (const name of names) {
      const file = await open(join(dir, name), constants.O_WRONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY).catch(
        () => undefined,
      );
      if (!file) continue;
      try {
        const stats = await file.stat();
        const ours = stats.isFile() && stats.nlink === 1 && stats.size <= SECRET_LIMITS.maxValueBytes;
        if (ours && stats.size > 0) await file.write(Buffer.alloc(stats.size), 0, stats.size, 0);
      } finally {
        await file.close();
      }
    }
    await rm(dir, { recursive: true, force: true });
  }

  async removeOrphans(known: Set<string>): Promise<string[]> {
    const removed: string[] = [];
    for (const vmId of await ifMissing(readdir(this.root), [] as string[])) {
      if (known.has(vmId)) continue;
      await this.wipe(vmId);
      removed.push(`secrets:${vmId}`);
    }
    return removed;
  }
}
