// The Nix store adapter: the worker never builds; it checks paths locally and pulls
// missing ones from a binary cache with `nix copy --from`.
import { execa } from "execa";
import { access } from "node:fs/promises";
import type { Logger } from "pino";
import { notFound, unavailable } from "../core/errors.js";
import type { StorePort } from "../ports.js";

export interface NixStoreOptions {
  cacheUrl?: string;
  trustedKeys: string[];
  logger: Logger;
  copyTimeoutMs?: number;
  nixBin?: string;
  nixStoreBin?: string;
}

export class NixStore implements StorePort {
  /** Copies in flight, by path, so concurrent creates needing one path share one copy. */
  private readonly inFlight = new Map<string, Promise<void>>();
  /**
   * Paths nix-store already called valid. A valid path stays valid until garbage collection
   * deletes it, so a path seen valid and still on disk skips the nix-store spawn (~30-60 ms).
   */
  private readonly knownValid = new Set<string>();

  constructor(private readonly options: NixStoreOptions) {}

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
    const onDisk = await Promise.all(paths.map((path) => access(path).then(() => true, () => false)));
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
