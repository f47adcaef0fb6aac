# procuratorSource: the files `npm run build` and the C helpers need, from the repository at
# `root`; nothing else (node_modules, dist, build outputs, tests, docs, the Nix files), so the
# package's hash changes only with what goes into it. Builtins only.
let
  # Top-level files and directories taken whole (minus the generated and built paths below).
  files = [ "package.json" "package-lock.json" "tsconfig.json" ];
  dirs = [ "schema" "worker" "cli" "cage" "native" ];
  # What the build writes into the tree; present in a developer's checkout, never an input.
  generated = [ "schema/gen" "cage/build" "native/build" ];
  scripts = [ "scripts" "scripts/bundle-cli" ];

  firstComponent = rel: builtins.head (builtins.split "/" rel);
  under = prefix: rel: rel == prefix || builtins.substring 0 (builtins.stringLength prefix + 1) rel == "${prefix}/";

  wanted = rel:
    builtins.elem rel files
    || builtins.elem rel scripts
    || (builtins.elem (firstComponent rel) dirs && !(builtins.any (prefix: under prefix rel) generated));
  # builtins.path's filter for the repository at `root`: is this file or directory taken?
  filterFor = root: path: _type:
    let prefix = "${toString root}/";
    in wanted (builtins.substring (builtins.stringLength prefix) (-1) (toString path));
in
{
  inherit filterFor;
  procuratorSource = root: builtins.path {
    path = root;
    name = "procurator-source";
    filter = filterFor root;
  };
}
