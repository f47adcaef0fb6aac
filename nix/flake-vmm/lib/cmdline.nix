# mkCmdline: the guest kernel command line a NixOS guest needs for direct kernel boot.
# Builtins only. The worker appends pcr.ip/pcr.gw/pcr.dns/pcr.share/pcr.hostname itself
# (docs/guest-contract.md), so those are refused here.
let
  checks = import ./checks.nix;
  show = builtins.toJSON;

  paramProblems = param:
    if !(builtins.isString param) then [ "kernel parameter ${show param} is not a string" ]
    else if param == "" then [ "empty kernel parameter" ]
    else if builtins.match "[^[:space:][:cntrl:]\"]+" param == null then
      [ "kernel parameter ${show param} contains whitespace, quotes or control characters" ]
    else if builtins.elem (checks.paramName param) checks.reservedParams then
      [ "kernel parameter ${checks.paramName param} is set by the worker, not the image" ]
    else if checks.paramName param == "init" then
      [ "kernel parameter init= comes from the init argument" ]
    else [ ];
in
{
  mkCmdline =
    { init                # "${toplevel}/init": stage 2 of the NixOS system
    , params ? [ ]        # usually config.boot.kernelParams
    , console ? "ttyS0"   # added as console=<console> unless params already name a console
    }:
    let
      plainInit = if builtins.isString init then builtins.unsafeDiscardStringContext init else init;
      problems =
        (if checks.isStorePath plainInit then [ ] else [ "init ${show plainInit} is not a path inside /nix/store" ])
        ++ (if builtins.isList params then builtins.concatMap paramProblems params else [ "params must be a list of strings" ])
        ++ (if builtins.isString console && builtins.match "[A-Za-z0-9,]+" console != null then [ ] else [ "console ${show console} is not a device name like ttyS0" ]);
      hasConsole = builtins.any (param: checks.paramName param == "console") params;
      words = (if hasConsole then [ ] else [ "console=${console}" ]) ++ checks.unique params ++ [ "init=${init}" ];
      cmdline = builtins.concatStringsSep " " words;
    in
    checks.throwIfProblems "kernel command line" (problems ++ (if problems == [ ] then checks.cmdlineProblems (builtins.unsafeDiscardStringContext cmdline) else [ ])) cmdline;
}
