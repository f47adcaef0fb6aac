// The worker's native addon (native/pcr_native.c, built by scripts/setup): the kernel's own
// answers where Node has no API — SO_PEERCRED and openat2. Loaded once, on first use.
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

export interface NativeAddon {
  /** Credentials the kernel recorded for the peer of a connected unix socket. */
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  /**
   * Opens `relativePath` read-only beneath the directory `dirFd`, failing (ELOOP, EXDEV) if any
   * component is a symlink or leaves the directory. The caller owns the returned fd.
   */
  openBeneath(dirFd: number, relativePath: string): number;
  /** malloc_trim(0): returns freed heap pages to the system; true when some were. */
  trimMemory(): boolean;
  /** fallocate(fd, 0, 0, bytes): the blocks are reserved now (ENOSPC now, not when written). */
  allocate(fd: number, bytes: number): void;
}

export const NATIVE_ADDON_NAME = "pcr_native.node";

/** native/build/ of the checkout, found from worker/ (tsx) and dist/worker/ (built) alike. */
function addonPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const candidate = join(dir, "native", "build", NATIVE_ADDON_NAME);
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new Error(`${NATIVE_ADDON_NAME} is not built: run scripts/setup (it compiles native/pcr_native.c)`);
}

let addon: NativeAddon | undefined;

export function native(): NativeAddon {
  addon ??= createRequire(import.meta.url)(addonPath()) as NativeAddon;
  return addon;
}

let collect: (() => void) | undefined;

/**
 * After a burst of large buffers was dropped (a flood of big messages, say): collect them now and
 * give the heap pages back, so RSS falls back instead of staying at its peak. Costs one full GC.
 */
export function releaseFreedMemory(): void {
  if (!collect) {
    setFlagsFromString("--expose-gc");
    collect = runInNewContext("gc") as () => void;
  }
  collect();
  native().trimMemory();
  // V8 frees the buffers' backing stores on a background sweeper after the GC: trim again once
  // that is done, or the pages it frees stay with the process.
  for (const delayMs of [250, 1000, 3000]) setTimeout(() => native().trimMemory(), delayMs).unref();
}
