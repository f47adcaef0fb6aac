// Specs made by the Nix helpers go through the same validation as `pcr-worker-test create-vm
// --spec-file`: parseVmSpecJson (worker/core/spec.ts), the CLI's specFromFlags, then validateSpec.
// And the Nix predicates agree with spec.ts on store paths, host names and reserved parameters.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { specFromFlags } from "../../cli/spec-input.js";
import { WorkerError } from "../../worker/core/errors.js";
import { isStorePath, isValidHostname, MIB, parseVmSpecJson, validateSpec } from "../../worker/core/spec.js";
import { FIXTURES, FLAKE_VMM_LIB, evalJson, nixString, skipWithoutNix } from "./nix.js";

const LIMITS = { maxCpu: 255, minMemoryBytes: 64 * MIB, maxMemoryBytes: 64 * 1024 * MIB, maxAllowedDomains: 64 };

/** The exact text a vmSpecJson file would hold for a fixture. */
const specText = (fixture: string) =>
  evalJson<string>(`(import ${nixString(FLAKE_VMM_LIB)}).specToJSON (import ${nixString(join(FIXTURES, fixture))})`);

describe("nix: specs round-trip into createVm", { skip: skipWithoutNix }, () => {
  const scratch = mkdtempSync(join(tmpdir(), "pcr-nix-spec-"));
  after(() => rmSync(scratch, { recursive: true, force: true }));

  for (const fixture of ["spec-minimal.nix", "spec-agent.nix"]) {
    it(`${fixture}: parseVmSpecJson, --spec-file and validateSpec accept it unchanged`, async () => {
      const text = await specText(fixture);
      const input = parseVmSpecJson(text);
      const raw = JSON.parse(text) as Record<string, unknown>;
      assert.deepEqual(input, { ...raw, memoryBytes: BigInt(raw.memoryBytes as number) });

      const file = join(scratch, fixture.replace(/\.nix$/, ".json"));
      writeFileSync(file, text);
      assert.deepEqual(specFromFlags({ specFile: file }), input, "the CLI reads the file the same way");

      const valid = validateSpec(input, LIMITS);
      assert.equal(valid.kernel, raw.kernel);
      assert.equal(valid.cmdline, raw.cmdline, "the worker keeps the Nix cmdline as is");
      assert.equal(valid.memoryBytes, raw.memoryBytes);
      assert.deepEqual(valid.allowedDomains, raw.allowedDomains);
    });
  }

  it("the agent spec names a PVH kernel, initrd and root image inside /nix/store", async () => {
    const input = parseVmSpecJson(await specText("spec-agent.nix"));
    for (const path of [input.kernel, input.initrd, input.image]) assert.ok(isStorePath(path), path);
    assert.match(input.kernel, /\/vmlinux$/);
    assert.match(input.cmdline, /^console=ttyS0 .* init=\/nix\/store\/[0-9a-z]{32}-nixos-system-[^ ]+\/init$/);
    assert.equal(input.memoryBytes, 2048n * BigInt(MIB));
  });

  it("Nix and spec.ts agree on store paths and host names", async () => {
    const samples = {
      storePaths: [
        "/nix/store/l9r346p3d25vs4g5v37f3r3f28js97kb-linux-6.6.52-dev/vmlinux",
        "/nix/store/l9r346p3d25vs4g5v37f3r3f28js97kb-x",
        "/nix/store/l9r346p3d25vs4g5v37f3r3f28js97kb-x/a/b.img",
        "/nix/store/l9r346p3d25vs4g5v37f3r3f28js97k-short",
        "/nix/store/e9r346p3d25vs4g5v37f3r3f28js97kb-has-e",
        "/nix/store/L9R346P3D25VS4G5V37F3R3F28JS97KB-upper",
        "/nix/store/l9r346p3d25vs4g5v37f3r3f28js97kb-x/../../etc",
        "/nix/store/l9r346p3d25vs4g5v37f3r3f28js97kb-x/./a",
        "/nix/store/l9r346p3d25vs4g5v37f3r3f28js97kb-sp ace",
        "/nix/store/l9r346p3d25vs4g5v37f3r3f28js97kb-x/",
        "/gnu/store/l9r346p3d25vs4g5v37f3r3f28js97kb-x",
        "",
      ],
      hostnames: [
        "agent-sandbox",
        "a",
        "A1",
        "a.b.c",
        "agent_sandbox",
        "-a",
        "a-",
        "a..b",
        "",
        `${"a".repeat(63)}`,
        `${"a".repeat(64)}`,
        `${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(61)}`,
        `${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(62)}`,
      ],
    };
    // nix-instantiate applies the function the fixture yields to --argstr samples.
    const fromNix = await evalJson<{ storePaths: boolean[]; hostnames: boolean[] }>(
      `import ${nixString(join(FIXTURES, "predicates.nix"))}`,
      ["--argstr", "samples", JSON.stringify(samples)],
    );
    assert.ok(fromNix.storePaths.includes(true) && fromNix.storePaths.includes(false), "samples on both sides of the rule");
    assert.ok(fromNix.hostnames.includes(true) && fromNix.hostnames.includes(false), "samples on both sides of the rule");
    assert.deepEqual(fromNix.storePaths, samples.storePaths.map(isStorePath), "store paths");
    assert.deepEqual(fromNix.hostnames, samples.hostnames.map(isValidHostname), "host names");
  });

  it("every parameter Nix reserves for the worker is one spec.ts refuses", async () => {
    const reserved = await evalJson<string[]>(`(import ${nixString(FLAKE_VMM_LIB)}).reservedParams`);
    assert.ok(reserved.includes("pcr.ip") && reserved.includes("pcr.hostname"));
    for (const param of reserved) {
      const input = parseVmSpecJson(
        JSON.stringify({ hostname: "h", kernel: "/nix/store/l9r346p3d25vs4g5v37f3r3f28js97kb-k/vmlinux", cmdline: `${param}=1` }),
      );
      assert.throws(
        () => validateSpec(input, LIMITS),
        (err: unknown) => err instanceof WorkerError && err.code === "INVALID_ARGUMENT" && err.message.includes(param),
        param,
      );
    }
  });
});
