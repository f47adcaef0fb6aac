// The secrets directory may hold what a guest put there; wiping it must never reach outside it.
import assert from "node:assert/strict";
import { execa } from "execa";
import { link, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { WorkerError } from "../../worker/core/errors.js";
import type { SecretsPort } from "../../worker/ports/index.js";
import { createTmpfsSecrets } from "../../worker/secrets/tmpfs.js";

const logger = pino({ level: "silent" });

describe("tmpfs secrets: wipe", { skip: process.getuid?.() !== 0 ? "needs root to mount tmpfs" : false }, () => {
  let base: string;
  let secrets: SecretsPort;

  before(async () => {
    base = await mkdtemp(join(tmpdir(), "pcr-secrets-"));
    secrets = await createTmpfsSecrets({ root: join(base, "secrets"), logger });
  });

  after(async () => {
    await execa("umount", [join(base, "secrets")], { reject: false });
    await rm(base, { recursive: true, force: true });
  });

  test("the tmpfs is private, bounded and never swapped (noswap, where the kernel has it)", async (t) => {
    const line = (await readFile("/proc/mounts", "utf8")).split("\n").find((entry) => entry.includes(` ${join(base, "secrets")} tmpfs `));
    assert.ok(line, "mounted");
    t.diagnostic(line);
    assert.match(line, /size=65536k/);
    assert.match(line, /nosuid,nodev,noexec/);
    const [major, minor] = (await readFile("/proc/sys/kernel/osrelease", "utf8")).split(".").map(Number) as [number, number];
    if (major > 6 || (major === 6 && minor >= 4)) assert.match(line, /noswap/);
  });

  test("secrets that do not fit are RESOURCE_EXHAUSTED and leave no directory", async () => {
    const small = await createTmpfsSecrets({ root: join(base, "small"), logger, sizeBytes: 64 * 1024 });
    try {
      await assert.rejects(
        small.write("vm-big", [
          { name: "a", value: new Uint8Array(48 * 1024) },
          { name: "b", value: new Uint8Array(48 * 1024) },
        ]),
        (err: unknown) => {
          assert.ok(err instanceof WorkerError && err.code === "RESOURCE_EXHAUSTED", String(err));
          return true;
        },
      );
      assert.equal(existsSync(join(base, "small", "vm-big")), false);
    } finally {
      await execa("umount", [join(base, "small")], { reject: false });
    }
  });

  test("a link planted in a VM's secrets directory is removed, and its target is left untouched", async () => {
    // Stands for /etc/shadow: a file outside the secrets tmpfs that a guest wants zeroed.
    const victim = join(base, "victim");
    await writeFile(victim, "root:$y$hash:19000:0:99999:7:::\n");
    const dir = await secrets.write("vm-a", [{ name: "TOKEN", value: new TextEncoder().encode("s3cret") }]);
    await symlink(victim, join(dir, "x"));
    await secrets.wipe("vm-a");
    assert.equal(await readFile(victim, "utf8"), "root:$y$hash:19000:0:99999:7:::\n");
    assert.equal(existsSync(dir), false);
  });

  test("a FIFO or a hard link in the directory neither blocks the wipe nor zeroes the other name", async () => {
    const dir = await secrets.write("vm-b", [{ name: "TOKEN", value: new TextEncoder().encode("s3cret") }]);
    const other = join(base, "secrets", "other-file"); // same tmpfs: a hard link is possible
    await writeFile(other, "not the guest's");
    await link(other, join(dir, "hard"));
    await execa("mkfifo", [join(dir, "pipe")]);
    await secrets.wipe("vm-b");
    assert.equal(await readFile(other, "utf8"), "not the guest's");
    assert.equal(existsSync(dir), false);
    await rm(other);
  });

  test("the secret itself is overwritten before it is unlinked (a reader holding it sees zeros)", async () => {
    const dir = await secrets.write("vm-c", [{ name: "TOKEN", value: new TextEncoder().encode("s3cret") }]);
    const { open } = await import("node:fs/promises");
    const held = await open(join(dir, "TOKEN"), "r");
    await secrets.wipe("vm-c");
    const { buffer } = await held.read(Buffer.alloc(6), 0, 6, 0);
    await held.close();
    assert.deepEqual([...buffer], [0, 0, 0, 0, 0, 0]);
  });
});
