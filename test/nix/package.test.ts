// nix/flake-vmm/package.nix without nixpkgs: called with stand-ins for buildNpmPackage and
// importNpmLock that hand back their arguments, so the test sees what the derivation would be
// built from: the filtered source (the real builtins.path filter, walked over this checkout), the
// npm lock importNpmLock gets (every registry package with a URL), the wrappers it installs
// (exactly package.json's bin) and where it puts the C helpers (where the worker looks for them).
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { describe, it } from "node:test";
import { REPO_ROOT } from "../helpers/repo.js";
import { evalJson, nixString, skipWithoutNix } from "./nix.js";

const FLAKE = join(REPO_ROOT, "nix", "flake-vmm");
const packageJson = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as { name: string; bin: Record<string, string> };

interface Recorded {
  pname: string;
  version: string;
  nodejs: string;
  srcName: string;
  npmRoot: string;
  npmConfigHook: string;
  lockPackages: Record<string, { resolved?: string; integrity?: string; link?: boolean }>;
  lockedPackageJsonName: string;
  nativeBuildInputs: string[];
  postBuild: string;
  installPhase: string;
}

const FAKE_NODE = "/nix/store/00000000000000000000000000000000-nodejs-20.12.2";

const recordExpression = `
  let
    fake = name: { outPath = "/nix/store/00000000000000000000000000000000-\${name}"; inherit name; };
    importNpmLock = { __functor = _: args: { importNpmLockArgs = args; }; npmConfigHook = fake "import-npm-lock-config-hook"; };
    drv = import ${nixString(join(FLAKE, "package.nix"))} {
      lib = { platforms.linux = [ "x86_64-linux" ]; };
      buildNpmPackage = args: args;
      inherit importNpmLock;
      nodejs_20 = fake "nodejs-20.12.2";
      capnproto = fake "capnproto";
      makeWrapper = fake "make-wrapper";
    };
    lockArgs = drv.npmDeps.importNpmLockArgs;
  in {
    inherit (drv) pname version postBuild installPhase;
    nodejs = drv.nodejs.name;
    srcName = builtins.substring 44 (-1) drv.src;
    npmRoot = lockArgs.npmRoot;
    npmConfigHook = drv.npmConfigHook.name;
    lockPackages = lockArgs.packageLock.packages;
    lockedPackageJsonName = lockArgs.package.name;
    nativeBuildInputs = map (input: input.name) drv.nativeBuildInputs;
  }`;

