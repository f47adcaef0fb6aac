// Running nix-instantiate for the test/nix suites: fixtures, skip reason, evaluation helpers.
import { execa } from "execa";
import { join } from "node:path";
import { REPO_ROOT } from "../helpers/repo.js";
import { onPath } from "../helpers/on-path.js";

export const FIXTURES = join(REPO_ROOT, "test", "nix", "fixtures");
export const FLAKE_VMM_LIB = join(REPO_ROOT, "nix", "flake-vmm", "lib");

const nixInstantiate = onPath("nix-instantiate");

/** Passed as node:test's `skip`: false when nix-instantiate is installed, else why the suite is skipped. */
export const skipWithoutNix: string | false = nixInstantiate
  ? false
  : "nix-instantiate is not on PATH (install Debian's nix-bin); the Nix helpers cannot be evaluated";

export interface NixResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export async function runNixInstantiate(args: string[]): Promise<NixResult> {
  const result = await execa(nixInstantiate ?? "nix-instantiate", args, {
    reject: false,
    cwd: REPO_ROOT,
    // No channels or NIX_PATH needed: everything evaluated here uses builtins only.
    env: { NIX_PATH: "" },
    timeout: 15_000,
  });
  return { exitCode: result.exitCode ?? -1, stdout: result.stdout, stderr: result.stderr };
}

/** `nix-instantiate --eval --strict --json` of an expression; throws with Nix's message on failure. */
export async function evalJson<T = unknown>(expression: string, extraArgs: string[] = []): Promise<T> {
  const result = await runNixInstantiate(["--eval", "--strict", "--json", ...extraArgs, "-E", expression]);
  if (result.exitCode !== 0) throw new Error(`nix-instantiate failed: ${result.stderr.trim()}`);
  return JSON.parse(result.stdout) as T;
}

/** A Nix string literal for a path or any text. */
export const nixString = (text: string): string => JSON.stringify(text).replace(/\$\{/g, "\\${");
