# Worker host NixOS module: runs pcr-worker as a systemd service with its VMMs on the PATH,
# the bridge its VMs attach to, IP forwarding and nftables.
#
# Every option becomes a flag of pcr-worker (lib/service-args.nix, which test/nix runs through the
# worker's own parser): a flag the worker does not know stops it at start, where an unknown
# variable would pass unnoticed. Passwords and tokens come from `environmentFile`, never the store.
# The flake's nixosModules.host sets `package` to its packages.<system>.procurator.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.procurator-worker;
  inherit (lib) mkOption mkEnableOption mkIf types;

  # "10.213.0.0/16" -> "10.213.0.1": the bridge (and guests' gateway) takes the subnet's first host.
  subnetParts = builtins.match "([0-9]+)\\.([0-9]+)\\.([0-9]+)\\.([0-9]+)/([0-9]+)" cfg.subnet;
  gatewayAddress =
    let p = subnetParts;
    in "${builtins.elemAt p 0}.${builtins.elemAt p 1}.${builtins.elemAt p 2}.${toString (lib.toInt (builtins.elemAt p 3) + 1)}";
  prefixLength = lib.toInt (builtins.elemAt subnetParts 4);

  serviceArgs = import ./lib/service-args.nix;
  argv = serviceArgs.workerArgs {
    inherit (cfg) socket stateDir runtimeDir backend bridge subnet logLevel cacheUrl trustedPublicKeys uplink resolver;
    qemuBinary = "${cfg.qemuPackage}/bin/qemu-system-x86_64";
    cloudHypervisorBinary = "${cfg.cloudHypervisorPackage}/bin/cloud-hypervisor";
    virtiofsdBinary = "${cfg.virtiofsdPackage}/bin/virtiofsd";
    cage = cfg.cage.enable;
    vmmUidRange = cfg.cage.uidRange;
    pools = map poolEntry cfg.pools;
    fleet = if cfg.fleet.nats == [ ] then null else {
      urls = cfg.fleet.nats;
      inherit (cfg.fleet) hostId labels credsFile user caFile certFile keyFile replicas heartbeatMs;
    };
  };

  # --pool <spec.json>:<hot>[+disk]; the spec is written to the store as the JSON `nix eval --json .#vmSpec` prints.
  poolEntry = pool:
    "${pkgs.writeText "pcr-pool-${pool.name}.json" (builtins.toJSON pool.spec)}:${toString pool.hot}${lib.optionalString pool.disk "+disk"}";
