// The Nix store adapter: the worker never builds; it checks paths locally and pulls
// missing ones from a binary cache with `nix copy --from`.
import { execa } from "execa";
import { closeSync, constants, fstatSync, openSync } from "node:fs";
import { access, realpath } from "node:fs/promises";
import type { Logger } from "pino";
import { invalidArgument, notFound, unavailable } from "../core/errors.js";
import { isStorePath, storePathRoot } from "../core/spec.js";
import { native } from "../native.js";
import type { BootFile, StorePort } from "../ports/index.js";

export const STORE_DIR = "/nix/store";
const MAX_CACHED_CLOSURES = 256;

export interface NixStoreOptions {
  cacheUrl?: string;
  trustedKeys: string[];
  logger: Logger;
  copyTimeoutMs?: number;
  nixBin?: string;
  nixStoreBin?: string;
}

export function createNixStore(options: NixStoreOptions): StorePort {
  return new NixStore(options);
}

class NixStore implements StorePort {
  /** Copies in flight, by path, so concurrent creates needing one path share one copy. */
  private readonly inFlight = new Map<string, Promise<void>>();
  /**
   * Paths nix-store already called valid. A valid path stays valid until garbage collection
   * deletes it, so a path seen valid and still on disk skips the nix-store spawn (~30-60 ms).
   */
  private readonly knownValid = new Set<string>();

  /** Closures by top-level path: a valid path's closure never changes. */
  private readonly closures = new Map<string, Promise<Set<string>>>();
  /** /nix/store, held open: every boot file is opened beneath it. */
  private storeFd: number | undefined;

  constructor(private readonly options: NixStoreOptions) {}

