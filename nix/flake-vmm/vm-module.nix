# Guest NixOS module for Procurator microVMs.
#
# Boot: the worker boots config.system.build.procurator.kernel with the NixOS initrd; the root
# is a tmpfs and /dev/vda (read-only ext4, store paths at its top level) is mounted at /nix/store.
# At boot, oneshot services read the pcr.* parameters the worker appends to the kernel command
# line (docs/guest-contract.md): address, route, DNS and host name; the secrets share. Then the
# console says "pcr-guest: ready" and the workload entrypoint starts. pcr-agent (agent.nix, the
# worker's exec/files/processes door) starts earlier still, on the virtio-serial port pcr.agent.
#
# Outputs: config.system.build.procurator = { kernel, initrd, image, cmdline, vmSpec, vmSpecJson }.
{ config, lib, pkgs, modulesPath, ... }:

let
  cfg = config.procurator.guest;
  inherit (lib) mkOption mkDefault mkIf types;
  pure = import ./lib;

  setup = pkgs.writeShellApplication {
    name = "pcr-guest-setup";
    runtimeInputs = [ pkgs.coreutils pkgs.iproute2 pkgs.util-linux pkgs.openresolv ];
    text = builtins.readFile ./guest/pcr-guest-setup.sh;
  };

  fileType = types.coercedTo types.path (source: { inherit source; }) (types.submodule {
    options = {
      source = mkOption {
        type = types.path;
        description = "Store path (a path literal or a derivation) to place at this location.";
      };
      copy = mkOption {
        type = types.bool;
        default = false;
        description = "Copy into the (tmpfs) root so the workload can write to it, instead of a read-only symlink.";
      };
    };
  });

  kernelPackage = config.boot.kernelPackages.kernel;
  # The PVH ELF lives in the kernel's dev output, next to headers and build scripts that would
  # bloat the spec's closure; copy it out, without debug info (the ELF notes PVH needs stay).
  vmlinux = pkgs.runCommand "vmlinux-${kernelPackage.modDirVersion}" { } ''
    mkdir -p $out
    ${pkgs.binutils-unwrapped}/bin/strip --strip-debug -o $out/vmlinux ${kernelPackage.dev}/vmlinux
  '';
  kernelFile = {
    # PVH ELF: Cloud Hypervisor boots only this on x86_64; QEMU boots it too.
    vmlinux = "${vmlinux}/vmlinux";
    bzImage = "${kernelPackage}/${config.system.boot.loader.kernelFile}";
  }.${cfg.kernelFormat};

  # A raw ext4 image holding just the closure of the system, store paths at its top level.
  storeImage = import (modulesPath + "/../lib/make-disk-image.nix") {
    inherit config lib pkgs;
    name = "${cfg.hostname}-store-image";
    format = "raw";
    partitionTableType = "none";
    onlyNixStore = true;
    installBootLoader = false;
    copyChannel = false;
    diskSize = "auto";
    additionalSpace = "64M";
    fsType = "ext4";
    label = "nix-store";
  };

  cmdline = pure.mkCmdline {
    init = "${config.system.build.toplevel}/init";
    params = config.boot.kernelParams;
  };

  vmSpec = pure.mkVmSpec {
    inherit (cfg) hostname cpu memoryBytes allowedDomains;
    inherit cmdline;
    kernel = kernelFile;
    initrd = "${config.system.build.initialRamdisk}/${config.system.boot.loader.initrdFile}";
    image = "${storeImage}/nixos.img";
  };

  agentPackage = pkgs.callPackage ./agent.nix { };

  entrypointCommand =
    if builtins.isList cfg.entrypoint then lib.escapeShellArgs cfg.entrypoint else cfg.entrypoint;
