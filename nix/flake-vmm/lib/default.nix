# The pure half of flake-vmm: builtins only, evaluable without nixpkgs (test/nix evaluates it).
let
  checks = import ./checks.nix;
in
{
  inherit (import ./spec.nix) mkVmSpec;
  inherit (import ./cmdline.nix) mkCmdline;
  inherit (checks) isStorePath isHostname isDomain isIPv4 isIPv4Cidr isEgressTarget reservedParams mib;
  # The exact text of a vmSpecJson file.
  specToJSON = spec: builtins.toJSON spec;
}