  async openBootFile(field: string, path: string): Promise<BootFile> {
    let real: string;
    try {
      real = await realpath(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") throw notFound(`${field} ${path} does not exist`);
      throw invalidArgument(`${field} ${path} cannot be resolved (${code})`);
    }
    // Where it points is the host's business: say only that it is outside.
    if (!real.startsWith(`${STORE_DIR}/`) || !isStorePath(real)) throw invalidArgument(`${field} ${path} resolves outside the Nix store`);
    const root = storePathRoot(path);
    const realRoot = storePathRoot(real);
    if (realRoot !== root && !(await this.closureOf(root)).has(realRoot)) {
      throw invalidArgument(`${field} ${path} resolves to ${real}, outside the closure of ${root}`);
    }
    let fd: number;
    try {
      fd = native().openBeneath(this.openStoreDir(), real.slice(STORE_DIR.length + 1));
    } catch (err) {
      // A component turned into a link, or left the store, after realpath: a race, refused.
      throw invalidArgument(`${field} ${path} cannot be opened without following links (${(err as NodeJS.ErrnoException).code})`);
    }
    if (!fstatSync(fd).isFile()) {
      closeSync(fd);
      throw invalidArgument(`${field} ${path} is not a regular file`);
    }
    let open = true;
    return {
      fd,
      realPath: real,
      close: async () => {
        if (open) closeSync(fd);
        open = false;
      },
    };
  }

  private openStoreDir(): number {
    this.storeFd ??= openSync(STORE_DIR, constants.O_RDONLY | constants.O_DIRECTORY);
    return this.storeFd;
  }

  private closureOf(root: string): Promise<Set<string>> {
    let closure = this.closures.get(root);
    if (!closure) {
      closure = execa(this.options.nixStoreBin ?? "nix-store", ["--query", "--requisites", root], { reject: false }).then((result) => {
        if (result.exitCode !== 0) throw unavailable(`nix-store --query --requisites ${root} failed: ${lastLine(result.stderr)}`);
        return new Set(result.stdout.split("\n").filter(Boolean));
      });
      closure.catch(() => this.closures.delete(root)); // callers get the error; not cached
      this.closures.set(root, closure);
      // Bounded: a long-lived worker sees many top-level paths; the oldest go first.
      if (this.closures.size > MAX_CACHED_CLOSURES) this.closures.delete(this.closures.keys().next().value!);
    }
    return closure;
  }

  async ensurePaths(paths: string[]): Promise<{ fetched: string[]; bytes: number; seconds: number }> {
    const missing = await this.invalidPaths(paths);
    if (missing.length === 0) return { fetched: [], bytes: 0, seconds: 0 };
    const { cacheUrl } = this.options;
    if (!cacheUrl) {
      throw notFound(`store path(s) ${missing.join(", ")} not in the local store, and no binary cache is configured`);
    }
    const started = performance.now();
    await Promise.all(missing.map((path) => this.copyOnce(path, cacheUrl)));
    const seconds = (performance.now() - started) / 1000;
    const bytes = await this.narSize(missing);
    return { fetched: missing, bytes, seconds };
  }

  /** The paths of `paths` that are not valid in the local store (one `nix-store` call). */
  private async invalidPaths(paths: string[]): Promise<string[]> {
    const onDisk = await Promise.all(
      paths.map((path) =>
        access(path).then(
          () => true,
          () => false,
        ),
      ),
    );
    const unknown = paths.filter((path, index) => !(onDisk[index] && this.knownValid.has(path)));
    if (unknown.length === 0) return [];
    const invalid = await this.checkValidity(unknown);
    for (const path of unknown) if (!invalid.includes(path)) this.knownValid.add(path);
    return invalid;
  }

  private async checkValidity(paths: string[]): Promise<string[]> {
    if (paths.length === 0) return [];
    const result = await execa(this.options.nixStoreBin ?? "nix-store", ["--check-validity", "--print-invalid", ...paths], {
      reject: false,
    });
    if (result.exitCode !== 0) {
      throw unavailable(`nix-store --check-validity failed: ${lastLine(result.stderr)}`);
    }
    return result.stdout.split("\n").filter(Boolean);
  }

  private copyOnce(path: string, cacheUrl: string): Promise<void> {
    let copy = this.inFlight.get(path);
    if (!copy) {
      copy = this.copy(path, cacheUrl).finally(() => this.inFlight.delete(path));
      this.inFlight.set(path, copy);
    }
    return copy;
  }

  private async copy(path: string, cacheUrl: string): Promise<void> {
    const args = ["copy", "--from", cacheUrl, path];
    if (this.options.trustedKeys.length > 0) {
      args.unshift("--option", "trusted-public-keys", this.options.trustedKeys.join(" "));
    }
    this.options.logger.info({ path, cacheUrl }, "nix copy from cache");
    const result = await execa(this.options.nixBin ?? "nix", args, {
      reject: false,
      timeout: this.options.copyTimeoutMs ?? 600_000,
      env: { NIX_CONFIG: "experimental-features = nix-command" },
    });
    if (result.exitCode === 0) return;
    const reason = lastLine(result.stderr) || `exit code ${result.exitCode}`;
    if (result.timedOut) throw unavailable(`nix copy of ${path} from ${cacheUrl} timed out`);
    if (/does not exist|not valid|don't know how to build|is not in|no such|no substituter that can build/i.test(result.stderr)) {
      throw notFound(`store path ${path} is in neither the local store nor ${cacheUrl}: ${reason}`);
    }
    throw unavailable(`nix copy of ${path} from ${cacheUrl} failed: ${reason}`);
  }

  private async narSize(paths: string[]): Promise<number> {
    const result = await execa(this.options.nixBin ?? "nix", ["path-info", "--json", ...paths], {
      reject: false,
      env: { NIX_CONFIG: "experimental-features = nix-command" },
    });
    if (result.exitCode !== 0) return 0;
    try {
      const infos = JSON.parse(result.stdout) as { narSize?: number }[];
      return infos.reduce((total, info) => total + (info.narSize ?? 0), 0);
    } catch {
      return 0;
    }
  }
}

function lastLine(text: string): string {
  return text.trim().split("\n").filter(Boolean).at(-1)?.trim() ?? "";
}
