# withRegistryResolved: a package-lock.json (as an attribute set) with a `resolved` URL on every
# package npm fetches from the registry. Builtins only.
#
# Procurator's lock is written with omit-lockfile-registry-resolved (npm then derives each
# tarball's URL from the registry); nixpkgs' importNpmLock fetches only what has `resolved` (and
# fails on a dependency without it), so the flake derives the URL as npm does:
#   node_modules/<…/node_modules/>@scope/name  ->  <registry>/@scope/name/-/name-<version>.tgz
# with the lock's own `integrity` as the hash. Entries that are not registry packages are kept as
# they are: the root (""), links (workspaces), and those that already say where they come from.
let
  # The package's name: after the last "node_modules/" of its key, unless the entry names it (an alias).
  nameOf = key: entry:
    entry.name or (
      let parts = builtins.split "node_modules/" key;
      in builtins.elemAt parts (builtins.length parts - 1)
    );
  # "@scope/name" -> "name"; "name" -> "name".
  baseName = name:
    let parts = builtins.split "/" name;
    in builtins.elemAt parts (builtins.length parts - 1);

  isRegistryPackage = key: entry:
    key != "" && !(entry.link or false) && !(entry ? resolved) && entry ? version && entry ? integrity;
in
{
  withRegistryResolved = { lock, registry ? "https://registry.npmjs.org" }:
    lock // {
      packages = builtins.mapAttrs
        (key: entry:
          if isRegistryPackage key entry then
            let name = nameOf key entry;
            in entry // { resolved = "${registry}/${name}/-/${baseName name}-${entry.version}.tgz"; }
          else entry)
        lock.packages;
    };
}