in
{
  options.procurator.guest = {
    hostname = mkOption {
      type = types.str;
      default = "sandbox";
      description = "Host name in the spec (RFC 1123). The worker passes it back as pcr.hostname.";
    };
    cpu = mkOption { type = types.ints.positive; default = 1; description = "vCPUs."; };
    memoryBytes = mkOption {
      type = types.int;
      default = 512 * 1024 * 1024;
      description = "Guest memory in bytes; a multiple of 1 MiB.";
    };
    allowedDomains = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Egress allowlist: the only domains the VM may reach (enforced by the worker's nftables).";
    };
    sshAuthorizedKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Public keys allowed to log in as root over SSH. SSH is off when empty.";
    };
    entrypoint = mkOption {
      type = types.nullOr (types.either types.str (types.listOf types.str));
      default = null;
      example = [ "/run/current-system/sw/bin/agent" "--workspace" "/workspace" ];
      description = "The workload: a shell command line, or an argv list. Runs once per boot, after network and secrets.";
    };
    user = mkOption {
      type = types.str;
      default = "root";
      description = ''
        User running the entrypoint. /run/secrets holds files owned by root with mode 0400,
        so a non-root user cannot read them unless the entrypoint copies what it needs first.
      '';
    };
    workingDirectory = mkOption { type = types.str; default = "/"; };
    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      description = "Environment of the entrypoint (never secrets: those come from /run/secrets).";
    };
    powerOffWhenDone = mkOption {
      type = types.bool;
      default = false;
      description = "Power the VM off when the entrypoint exits, so the worker reports it stopped.";
    };
    files = mkOption {
      type = types.attrsOf fileType;
      default = { };
      example = lib.literalExpression ''{ "/workspace" = { source = ./.; copy = true; }; "/etc/agent.toml" = ./agent.toml; }'';
      description = "Absolute guest path -> store path, symlinked (or copied) at boot.";
    };
    agent.enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Run pcr-agent, the worker's door into the guest (exec, files, processes, in-guest faults),
        on the virtio-serial port pcr.agent. It starts before sysinit finishes and restarts if it dies.
      '';
    };
    kernelFormat = mkOption {
      type = types.enum [ "vmlinux" "bzImage" ];
      default = "vmlinux";
      description = "Kernel file in the spec: vmlinux (PVH, Cloud Hypervisor and QEMU) or bzImage (QEMU).";
    };
  };

  config = {
    assertions = [
      {
        # tmpfiles lines are whitespace-separated, and /nix/store is the read-only image.
        assertion = builtins.all
          (path: builtins.match "/[^[:space:]]*" path != null && !(lib.hasPrefix "/nix/" path))
          (builtins.attrNames cfg.files);
        message = "procurator.guest.files: every key must be an absolute path without spaces, outside /nix";
      }
    ];

    system.build.procurator = {
      kernel = kernelFile;
      initrd = vmSpec.initrd;
      image = vmSpec.image;
      inherit cmdline vmSpec storeImage;
      # The file `pcr-worker-test create-vm --spec-file` reads. Its text names kernel, initrd and
      # image, so its closure is the whole VM: `nix copy` of it pushes everything the worker needs.
      vmSpecJson = pkgs.writeText "${cfg.hostname}-vm-spec.json" (pure.specToJSON vmSpec);
    };

    # NixOS host names are one label; the worker's pcr.hostname sets the full name at boot.
    networking.hostName = mkDefault (builtins.head (lib.splitString "." cfg.hostname));

    # Direct kernel boot: no boot loader, no root partition.
    boot.loader.grub.enable = false;
    boot.initrd.availableKernelModules = [
      "virtio_pci" "virtio_mmio" "virtio_blk" "virtio_net" "virtio_console" "virtio_rng" "ext4"
      "9p" "9pnet_virtio" "virtiofs"
    ];
    boot.initrd.kernelModules = [ "virtio_pci" "virtio_mmio" "virtio_blk" "ext4" ];
    boot.kernelModules = [ "9p" "9pnet_virtio" "virtiofs" ] ++ lib.optional cfg.agent.enable "virtio_console";
    # console=ttyS0: the worker serves the serial console through `read` (and a getty runs there).
    boot.kernelParams = [ "console=ttyS0" "panic=-1" ];
    boot.consoleLogLevel = mkDefault 4;

    fileSystems."/" = {
      device = "tmpfs";
      fsType = "tmpfs";
      options = [ "mode=0755" "size=50%" ];
    };
    fileSystems."/nix/store" = {
      device = "/dev/vda";
      fsType = "ext4";
      # The worker attaches the image read-only; noload skips journal replay, which would write.
      options = [ "ro" "noload" ];
      neededForBoot = true;
    };
    # Slim, without profiles/minimal.nix: its noXlibs (24.05) rebuilds much of nixpkgs from source.
    nix.enable = mkDefault false;
    documentation.enable = mkDefault false;
    boot.enableContainers = mkDefault false;

    # Networking comes from the kernel command line, not DHCP.
    networking.useDHCP = false;
    networking.dhcpcd.enable = false;
    networking.usePredictableInterfaceNames = false; # the first virtio-net NIC is eth0
    networking.firewall.enable = mkDefault false; # egress is filtered by the worker, on the host

    systemd.services.pcr-network = {
      description = "Procurator: network from pcr.ip/pcr.gw/pcr.dns";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network.target" ];
      after = [ "network-pre.target" "systemd-udevd.service" ];
      before = [ "network.target" "network-online.target" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${lib.getExe setup} network";
      };
    };
    systemd.targets.network-online.wants = [ "pcr-network.service" ];

    systemd.services.pcr-secrets = {
      description = "Procurator: mount the secrets share at /run/secrets";
      wantedBy = [ "multi-user.target" ];
      after = [ "systemd-modules-load.service" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${lib.getExe setup} secrets";
      };
    };

    systemd.services.pcr-ready = {
      description = "Procurator: tell the worker the guest is up";
      wantedBy = [ "multi-user.target" ];
      requires = [ "pcr-network.service" "pcr-secrets.service" ];
      after = [ "pcr-network.service" "pcr-secrets.service" "pcr-files.service" ]
        ++ lib.optional (cfg.sshAuthorizedKeys != [ ]) "sshd.service";
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${lib.getExe setup} ready";
      };
    };

    # Files: copies need a writable tree (C = copy if absent; the root is a fresh tmpfs each boot).
    systemd.tmpfiles.rules = lib.mapAttrsToList
      (path: file: "${if file.copy then "C" else "L+"} ${path} - - - - ${file.source}")
      cfg.files;
    systemd.services.pcr-files = mkIf (lib.any (file: file.copy) (builtins.attrValues cfg.files)) {
      description = "Procurator: make copied files writable for the entrypoint user";
      wantedBy = [ "multi-user.target" ];
      after = [ "systemd-tmpfiles-setup.service" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = map
          (path: "${pkgs.coreutils}/bin/chmod -R u+w ${lib.escapeShellArg path}")
          (builtins.attrNames (lib.filterAttrs (_: file: file.copy) cfg.files))
        ++ lib.optional (cfg.user != "root") (
          "${pkgs.coreutils}/bin/chown -R ${cfg.user} "
          + lib.escapeShellArgs (builtins.attrNames (lib.filterAttrs (_: file: file.copy) cfg.files)));
      };
    };

    services.openssh = mkIf (cfg.sshAuthorizedKeys != [ ]) {
      enable = true;
      settings.PasswordAuthentication = false;
      settings.KbdInteractiveAuthentication = false;
      settings.PermitRootLogin = "prohibit-password";
    };
    users.users.root.openssh.authorizedKeys.keys = cfg.sshAuthorizedKeys;

    users.users.${cfg.user} = mkIf (cfg.user != "root") {
      isNormalUser = true;
      openssh.authorizedKeys.keys = cfg.sshAuthorizedKeys;
    };

    systemd.services.pcr-entrypoint = mkIf (cfg.entrypoint != null) {
      description = "Procurator: the sandbox workload";
      wantedBy = [ "multi-user.target" ];
      requires = [ "pcr-ready.service" ];
      after = [ "pcr-ready.service" "network-online.target" ];
      path = [ "/run/current-system/sw" ];
      inherit (cfg) environment;
      script = "exec ${entrypointCommand}";
      serviceConfig = {
        Type = "exec";
        User = cfg.user;
        WorkingDirectory = cfg.workingDirectory;
        # The workload's output goes to the serial console, where the worker's `read` sees it.
        StandardOutput = "journal+console";
        StandardError = "journal+console";
        # "+": as root whatever User is, since it writes to /dev/console.
        ExecStopPost = "+${lib.getExe setup} exited";
      };
      unitConfig = mkIf cfg.powerOffWhenDone {
        SuccessAction = "poweroff";
        FailureAction = "poweroff";
      };
    };

    # As early as the guest allows: right after the kernel modules load, before sysinit ends, so
    # the worker's waitReady is not held up by the rest of the boot.
    systemd.services.pcr-agent = mkIf cfg.agent.enable {
      description = "Procurator: guest agent (virtio-serial port pcr.agent)";
      wantedBy = [ "sysinit.target" ];
      after = [ "systemd-modules-load.service" ];
      unitConfig.DefaultDependencies = false;
      serviceConfig = {
        ExecStart = "${agentPackage}/bin/pcr-agent";
        Restart = "always";
        RestartSec = 1;
      };
    };
    environment.systemPackages = mkIf cfg.agent.enable [ agentPackage ];

    system.stateVersion = mkDefault "24.05";
  };
}
