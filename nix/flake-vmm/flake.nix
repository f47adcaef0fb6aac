{
  description = "flake-vmm: NixOS microVM images for Procurator (kernel, initrd, root image and the worker's VM spec)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      # x86_64 only for now: the spec's default kernel is the PVH vmlinux, an x86_64 format.
      systems = [ "x86_64-linux" ];
      forAllSystems = nixpkgs.lib.genAttrs systems;
      pure = import ./lib;
    in
    {
      nixosModules = {
        guest = ./vm-module.nix;
        host = ./host-module.nix;
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
      });
    };
}
