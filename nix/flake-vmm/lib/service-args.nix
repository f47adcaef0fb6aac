# The command lines of pcr-worker and pcr-gateway for the NixOS modules (host-module.nix,
# gateway-module.nix), from their option values. Builtins only, so test/nix feeds the argv they
# make to the binaries' own parsers (worker/config.ts, worker/fleet/gateway-config.ts): a flag
# renamed there fails the test here. Secrets never appear: passwords and tokens reach the binaries
# as PCR_NATS_PASS / PCR_NATS_TOKEN from an environment file, files by their paths.
let
  optional = cond: list: if cond then list else [ ];
  # [ message ] when cond holds.
  when = cond: message: optional cond [ message ];
  # "--flag value" when the value is set (not null).
  flag = name: value: optional (value != null) [ "--${name}" (toString value) ];
  # "--flag v1 --flag v2 ...": the binaries' repeatable flags.
  each = name: list: builtins.concatMap (value: [ "--${name}" (toString value) ]) list;

  # The NATS options pcr-worker and pcr-gateway share (config.ts's --nats-*).
  natsArgs = nats:
    flag "nats" (if nats.urls == [ ] then null else builtins.concatStringsSep "," nats.urls)
    ++ flag "nats-creds" nats.credsFile
    ++ flag "nats-user" nats.user
    ++ flag "nats-ca" nats.caFile
    ++ flag "nats-cert" nats.certFile
    ++ flag "nats-key" nats.keyFile
    ++ flag "nats-replicas" nats.replicas;

  # The rules the binaries apply at start (worker/config.ts, worker/fleet/host-info.ts), checked at
  # evaluation instead: the modules make each problem an assertion.
  matches = regex: value: builtins.match regex value != null;
  isNatsUrl = matches "(nats|tls|ws|wss)://[^[:space:],]+|[^[:space:],/]+:[0-9]+";
  isAbsolute = path: path == null || matches "/.+" (toString path);
  natsProblems = what: nats:
    when (nats.urls == [ ]) "${what}.urls: at least one NATS server is needed"
    ++ map (url: "${what}.urls: ${builtins.toJSON url} is not a NATS URL (nats://host:port, tls://…, ws://…, wss://… or host:port)")
      (builtins.filter (url: !(isNatsUrl url)) nats.urls)
    ++ when ((nats.certFile == null) != (nats.keyFile == null)) "${what}.certFile and ${what}.keyFile go together"
    ++ when (!(builtins.elem nats.replicas [ 1 3 ])) "${what}.replicas must be 1 or 3"
    ++ map (name: "${what}.${name} must be an absolute path")
      (builtins.filter (name: !(isAbsolute nats.${name})) [ "credsFile" "caFile" "certFile" "keyFile" ]);
  isLoopback = host: matches "127\\.[0-9]+\\.[0-9]+\\.[0-9]+|localhost|\\[::1]" host;

  # One argument of an Exec* line, as nixpkgs' utils.escapeSystemdExecArg quotes it: a JSON
  # string (systemd's C-style quoting), with systemd's % specifiers and $ variables escaped.
  execArg = arg: builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString arg));