in
{
  options.services.procurator-worker = {
    enable = mkEnableOption "the Procurator worker (pcr-worker), which runs Nix-built sandboxes as microVMs";

    package = mkOption {
      type = types.package;
      description = "The Procurator package; its bin/pcr-worker is started.";
    };

    socket = mkOption {
      type = types.str;
      default = "/run/procurator/worker.sock";
      description = "Unix socket the worker serves Cap'n Proto RPC on.";
    };
    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/procurator";
      description = "VM records, console logs and per-VM directories.";
    };
    runtimeDir = mkOption {
      type = types.str;
      default = "/run/procurator";
      description = "Files that must not outlive the host: the secrets tmpfs lives here.";
    };
    backend = mkOption {
      type = types.enum [ "auto" "cloud-hypervisor" "qemu" ];
      default = "auto";
      description = "VMM backend; auto prefers Cloud Hypervisor when /dev/kvm is usable, else QEMU.";
    };

    cacheUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "s3://procurator-cache?region=eu-west-1";
      description = "Binary cache the worker pulls missing spec store paths from (nix copy --from).";
    };
    trustedPublicKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "procurator-cache-1:AAAA...=" ];
      description = "Public keys whose signatures the worker accepts on paths from cacheUrl.";
    };

    bridge = mkOption {
      type = types.strMatching "[A-Za-z0-9_.-]{1,15}";
      default = "pcrbr0";
      description = "Bridge the VMs' TAP devices join.";
    };
    subnet = mkOption {
      type = types.strMatching "[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+/[0-9]+";
      default = "10.213.0.0/16";
      description = "IPv4 subnet of the VMs; the bridge takes its first address.";
    };
    uplink = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Interface the VMs' allowed traffic leaves through (NAT); the worker picks the default route's when null.";
    };
    resolver = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "DNS server the guests use and the worker resolves allowedDomains with.";
    };
    cage = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Each VMM in its own cage (uid, namespaces, minimal root, seccomp, cgroup; docs/cage.md). Off only for debugging.";
      };
      uidRange = mkOption {
        type = types.strMatching "[0-9]+-[0-9]+";
        default = "40000-49999";
        description = "uids (and gids) given to caged VMMs, one per VM; no user of the host should have them.";
      };
    };
    logLevel = mkOption {
      type = types.enum [ "trace" "debug" "info" "warn" "error" "fatal" "silent" ];
      default = "info";
    };
    pools = mkOption {
      description = "Warm pools: VMs of a machine spec kept booted and paused (hot), and optionally saved to disk.";
      default = [ ];
      example = lib.literalExpression ''[ { name = "agent"; spec = self.vmSpec; hot = 4; disk = true; } ]'';
      type = types.listOf (types.submodule {
        options = {
          name = mkOption { type = types.strMatching "[A-Za-z0-9_.-]+"; description = "Names the pool's spec file (and the pool)."; };
          spec = mkOption { type = types.attrs; description = "A vmSpec, as the flake's vmSpec output gives it."; };
          hot = mkOption { type = types.ints.between 0 64; default = 2; description = "VMs kept booted and paused in memory."; };
          disk = mkOption { type = types.bool; default = false; description = "Also keep the machine saved on disk: claims past the hot VMs restore it."; };
        };
      });
    };
    extraEnvironment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { PCR_MAX_VMS = "128"; };
      description = "More PCR_* variables (see worker/config.ts) for settings without an option here; the options above are flags, which win over variables.";
    };
    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/keys/pcr-worker.env";
      description = "A file outside the store with secret PCR_* variables, e.g. PCR_NATS_PASS or PCR_NATS_TOKEN (systemd EnvironmentFile=).";
    };

    fleet = {
      nats = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "nats://nats-a:4222" "nats://nats-b:4222" "nats://nats-c:4222" ];
        description = "Join a fleet (docs/fleet.md): the NATS servers (--nats). Empty: no fleet.";
      };
      hostId = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "This host's id in the fleet (--host-id; 1-64 of A-Z a-z 0-9 _ -); null: the host name's first label.";
      };
      labels = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = { zone = "eu"; disk = "ssd"; };
        description = "Labels for placement constraints (--label key=value).";
      };
      credsFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "NATS credentials file, JWT and nkey seed (--nats-creds); a path outside the store.";
      };
      user = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "NATS user (--nats-user); its password is PCR_NATS_PASS in environmentFile.";
      };
      caFile = mkOption { type = types.nullOr types.str; default = null; description = "PEM CA the NATS servers' certificates chain to (--nats-ca)."; };
      certFile = mkOption { type = types.nullOr types.str; default = null; description = "PEM client certificate for NATS (--nats-cert, with keyFile)."; };
      keyFile = mkOption { type = types.nullOr types.str; default = null; description = "PEM client key for NATS (--nats-key); outside the store."; };
      replicas = mkOption {
        type = types.enum [ 1 3 ];
        default = 1;
        description = "Replicas of the fleet's KV buckets and stream when this worker creates them (--nats-replicas): 3 on a 3-node cluster.";
      };
      heartbeatMs = mkOption {
        type = types.ints.between 100 60000;
        default = 2000;
        description = "How often the host heartbeats into the fleet registry (--heartbeat-ms).";
      };
    };

    qemuPackage = mkOption { type = types.package; default = pkgs.qemu_kvm; defaultText = lib.literalExpression "pkgs.qemu_kvm"; };
    cloudHypervisorPackage = mkOption { type = types.package; default = pkgs.cloud-hypervisor; defaultText = lib.literalExpression "pkgs.cloud-hypervisor"; };
    virtiofsdPackage = mkOption { type = types.package; default = pkgs.virtiofsd; defaultText = lib.literalExpression "pkgs.virtiofsd"; };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = subnetParts != null && prefixLength >= 8 && prefixLength <= 30;
        message = "services.procurator-worker.subnet must be an IPv4 network with a prefix of 8..30";
      }
      {
        assertion = cfg.fleet.user == null || cfg.environmentFile != null;
        message = "services.procurator-worker.fleet.user needs environmentFile with PCR_NATS_PASS";
      }
    ] ++ map (message: { assertion = false; inherit message; })
      (serviceArgs.workerFleetProblems (if cfg.fleet.nats == [ ] && cfg.fleet.labels == { } then null else {
        urls = cfg.fleet.nats;
        inherit (cfg.fleet) hostId labels credsFile user caFile certFile keyFile replicas heartbeatMs;
      }));

    boot.kernelModules = [ "kvm-intel" "kvm-amd" "tun" "vhost_net" ];
    # VM traffic is routed from the bridge to the uplink (and filtered in the forward hook).
    boot.kernel.sysctl."net.ipv4.ip_forward" = 1;

    networking.nftables.enable = true;
    # Reloading NixOS's rules must not flush the worker's table (VM egress would go unfiltered).
    networking.nftables.flushRuleset = false;
    # The worker owns its own nftables table; keep the NixOS firewall from dropping forwarded VM traffic.
    networking.firewall.trustedInterfaces = [ cfg.bridge ];

    # The bridge exists before the worker starts (the worker also creates it idempotently).
    networking.bridges.${cfg.bridge}.interfaces = [ ];
    networking.interfaces.${cfg.bridge}.ipv4.addresses = [
      { address = gatewayAddress; inherit prefixLength; }
    ];

    # The worker pulls spec paths with `nix copy --from`; root talks to the store directly.
    nix.settings = mkIf (cfg.cacheUrl != null) {
      extra-substituters = [ cfg.cacheUrl ];
      extra-trusted-public-keys = cfg.trustedPublicKeys;
    };

    systemd.tmpfiles.rules = [
      "d ${cfg.stateDir} 0700 root root -"
      "d ${cfg.runtimeDir} 0700 root root -"
    ];

    systemd.services.pcr-worker = {
      description = "Procurator worker: Nix-declared sandboxes as microVMs";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" "nftables.service" "nix-daemon.service" ];
      wants = [ "network-online.target" ];
      path = [
        cfg.qemuPackage
        cfg.cloudHypervisorPackage
        cfg.virtiofsdPackage
        config.nix.package
        pkgs.nftables
        pkgs.iproute2
        pkgs.util-linux
        pkgs.coreutils
      ];
      environment = cfg.extraEnvironment;
      serviceConfig = {
        ExecStart = serviceArgs.execLine ([ "${cfg.package}/bin/pcr-worker" ] ++ argv);
        # VMs are separate processes: let them survive a worker restart (the worker re-adopts them).
        KillMode = "process";
        Restart = "on-failure";
        RestartSec = 2;
        # Root: it creates TAPs, nftables chains, tmpfs mounts and opens /dev/kvm.
        User = "root";
        LimitNOFILE = 65536;
        UMask = "0077";
        # Exit status 2 is a configuration error: restarting cannot fix it.
        RestartPreventExitStatus = 2;
        # As deploy/systemd/pcr-worker.service, and for its reasons: seccomp and capabilities only,
        # nothing that gives the unit a mount namespace of its own (adopted VMs use the host's mounts).
        NoNewPrivileges = true;
        LockPersonality = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "~@clock @cpu-emulation @debug @module @obsolete @raw-io @reboot @swap" ];
        SystemCallErrorNumber = "EPERM";
      } // lib.optionalAttrs (cfg.environmentFile != null) {
        EnvironmentFile = cfg.environmentFile;
      };
    };
  };
}
