// Boot files are checked where they really lead: a store path may hold symlinks, and the VMM runs
// as root, so a link to a host file or device must never become a guest's disk or kernel.
import assert from "node:assert/strict";
import { execa } from "execa";
import { fstatSync, readFileSync, statSync } from "node:fs";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { createNixStore } from "../../worker/store/nix.js";
import { rejectsWith } from "../helpers/errors.js";

const logger = pino({ level: "silent" });
const skip = process.getuid?.() !== 0 ? "needs root for the Nix store" : false;

async function addToStore(dir: string): Promise<string> {
  return (await execa("nix-store", ["--add", dir])).stdout.trim();
}

describe("Nix store: openBootFile", { skip }, () => {
  let scratch: string;
  let hostSecret: string;
  let path: string;
  let other: string;
  const store = createNixStore({ trustedKeys: [], logger });

  before(async () => {
    scratch = await mkdtemp(join(tmpdir(), "pcr-store-"));
    hostSecret = join(scratch, "host-secret.txt");
    await writeFile(hostSecret, `root-only ${Date.now()}\n`, { mode: 0o600 });
    const otherDir = join(scratch, "other");
    await mkdir(otherDir);
    await writeFile(join(otherDir, "kernel"), `another store path ${Date.now()}`);
    other = await addToStore(otherDir);

    // What an attacker whose closure reaches the cache could ship.
    const dir = join(scratch, "evil");
    await mkdir(join(dir, "sub"), { recursive: true });
    await writeFile(join(dir, "kernel"), "a real file");
    await symlink("kernel", join(dir, "relative-kernel"));
    await symlink(hostSecret, join(dir, "disk"));
    await symlink("/dev/null", join(dir, "device"));
    await symlink(`../../..${hostSecret}`, join(dir, "dotdot"));
    await symlink(join(other, "kernel"), join(dir, "foreign"));
    await symlink("loop", join(dir, "loop"));
    path = await addToStore(dir);
  });

  after(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  test("a regular file is opened: the descriptor is that file", async () => {
    const file = await store.openBootFile("kernel", `${path}/kernel`);
    try {
      assert.equal(file.realPath, `${path}/kernel`);
      assert.equal(fstatSync(file.fd).ino, statSync(`${path}/kernel`).ino);
      assert.equal(readFileSync(`/proc/self/fd/${file.fd}`, "utf8"), "a real file");
    } finally {
      await file.close();
      await file.close(); // idempotent
    }
  });

  test("a relative link inside the same store path is followed", async () => {
    const file = await store.openBootFile("kernel", `${path}/relative-kernel`);
    assert.equal(file.realPath, `${path}/kernel`);
    await file.close();
  });

  test("a link to a host file is INVALID_ARGUMENT, naming the field but not the target", async () => {
    await rejectsWith(
      store.openBootFile("image", `${path}/disk`),
      "INVALID_ARGUMENT",
      /^image \/nix\/store\/\S+\/disk resolves outside the Nix store$/,
    );
    await rejectsWith(store.openBootFile("image", `${path}/dotdot`), "INVALID_ARGUMENT", /resolves outside the Nix store/);
  });

  test("a link to a device is INVALID_ARGUMENT", async () => {
    await rejectsWith(store.openBootFile("initrd", `${path}/device`), "INVALID_ARGUMENT", /resolves outside the Nix store/);
  });

  test("a link to a store path outside the closure is INVALID_ARGUMENT", async () => {
    await rejectsWith(store.openBootFile("kernel", `${path}/foreign`), "INVALID_ARGUMENT", /outside the closure of/);
  });

  test("a directory, a link loop and a missing file are refused", async () => {
    await rejectsWith(store.openBootFile("image", `${path}/sub`), "INVALID_ARGUMENT", /not a regular file/);
    await rejectsWith(store.openBootFile("image", `${path}/loop`), "INVALID_ARGUMENT", /cannot be resolved \(ELOOP\)/);
    await rejectsWith(store.openBootFile("image", `${path}/missing`), "NOT_FOUND", /does not exist/);
  });
});