describe("nix: packages.<system>.procurator (package.nix)", { skip: skipWithoutNix }, () => {
  it("is a buildNpmPackage of package.json's name and version, with importNpmLock's config hook and Node 20", async () => {
    const recorded = await evalJson<Recorded>(recordExpression);
    assert.equal(recorded.pname, packageJson.name);
    assert.equal(recorded.version, (packageJson as unknown as { version: string }).version);
    assert.equal(recorded.nodejs, "nodejs-20.12.2");
    assert.equal(recorded.npmConfigHook, "import-npm-lock-config-hook");
    assert.equal(recorded.srcName, "procurator-source");
    assert.equal(recorded.lockedPackageJsonName, packageJson.name);
    assert.ok(recorded.nativeBuildInputs.includes("capnproto"), "npm run gen runs capnp");
  });

  it("gives importNpmLock a URL and an integrity hash for every registry package of package-lock.json", async () => {
    const recorded = await evalJson<Recorded>(recordExpression);
    const lock = JSON.parse(readFileSync(join(REPO_ROOT, "package-lock.json"), "utf8")) as { packages: Record<string, object> };
    assert.deepEqual(Object.keys(recorded.lockPackages).sort(), Object.keys(lock.packages).sort());
    for (const [key, entry] of Object.entries(recorded.lockPackages)) {
      if (key === "" || entry.link) continue;
      const name = key.slice(key.lastIndexOf("node_modules/") + "node_modules/".length);
      const base = name.slice(name.lastIndexOf("/") + 1);
      assert.ok(entry.integrity, `${key} has no integrity hash`);
      assert.match(entry.resolved ?? "", new RegExp(`^https://registry\\.npmjs\\.org/${name}/-/${base}-[^/]+\\.tgz$`), key);
    }
  });

  it("installs one Node 20 wrapper per package.json bin, each running a file the build makes", async () => {
    const recorded = await evalJson<Recorded>(recordExpression);
    const wrappers = [
      ...recorded.installPhase.matchAll(
        /makeWrapper (\S+) "\$out\/bin\/([^"]+)" --add-flags "\$out\/lib\/node_modules\/([^/]+)\/([^"]+)"/g,
      ),
    ];
    assert.deepEqual(
      Object.fromEntries(wrappers.map((match) => [match[2], match[4]])),
      packageJson.bin,
      "the wrappers are package.json's bin",
    );
    for (const match of wrappers) {
      assert.equal(match[1], `${FAKE_NODE}/bin/node`);
      assert.equal(match[3], packageJson.name);
      // `npm run build` wrote it here too (the same build the package runs).
      assert.ok(existsSync(join(REPO_ROOT, match[4]!)), `${match[4]} is not made by npm run build`);
    }
  });

  it("builds the C helpers as scripts/setup does and installs them where the worker looks for them", async () => {
    const recorded = await evalJson<Recorded>(recordExpression);
    const setup = readFileSync(join(REPO_ROOT, "scripts", "setup"), "utf8");
    // The compiler flags before the include directory (the addon) and before the output (the cage).
    const addonFlags = (script: string) => /(-O2 -Wall[^\n\\]*?) *\\?\n?\s*-I/.exec(script)?.[1];
    const cageFlags = (script: string) => /(-O2[^\n]*?) -o cage\/build\/pcr-cage/.exec(script)?.[1];
    assert.ok(addonFlags(setup) && cageFlags(setup), "scripts/setup still builds both helpers");
    assert.equal(addonFlags(recorded.postBuild), addonFlags(setup), "the addon is built with scripts/setup's flags");
    assert.equal(cageFlags(recorded.postBuild), cageFlags(setup), "the cage helper is built with scripts/setup's flags");
    assert.match(recorded.postBuild, /-o native\/build\/pcr_native\.node native\/pcr_native\.c/);
    assert.match(recorded.postBuild, /-o cage\/build\/pcr-cage cage\/pcr-cage\.c/);
    assert.match(recorded.postBuild, new RegExp(`-I${FAKE_NODE}/include/node`), "the addon is built against the wrapped Node's headers");
    const home = `$out/lib/node_modules/${packageJson.name}`;
    // worker/native.ts and worker/cage/cage.ts walk up at most 4 directories from dist/worker/... .
    for (const [code, helper] of [
      ["dist/worker/native.js", "native/build/pcr_native.node"],
      ["dist/worker/cage/cage.js", "cage/build/pcr-cage"],
    ] as const) {
      assert.ok(recorded.installPhase.includes(`"${home}/${helper}"`), `${helper} is not installed in ${home}`);
      let dir = dirname(join(home, code));
      let found = false;
      for (let up = 0; up < 4 && !found; up++, dir = dirname(dir)) found = dir === home;
      assert.ok(found, `${code} does not find ${home}/${helper}`);
    }
    assert.match(recorded.installPhase, /cp -r package\.json dist node_modules /, "package.json (the version), dist and node_modules");
    assert.match(recorded.installPhase, /npm prune --omit=dev/);
    assert.match(recorded.installPhase, /runHook postInstall/, "importNpmLock's hook restores the original package.json");
  });

  it("takes the sources the build needs and nothing the build writes or does not read", async () => {
    // builtins.path's filter walked as builtins.path walks (a directory refused is not entered);
    // --eval is read-only, so the copy itself is not made.
    const files = await evalJson<string[]>(`
      let
        root = ${nixString(REPO_ROOT)};
        filter = (import ${nixString(join(FLAKE, "lib", "package-source.nix"))}).filterFor root;
        walk = dir: builtins.concatLists (builtins.attrValues (builtins.mapAttrs
          (name: type:
            let path = "\${dir}/\${name}"; in
            if !(filter path type) then [ ]
            else if type == "directory" then walk path
            else [ (builtins.substring (builtins.stringLength root + 1) (-1) path) ])
          (builtins.readDir dir)));
      in walk root`);
    const top = new Set(files.map((file) => file.split("/")[0]));
    assert.deepEqual([...top].sort(), [
      "cage",
      "cli",
      "native",
      "package-lock.json",
      "package.json",
      "schema",
      "scripts",
      "tsconfig.json",
      "worker",
    ]);
    for (const needed of [
      "schema/worker.capnp",
      "schema/common.capnp",
      "worker/main.ts",
      "worker/fleet/gateway-main.ts",
      "cli/main.ts",
      "cage/pcr-cage.c",
      "native/pcr_native.c",
      "scripts/bundle-cli",
    ]) {
      assert.ok(files.includes(needed), `${needed} is missing from the source`);
    }
    for (const file of files) {
      assert.doesNotMatch(file, /^(schema\/gen|cage\/build|native\/build|node_modules|dist)(\/|$)/, `${file} is a build output`);
    }
    assert.deepEqual(
      files.filter((file) => file.startsWith("scripts/")),
      ["scripts/bundle-cli"],
    );
  });
});
