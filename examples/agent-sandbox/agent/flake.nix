{
  description = "Example agent sandbox: the project flake's layer plus an agent, built into a Procurator microVM";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";
    # In a real setup these are e.g. github:acme/procurator?dir=nix/flake-vmm and github:acme/project.
    flake-vmm.url = "path:../../../nix/flake-vmm";
    flake-vmm.inputs.nixpkgs.follows = "nixpkgs";
    project.url = "path:../project";
    project.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs = { self, nixpkgs, flake-vmm, project }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};

      agent = pkgs.writeShellApplication {
        name = "sandbox-agent";
        runtimeInputs = [ pkgs.coreutils pkgs.curl pkgs.jq pkgs.gnumake ];
        text = builtins.readFile ./agent.sh;
      };

      # project layer (tools, code, its domains) -> agent layer (agent, its API, size, entrypoint)
      vm = flake-vmm.lib.${system}.mkVmFromDrv {
        drv = agent;
        hostname = "agent-sandbox";
        cpu = 2;
        memoryBytes = 2048 * 1024 * 1024;
        allowedDomains = [ "api.anthropic.com" ];
        # sshAuthorizedKeys = [ "ssh-ed25519 AAAA... you@laptop" ];
        entrypoint = [ "${agent}/bin/sandbox-agent" "/workspace" ];
        powerOffWhenDone = true;
        modules = [ project.nixosModules.sandbox ];
      };
    in
    {
      packages.${system} = {
        inherit agent;
        inherit (vm) vmSpecJson storeImage;
        default = vm.vmSpecJson;
      };

      # `nix eval --json .#vmSpec` prints the same spec as the vmSpecJson file.
      vmSpec = vm.vmSpec;

      nixosConfigurations.agent-sandbox = vm.nixos;
    };
}
