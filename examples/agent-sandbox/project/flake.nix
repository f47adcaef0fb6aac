{
  description = "Example project: the code and the tools an agent works on inside a Procurator sandbox";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};

      # What building and testing this project takes. Developers get it from the dev shell,
      # the sandbox gets the same store paths on its PATH.
      tools = [ pkgs.python3 pkgs.gnumake pkgs.git pkgs.ripgrep ];
    in
    {
      devShells.${system}.default = pkgs.mkShell { packages = tools; };

      packages.${system}.source = pkgs.runCommand "project-source" { } ''cp -r ${./src} $out'';

      # The project's layer of the sandbox, for an agent flake to stack on:
      # tools on the PATH, the code as a writable /workspace, and the domains the tools need.
      nixosModules.sandbox = { ... }: {
        environment.systemPackages = tools;
        procurator.guest.files."/workspace" = { source = self.packages.${system}.source; copy = true; };
        procurator.guest.allowedDomains = [ "pypi.org" "files.pythonhosted.org" ];
      };
    };
}
