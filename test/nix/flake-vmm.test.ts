// The Nix side, as far as it evaluates without nixpkgs: every .nix file parses, the pure helpers
// (nix/flake-vmm/lib) turn fixtures into the expected spec JSON, and refuse bad options by name.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { describe, it } from "node:test";
import { REPO_ROOT } from "../helpers/repo.js";
import { FIXTURES, evalJson, nixString, runNixInstantiate, skipWithoutNix } from "./nix.js";

function nixFilesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return nixFilesUnder(path);
    return entry.name.endsWith(".nix") ? [path] : [];
  });
}

// Each case of fixtures/invalid.nix and the message its evaluation must throw.
const INVALID_CASES: Record<string, RegExp> = {
  "cpu-zero": /invalid VM spec: cpu 0 is out of range 1\.\.255/,
  "cpu-not-integer": /cpu must be an integer/,
  "hostname-underscore": /hostname "agent_sandbox" is not an RFC 1123 host name/,
  "hostname-too-long-label": /hostname "ab{63}" is not an RFC 1123 host name/,
  "memory-not-mib-multiple": /memoryBytes 536875008 is not a multiple of 1 MiB/,
  "memory-too-small": /memoryBytes 16777216 is below 67108864/,
  "kernel-outside-store": /kernel "\/boot\/vmlinuz" is not a path inside \/nix\/store/,
  "kernel-bad-hash": /kernel "\/nix\/store\/e{32}-linux\/vmlinux" is not a path inside \/nix\/store/,
  "kernel-missing": /kernel is required/,
  "image-dotdot": /image ".*\/\.\.\/etc\/shadow" is not a path inside \/nix\/store/,
  "domain-wildcard": /allowedDomains entry "\*\.example\.com" is not a domain name/,
  "domain-single-label": /allowedDomains entry "localhost" is not a domain name/,
  "domain-bad-address": /allowedDomains entry "256\.1\.1\.1" is not a domain name/,
  "cmdline-reserved": /cmdline may not set pcr\.ip \(the worker sets it\)/,
  "cmdline-control-char": /cmdline contains control characters/,
  "cmdline-too-long": /cmdline is longer than 1536 bytes/,
  "cmdline-stray-spaces": /cmdline has leading, trailing or doubled spaces/,
  "unknown-option": /called with unexpected argument 'memoryMiB'/,
  "several-problems": /hostname "a_b" is not an RFC 1123 host name; cpu 0 is out of range/,
  "params-reserved": /invalid kernel command line: kernel parameter pcr\.share is set by the worker/,
  "params-whitespace": /kernel parameter "foo=a b" contains whitespace/,
  "params-init": /kernel parameter init= comes from the init argument/,
  "init-outside-store": /init "\/sbin\/init" is not a path inside \/nix\/store/,
};

