{
  description = "flake-vmm: NixOS microVM images for Procurator (kernel, initrd, root image and the worker's VM spec)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      # x86_64 only for now: the spec's default kernel is the PVH vmlinux, an x86_64 format.
      systems = [ "x86_64-linux" ];
      forAllSystems = nixpkgs.lib.genAttrs systems;
      pure = import ./lib;
      # A module with `package` defaulting to this flake's Procurator for the host's system.
      withPackage = service: module: { lib, pkgs, ... }: {
        imports = [ module ];
        config.services.${service}.package = lib.mkDefault
          (self.packages.${pkgs.stdenv.hostPlatform.system}.procurator
            or (throw "flake-vmm: no Procurator package for ${pkgs.stdenv.hostPlatform.system}; set services.${service}.package"));
      };
    in
    {
      nixosModules = {
        guest = ./vm-module.nix;
        host = withPackage "procurator-worker" ./host-module.nix;
        gateway = withPackage "procurator-gateway" ./gateway-module.nix;
        default = self.nixosModules.guest;
      };

      # lib.<system>.mkVmImage and lib.<system>.mkVmFromDrv build images (they need nixpkgs);
      # lib.mkVmSpec, lib.mkCmdline and lib.specToJSON are pure and system-independent.
      lib = forAllSystems
        (system: import ./lib/images.nix {
          inherit nixpkgs system;
          guestModule = self.nixosModules.guest;
        })
      // { inherit (pure) mkVmSpec mkCmdline specToJSON isStorePath isHostname; };

      # `nix flake check` builds a minimal VM end to end. No KVM needed on the builder: the
      # store image is made with LKL, no VM runs during the build.
      checks = forAllSystems (system:
        let vm = self.lib.${system}.mkVmImage { hostname = "flake-vmm-check"; entrypoint = "echo hello from flake-vmm"; };
        in { minimal-vm-spec = vm.vmSpecJson; });

      packages = forAllSystems (system: {
        minimal-vm-spec = self.checks.${system}.minimal-vm-spec;
        # The guest agent the module runs; for images built some other way.
        pcr-agent = nixpkgs.legacyPackages.${system}.callPackage ./agent.nix { };
        # pcr-worker, pcr-gateway and pcr-worker-test (package.nix). Its source is the repository
        # around this flake: evaluate the flake from the git checkout (`nix build ./nix/flake-vmm#procurator`
        # or `?dir=nix/flake-vmm`), not as a `path:` of this directory alone.
        procurator = nixpkgs.legacyPackages.${system}.callPackage ./package.nix { };
      });
    };
}
