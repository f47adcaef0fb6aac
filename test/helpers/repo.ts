// Locating the repository and the bundled test guest from test/ and from dist/test/ alike.
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { VmSpecInput } from "../../worker/core/api.js";
import type { VmLaunchSpec, VmmBackend } from "../../worker/ports/index.js";
import { parseVmSpecJson } from "../../worker/core/spec.js";

function findRepoRoot(start: string): string {
  let dir = start;
  while (!existsSync(join(dir, "package.json")) || existsSync(join(dir, "tsconfig.json")) === false) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no repository root above ${start}`);
    dir = parent;
  }
  return dir;
}

export const REPO_ROOT = findRepoRoot(dirname(fileURLToPath(import.meta.url)));
export const DIST = join(REPO_ROOT, "dist");
export const WORKER_BIN = join(DIST, "worker", "main.js");
export const CLI_BIN = join(DIST, "cli", "main.js");
export const GATEWAY_BIN = join(DIST, "worker", "fleet", "gateway-main.js");
export const TEST_GUEST_DIR = join(REPO_ROOT, ".cache", "test-guest");
export const TEST_GUEST_SPEC = join(TEST_GUEST_DIR, "spec.json");
export const NIX_CACHE_URL = `file://${join(REPO_ROOT, ".cache", "nix-cache")}?compression=zstd`;

export interface TestGuestSpec {
  hostname: string;
  kernel: string;
  initrd: string;
  image: string;
  cmdline: string;
  cpu: number;
  memoryBytes: number;
  allowedDomains: string[];
}

/**
 * The test guest's spec (as JSON holds it, and as the RPC client takes it: parsed the way the CLI
 * parses --spec-file), or a skip reason when scripts/build-test-guest has not run.
 */
export function testGuest(): { spec: TestGuestSpec; specText: string; input: VmSpecInput } | { skip: string } {
  if (!existsSync(TEST_GUEST_SPEC)) return { skip: `test guest missing: run scripts/build-test-guest (no ${TEST_GUEST_SPEC})` };
  const specText = readFileSync(TEST_GUEST_SPEC, "utf8");
  return { spec: JSON.parse(specText) as TestGuestSpec, specText, input: parseVmSpecJson(specText) };
}

/**
 * What a backend gets to boot the test guest as VM `id`, in `root/<id>` (made here): the guest's
 * own cmdline, then `extraCmdline`, then what the backend adds (tsc_early_khz under TCG).
 */
export function guestLaunchSpec(
  guest: TestGuestSpec,
  root: string,
  backend: VmmBackend,
  id: string,
  overrides: Partial<VmLaunchSpec> = {},
  extraCmdline: string[] = [],
): VmLaunchSpec {
  const vmDir = join(root, id);
  mkdirSync(vmDir, { recursive: true });
  return {
    id,
    vmDir,
    kernel: guest.kernel,
    initrd: guest.initrd,
    image: guest.image,
    cmdline: [guest.cmdline, ...extraCmdline, ...backend.extraCmdline()].join(" "),
    cpu: guest.cpu,
    memoryBytes: guest.memoryBytes,
    consolePath: join(vmDir, "console.log"),
    ...overrides,
  };
}
