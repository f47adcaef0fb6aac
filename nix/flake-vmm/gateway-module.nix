# Fleet gateway NixOS module: runs pcr-gateway (docs/fleet.md), the one Worker interface in front
# of a fleet's workers, as an unprivileged dynamic user with strict systemd hardening (it needs no
# privilege: NATS, a unix socket, optionally TCP with mutual TLS).
#
# Options mirror worker/fleet/gateway-config.ts; each becomes a flag (lib/service-args.nix, which
# test/nix runs through the gateway's own parser). Files it reads (TLS, NATS credentials) are handed
# over with LoadCredential=, since the dynamic user cannot read root's files; a NATS password or
# token comes from `environmentFile` (PCR_NATS_PASS, PCR_NATS_TOKEN). The flake's
# nixosModules.gateway sets `package` to its packages.<system>.procurator.
{ config, lib, ... }:

let
  cfg = config.services.procurator-gateway;
  inherit (lib) mkOption mkEnableOption mkIf types;
  serviceArgs = import ./lib/service-args.nix;
  unitName = "pcr-gateway.service";

  gateway = serviceArgs.gatewayArgs {
    credentialsDir = "/run/credentials/${unitName}";
    cfg = {
      inherit (cfg) socket tcp logLevel callTimeoutMs lostAfterMs tls;
      nats = {
        urls = cfg.nats.urls;
        inherit (cfg.nats) credsFile user caFile certFile keyFile replicas;
      };
    };
  };
  fileOption = description: mkOption { type = types.nullOr types.str; default = null; inherit description; };
in
{
  options.services.procurator-gateway = {
    enable = mkEnableOption "the Procurator fleet gateway (pcr-gateway)";

    package = mkOption {
      type = types.package;
      description = "The Procurator package; its bin/pcr-gateway is started.";
    };

    socket = mkOption {
      type = types.str;
      default = "/run/pcr-gateway/gateway.sock";
      description = "Unix socket to serve on (--socket); under /run/pcr-gateway, the unit's runtime directory, by default.";
    };
    tcp = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "0.0.0.0:7000";
      description = "Also serve on TCP host:port (--tcp); beyond loopback only with `tls`.";
    };
    tls = mkOption {
      default = null;
      description = "Mutual TLS on `tcp`: clients must show a certificate from clientCaFile.";
      type = types.nullOr (types.submodule {
        options = {
          certFile = mkOption { type = types.str; description = "PEM certificate of the TCP listener (--tls-cert)."; };
          keyFile = mkOption { type = types.str; description = "PEM key of the TCP listener (--tls-key); a path outside the store."; };
          clientCaFile = mkOption { type = types.str; description = "PEM CA client certificates must chain to (--tls-client-ca)."; };
        };
      });
    };

    nats = {
      urls = mkOption {
        type = types.listOf types.str;
        example = [ "nats://nats-a:4222" "nats://nats-b:4222" "nats://nats-c:4222" ];
        description = "The fleet's NATS servers (--nats).";
      };
      credsFile = fileOption "NATS credentials file, JWT and nkey seed (--nats-creds); a path outside the store.";
      user = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "NATS user (--nats-user); its password is PCR_NATS_PASS in environmentFile.";
      };
      caFile = fileOption "PEM CA the NATS servers' certificates chain to (--nats-ca).";
      certFile = fileOption "PEM client certificate for NATS (--nats-cert, with keyFile).";
      keyFile = fileOption "PEM client key for NATS (--nats-key); a path outside the store.";
      replicas = mkOption {
        type = types.enum [ 1 3 ];
        default = 1;
        description = "Replicas of the buckets and stream it creates (--nats-replicas): 3 on a 3-node cluster.";
      };
    };

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/keys/pcr-gateway.env";
      description = "A file outside the store with PCR_NATS_PASS or PCR_NATS_TOKEN (systemd EnvironmentFile=).";
    };
    callTimeoutMs = mkOption {
      type = types.ints.between 1000 3600000;
      default = 300000;
      description = "Longest a call to a host may take (--call-timeout-ms).";
    };
    lostAfterMs = mkOption {
      type = types.ints.between 1000 600000;
      default = 10000;
      description = "A host silent this long is lost (--lost-after-ms).";
    };
    logLevel = mkOption {
      type = types.enum [ "trace" "debug" "info" "warn" "error" "fatal" "silent" ];
      default = "info";
      description = "Log level (--log-level).";
    };
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the port of `tcp` in the firewall.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.nats.user == null || cfg.environmentFile != null;
        message = "services.procurator-gateway.nats.user needs environmentFile with PCR_NATS_PASS";
      }
      {
        assertion = lib.hasPrefix "/run/pcr-gateway/" cfg.socket;
        message = "services.procurator-gateway.socket must be under /run/pcr-gateway (the only directory its dynamic user may write)";
      }
    ] ++ map (message: { assertion = false; inherit message; }) (serviceArgs.gatewayProblems {
      inherit (cfg) tcp tls callTimeoutMs lostAfterMs;
      nats = { inherit (cfg.nats) urls credsFile user caFile certFile keyFile replicas; };
    });

    networking.firewall.allowedTCPPorts = lib.optional (cfg.openFirewall && cfg.tcp != null)
      (lib.toInt (lib.last (lib.splitString ":" cfg.tcp)));

    systemd.services.pcr-gateway = {
      description = "Procurator gateway: one Worker interface in front of a fleet";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      serviceConfig = {
        Type = "exec";
        ExecStart = serviceArgs.execLine ([ "${cfg.package}/bin/pcr-gateway" ] ++ gateway.args);
        LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") gateway.credentials;
        DynamicUser = true;
        RuntimeDirectory = "pcr-gateway";
        RuntimeDirectoryMode = "0755";
        Restart = "on-failure";
        RestartSec = 2;
        # Exit status 2 is a configuration error: restarting cannot fix it.
        RestartPreventExitStatus = 2;
        UMask = "0077";
        # As deploy/systemd/pcr-gateway.service: no privilege, no devices, a read-only system.
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateUsers = true;
        ProtectHostname = true;
        ProtectClock = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectProc = "invisible";
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        RemoveIPC = true;
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged @resources" ];
        SystemCallErrorNumber = "EPERM";
        # Not MemoryDenyWriteExecute: V8's JIT writes the code it runs.
        DevicePolicy = "closed";
      } // lib.optionalAttrs (cfg.environmentFile != null) {
        EnvironmentFile = cfg.environmentFile;
      };
    };
  };
}
