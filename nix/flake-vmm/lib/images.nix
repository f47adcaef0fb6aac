# mkVmImage / mkVmFromDrv: NixOS system -> { kernel, initrd, image, cmdline, vmSpec, vmSpecJson }.
# Needs nixpkgs (lib.nixosSystem); the spec and command line come from the pure ./spec.nix and
# ./cmdline.nix through the guest module.
{ nixpkgs, system, guestModule }:

let
  inherit (nixpkgs) lib;
  pure = import ./.;

  mkVmImage =
    { extraPackages ? [ ]        # tools on the guest's PATH
    , entrypoint ? null          # the workload: a command line or an argv list
    , files ? { }                # "/guest/path" = store path, or { source; copy = true; }
    , allowedDomains ? [ ]       # egress allowlist, enforced by the worker
    , sshAuthorizedKeys ? [ ]
    , cpu ? 1
    , memoryBytes ? 512 * pure.mib
    , hostname ? "sandbox"
    , user ? "root"
    , workingDirectory ? "/"
    , environment ? { }
    , powerOffWhenDone ? false
    , kernelFormat ? "vmlinux"   # "vmlinux" (PVH: Cloud Hypervisor and QEMU) or "bzImage"
    , modules ? [ ]              # more NixOS modules, e.g. a project flake's nixosModules.sandbox
    }:
    let
      nixos = lib.nixosSystem {
        modules = [
          guestModule
          {
            nixpkgs.hostPlatform = system;
            environment.systemPackages = extraPackages;
            procurator.guest = {
              inherit entrypoint files allowedDomains sshAuthorizedKeys cpu memoryBytes hostname
                user workingDirectory environment powerOffWhenDone kernelFormat;
            };
          }
        ] ++ modules;
      };
    in
    nixos.config.system.build.procurator // { inherit nixos; };

  # A VM whose workload is one package: it goes on the PATH and its main program is the entrypoint.
  mkVmFromDrv = { drv, ... }@args:
    let
      name = drv.pname or (builtins.parseDrvName drv.name).name;
      rest = builtins.removeAttrs args [ "drv" ];
    in
    mkVmImage (rest // {
      extraPackages = [ drv ] ++ (args.extraPackages or [ ]);
      entrypoint = args.entrypoint or [ (lib.getExe drv) ];
      hostname = args.hostname or (if pure.isHostname name then name else "sandbox");
    });
in
{
  inherit mkVmImage mkVmFromDrv;
}
