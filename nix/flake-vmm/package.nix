# Procurator itself: pcr-worker, pcr-gateway and pcr-worker-test, built from this repository with
# nixpkgs' buildNpmPackage. callPackage it (the flake does: packages.<system>.procurator).
#
# npm dependencies come from package-lock.json through importNpmLock (nixpkgs >= 24.05): each
# tarball is fetched by the lock's own integrity hash, so there is no npmDepsHash to keep in step.
# The lock carries no `resolved` URLs (npm's omit-lockfile-registry-resolved); lib/npm-lock.nix
# adds the registry's, as npm derives them.
{ lib
, buildNpmPackage
, importNpmLock
, nodejs_20
, capnproto
, makeWrapper
  # The repository; the flake's own tree when the flake is evaluated from its git checkout.
, root ? ../..
}:

let
  inherit (import ./lib/package-source.nix) procuratorSource;
  inherit (import ./lib/npm-lock.nix) withRegistryResolved;

  src =
    if builtins.pathExists (root + "/package.json") then procuratorSource root
    else throw "flake-vmm: packages.procurator needs the whole repository around nix/flake-vmm (evaluate the flake from its git checkout, or with ?dir=nix/flake-vmm), not that directory alone";
  # Read from the tree, not from `src`: the same files, without building the filtered copy first.
  packageJson = builtins.fromJSON (builtins.readFile (root + "/package.json"));
  # Where the package lands, as npm installs a package: the worker finds its native addon and the
  # cage helper by walking up from dist/worker/ (worker/native.ts, worker/cage/cage.ts), and reads
  # package.json for its version (worker/main.ts).
  home = "$out/lib/node_modules/${packageJson.name}";
  # One wrapper per entry of package.json's bin, running it with Node 20.
  wrappers = builtins.concatStringsSep "\n" (map
    (name: ''makeWrapper ${nodejs_20}/bin/node "$out/bin/${name}" --add-flags "${home}/${packageJson.bin.${name}}"'')
    (builtins.attrNames packageJson.bin));
in
buildNpmPackage {
  pname = packageJson.name;
  inherit (packageJson) version;
  inherit src;
  nodejs = nodejs_20;

  npmDeps = importNpmLock {
    npmRoot = src;
    package = packageJson;
    packageLock = withRegistryResolved { lock = builtins.fromJSON (builtins.readFile (root + "/package-lock.json")); };
  };
  npmConfigHook = importNpmLock.npmConfigHook;

  # `npm run build`: capnp-es (runs capnp) turns schema/ into schema/gen, tsc writes dist/,
  # scripts/bundle-cli bundles the CLI with esbuild.
  nativeBuildInputs = [ capnproto makeWrapper ];
  # The C helpers, as scripts/setup builds them: the N-API addon against Node's own headers, and
  # the cage every VMM starts through.
  postBuild = ''
    mkdir -p native/build cage/build
    $CC -O2 -Wall -Wextra -Werror -shared -fPIC -DNODE_GYP_MODULE_NAME=pcr_native \
      -I${nodejs_20}/include/node -o native/build/pcr_native.node native/pcr_native.c
    $CC -O2 -Wall -Wextra -Werror -o cage/build/pcr-cage cage/pcr-cage.c
  '';

  # What runs: package.json, dist/, the production node_modules and the two helpers, where the
  # code looks for them; bin/ has a Node 20 wrapper per package.json bin. (postInstall restores the
  # package.json that importNpmLock's hook rewrote.)
  installPhase = ''
    runHook preInstall
    npm prune --omit=dev --no-save
    mkdir -p "${home}/native/build" "${home}/cage/build" "$out/bin"
    cp -r package.json dist node_modules "${home}/"
    install -m 0755 native/build/pcr_native.node "${home}/native/build/pcr_native.node"
    install -m 0755 cage/build/pcr-cage "${home}/cage/build/pcr-cage"
    ${wrappers}
    runHook postInstall
  '';

  passthru = { inherit src; };

  meta = {
    description = packageJson.description;
    mainProgram = "pcr-worker";
    platforms = lib.platforms.linux;
  };
}