in
{
  /*
    workerArgs {
      socket, stateDir, runtimeDir, backend, bridge, subnet, logLevel,
      qemuBinary, cloudHypervisorBinary, virtiofsdBinary,   # paths of the VMMs' binaries
      cage, vmmUidRange,                                     # bool, "FIRST-LAST"
      cacheUrl, trustedPublicKeys, uplink, resolver,         # null or value; list
      pools,                                                 # [ "<spec.json>:<hot>[+disk]" ]
      fleet = null or { urls, hostId, labels (attrs), credsFile, user, caFile, certFile, keyFile, replicas, heartbeatMs };
    }
  */
  workerArgs = cfg:
    flag "socket" cfg.socket
    ++ flag "state-dir" cfg.stateDir
    ++ flag "runtime-dir" cfg.runtimeDir
    ++ flag "vmm" cfg.backend
    ++ flag "bridge" cfg.bridge
    ++ flag "subnet" cfg.subnet
    ++ flag "qemu-binary" cfg.qemuBinary
    ++ flag "cloud-hypervisor-binary" cfg.cloudHypervisorBinary
    ++ flag "virtiofsd-binary" cfg.virtiofsdBinary
    ++ [ (if cfg.cage then "--cage" else "--no-cage") ]
    ++ flag "vmm-uid-range" cfg.vmmUidRange
    ++ flag "cache-url" cfg.cacheUrl
    ++ each "trusted-key" cfg.trustedPublicKeys
    ++ flag "uplink" cfg.uplink
    ++ flag "resolver" cfg.resolver
    ++ each "pool" cfg.pools
    ++ flag "log-level" cfg.logLevel
    ++ optional (cfg.fleet != null) (
      natsArgs cfg.fleet
      ++ flag "host-id" cfg.fleet.hostId
      ++ each "label" (builtins.attrValues (builtins.mapAttrs (key: value: "${key}=${value}") cfg.fleet.labels))
      ++ flag "heartbeat-ms" cfg.fleet.heartbeatMs
    );

  /*
    gatewayArgs {
      socket, tcp (null or "host:port"), logLevel, callTimeoutMs, lostAfterMs,
      tls = null or { certFile, keyFile, clientCaFile },
      nats = { urls, credsFile, user, caFile, certFile, keyFile, replicas },
    }
    The gateway runs as a dynamic user, which cannot read root's files: every file goes through
    systemd's LoadCredential=. Returns { args; credentials = { <name> = <path on the host>; }; },
    the args naming each file in `credentialsDir` (the unit's $CREDENTIALS_DIRECTORY).
  */
  gatewayArgs = { credentialsDir, cfg }:
    let
      files = builtins.filter (file: file.path != null) ([
        { flag = "nats-creds"; name = "nats.creds"; path = cfg.nats.credsFile; }
        { flag = "nats-ca"; name = "nats-ca.crt"; path = cfg.nats.caFile; }
        { flag = "nats-cert"; name = "nats-client.crt"; path = cfg.nats.certFile; }
        { flag = "nats-key"; name = "nats-client.key"; path = cfg.nats.keyFile; }
      ] ++ optional (cfg.tls != null) [
        { flag = "tls-cert"; name = "tls.crt"; path = cfg.tls.certFile; }
        { flag = "tls-key"; name = "tls.key"; path = cfg.tls.keyFile; }
        { flag = "tls-client-ca"; name = "client-ca.crt"; path = cfg.tls.clientCaFile; }
      ]);
      inCredentials = builtins.listToAttrs (map (file: { name = file.flag; value = "${credentialsDir}/${file.name}"; }) files);
      fileFlag = name: flag name (inCredentials.${name} or null);
    in
    {
      args =
        flag "socket" cfg.socket
        ++ flag "tcp" cfg.tcp
        ++ fileFlag "tls-cert" ++ fileFlag "tls-key" ++ fileFlag "tls-client-ca"
        ++ natsArgs (cfg.nats // { credsFile = null; caFile = null; certFile = null; keyFile = null; })
        ++ fileFlag "nats-creds" ++ fileFlag "nats-ca" ++ fileFlag "nats-cert" ++ fileFlag "nats-key"
        ++ flag "log-level" cfg.logLevel
        ++ flag "call-timeout-ms" cfg.callTimeoutMs
        ++ flag "lost-after-ms" cfg.lostAfterMs;
      credentials = builtins.listToAttrs (map (file: { inherit (file) name; value = toString file.path; }) files);
    };

  # Problems with the worker's fleet options (null: not in a fleet); [ ] when there are none.
  workerFleetProblems = fleet:
    optional (fleet != null) (
      natsProblems "services.procurator-worker.fleet" fleet
      ++ when (fleet.hostId != null && !(matches "[A-Za-z0-9_-]{1,64}" fleet.hostId))
        "services.procurator-worker.fleet.hostId ${builtins.toJSON fleet.hostId} must be 1-64 of A-Z a-z 0-9 _ - (a NATS subject token)"
      ++ builtins.concatLists (builtins.attrValues (builtins.mapAttrs
        (key: value:
          when (!(matches "[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?" key))
            "services.procurator-worker.fleet.labels: key ${builtins.toJSON key} must be A-Z a-z 0-9 . _ / - (starting and ending with a letter or digit)"
          ++ when (!(matches "[A-Za-z0-9._:/-]{0,128}" value))
            "services.procurator-worker.fleet.labels.${key}: ${builtins.toJSON value} must be up to 128 of A-Z a-z 0-9 . _ : / -")
        fleet.labels))
      ++ when (builtins.length (builtins.attrNames fleet.labels) > 32) "services.procurator-worker.fleet.labels: at most 32"
      ++ when (fleet.heartbeatMs < 100 || fleet.heartbeatMs > 60000) "services.procurator-worker.fleet.heartbeatMs must be 100..60000"
    );

  # Problems with the gateway's options; [ ] when there are none.
  gatewayProblems = cfg:
    natsProblems "services.procurator-gateway.nats" cfg.nats
    ++ when (cfg.tcp != null && !(matches "(\\[[0-9a-fA-F:.]+]|[^]:[]+):[0-9]+" cfg.tcp))
      "services.procurator-gateway.tcp ${builtins.toJSON cfg.tcp} must be host:port"
    ++ when (cfg.tls != null && cfg.tcp == null) "services.procurator-gateway.tls needs tcp"
    ++ when (cfg.tcp != null && cfg.tls == null
      && !(isLoopback (builtins.head (builtins.match "(.*):[0-9]+" cfg.tcp))))
      "services.procurator-gateway.tcp beyond loopback needs tls (mutual TLS: certFile, keyFile, clientCaFile)"
    ++ when (cfg.callTimeoutMs < 1000 || cfg.callTimeoutMs > 3600000) "services.procurator-gateway.callTimeoutMs must be 1000..3600000"
    ++ when (cfg.lostAfterMs < 1000 || cfg.lostAfterMs > 600000) "services.procurator-gateway.lostAfterMs must be 1000..600000";

  inherit execArg;
  # A whole ExecStart= line: the program and its arguments, each quoted.
  execLine = argv: builtins.concatStringsSep " " (map execArg argv);
}