describe("nix: flake-vmm files and pure helpers", { skip: skipWithoutNix }, () => {
  it("parses every .nix file of nix/, examples/ and test/nix/", async () => {
    const files = ["nix", "examples", join("test", "nix")].flatMap((dir) => nixFilesUnder(join(REPO_ROOT, dir)));
    assert.ok(files.length >= 15, `expected the flake, modules, libs, examples and fixtures, found ${files.length}`);
    for (const required of ["nix/flake-vmm/flake.nix", "nix/flake-vmm/vm-module.nix", "nix/flake-vmm/host-module.nix"]) {
      assert.ok(files.includes(join(REPO_ROOT, required)), `${required} is missing`);
    }
    const result = await runNixInstantiate(["--parse", ...files]);
    assert.equal(result.exitCode, 0, `nix-instantiate --parse failed:\n${result.stderr}`);
    console.log(`# parsed ${files.length} files: ${files.map((file) => relative(REPO_ROOT, file)).join(" ")}`);
  });

  it("flakes: outputs take exactly their inputs, and path inputs point at flakes in this repository", async () => {
    const flakes = ["nix/flake-vmm", "examples/agent-sandbox/project", "examples/agent-sandbox/agent"];
    for (const dir of flakes) {
      const file = nixString(join(REPO_ROOT, dir, "flake.nix"));
      const shape = await evalJson<{ description: string; inputs: Record<string, string>; outputArgs: string[] }>(
        `let f = import ${file}; in {
           inherit (f) description;
           inputs = builtins.mapAttrs (_: input: input.url) f.inputs;
           outputArgs = builtins.attrNames (builtins.functionArgs f.outputs);
         }`,
      );
      assert.ok(shape.description.length > 0, `${dir}: description`);
      assert.deepEqual(shape.outputArgs, ["self", ...Object.keys(shape.inputs)].sort(), `${dir}: outputs arguments`);
      for (const [name, url] of Object.entries(shape.inputs)) {
        if (!url.startsWith("path:")) continue;
        const target = join(REPO_ROOT, dir, url.slice("path:".length), "flake.nix");
        assert.ok(existsSync(target), `${dir}: input ${name} (${url}) has no flake.nix at ${target}`);
      }
    }
  });

  const expectedFiles = readdirSync(FIXTURES).filter((name) => name.endsWith(".expected.json"));
  for (const expectedFile of expectedFiles) {
    const fixture = expectedFile.replace(/\.expected\.json$/, ".nix");
    it(`evaluates ${fixture} to ${expectedFile}`, async () => {
      const actual = await evalJson(`import ${nixString(join(FIXTURES, fixture))}`);
      const expected: unknown = JSON.parse(readFileSync(join(FIXTURES, expectedFile), "utf8"));
      assert.deepEqual(actual, expected);
    });
  }

  it("writes the spec with sorted keys, exactly as the vmSpecJson file", async () => {
    const text = await evalJson<string>(
      `let l = import ${nixString(join(REPO_ROOT, "nix/flake-vmm/lib"))}; ` +
        `in l.specToJSON (import ${nixString(join(FIXTURES, "spec-agent.nix"))})`,
    );
    assert.deepEqual(Object.keys(JSON.parse(text) as object), [
      "allowedDomains",
      "cmdline",
      "cpu",
      "hostname",
      "image",
      "initrd",
      "kernel",
      "memoryBytes",
    ]);
    assert.equal(text, JSON.stringify(JSON.parse(text)), "compact JSON, nothing but the object");
  });

  it("refuses bad options with a message naming the problem", async () => {
    const invalid = nixString(join(FIXTURES, "invalid.nix"));
    const names = await evalJson<string[]>(`builtins.attrNames (import ${invalid})`);
    assert.deepEqual([...names].sort(), Object.keys(INVALID_CASES).sort(), "fixtures/invalid.nix and this test list the same cases");
    const results = await Promise.all(
      names.map(async (name) => ({
        name,
        result: await runNixInstantiate(["--eval", "--strict", "--json", "-E", `(import ${invalid}).${JSON.stringify(name)}`]),
      })),
    );
    for (const { name, result } of results) {
      assert.notEqual(result.exitCode, 0, `${name} evaluated without error: ${result.stdout}`);
      assert.match(result.stderr, INVALID_CASES[name]!, `${name}: unexpected message:\n${result.stderr}`);
    }
  });

  it("keeps store-path context, so the spec file's closure is the whole VM", async () => {
    // Fake kernel/initrd/image derivations (no nixpkgs): the JSON text must depend on all three.
    const expression = `
      let
        l = import ${nixString(join(REPO_ROOT, "nix/flake-vmm/lib"))};
        fake = name: derivation { inherit name; system = "x86_64-linux"; builder = "/bin/sh"; };
        spec = l.mkVmSpec {
          hostname = "ctx";
          kernel = "\${fake "kernel"}/vmlinux";
          initrd = "\${fake "initrd"}/initrd";
          image = "\${fake "image"}/nixos.img";
          cmdline = l.mkCmdline { init = "\${fake "nixos-system"}/init"; };
        };
      in builtins.attrNames (builtins.getContext (l.specToJSON spec))`;
    const drvs = await evalJson<string[]>(expression);
    const names = drvs.map((drv) => drv.replace(/^\/nix\/store\/[0-9a-z]{32}-/, "")).sort();
    assert.deepEqual(names, ["image.drv", "initrd.drv", "kernel.drv", "nixos-system.drv"]);
  });
});
