# Predicates shared by spec.nix and cmdline.nix. Builtins only, so they evaluate without nixpkgs.
# They mirror worker/core/spec.ts: what passes here must pass the worker's validation.
let
  # Nix's base32 alphabet has no e, o, u, t; store-name characters as nix allows them.
  storeName = "[A-Za-z0-9+._?=-]+";
  storePathRegex = "/nix/store/[0-9a-df-np-sv-z]{32}-${storeName}(/${storeName})*";
  hostnameLabelRegex = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
  octetRegex = "25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]";

  # Split on a literal separator, keeping only the pieces (builtins.split also returns the matches).
  splitOn = sep: text: builtins.filter builtins.isString (builtins.split sep text);
  lastOf = list: builtins.elemAt list (builtins.length list - 1);

  # Parameters the worker appends itself; a spec's cmdline must not set them (spec.ts RESERVED_PARAMS).
  reservedParams = [ "pcr.ip" "pcr.gw" "pcr.dns" "pcr.share" "pcr.hostname" "tsc_early_khz" ];
in
rec {
  inherit reservedParams splitOn;

  mib = 1024 * 1024;
  # x86 COMMAND_LINE_SIZE is 2048; the worker keeps room for what it adds (spec.ts MAX_CMDLINE).
  maxCmdlineBytes = 1536;

  isStorePath = path:
    builtins.isString path
    && builtins.match storePathRegex path != null
    && !(builtins.any (part: part == "." || part == "..") (splitOn "/" path));

  isHostname = name:
    builtins.isString name
    && builtins.stringLength name <= 253
    && builtins.all (label: builtins.match hostnameLabelRegex label != null) (splitOn "\\." name);

  # A DNS name the worker can resolve for the egress allowlist: a host name with at least two labels.
  # The last label is not all digits, so a bad address such as 256.1.1.1 is not taken for a name.
  isDomain = name:
    isHostname name
    && builtins.length (splitOn "\\." name) >= 2
    && builtins.match "[0-9]+" (lastOf (splitOn "\\." name)) == null;

  isIPv4 = text:
    builtins.isString text
    && builtins.match "(${octetRegex})(\\.(${octetRegex})){3}" text != null;

  isIPv4Cidr = text:
    let parts = builtins.match "([0-9.]+)/([0-9]|[12][0-9]|3[0-2])" text;
    in builtins.isString text && parts != null && isIPv4 (builtins.head parts);

  # An allowedDomains entry: a domain name, an IPv4 address or an IPv4 CIDR (as the CLI's --allow takes).
  isEgressTarget = entry: isDomain entry || isIPv4 entry || isIPv4Cidr entry;

  hasControlChars = text: builtins.match "[^[:cntrl:]]*" text == null;

  # "pcr.ip=10.0.0.2/24" -> "pcr.ip"; "quiet" -> "quiet".
  paramName = param: builtins.head (splitOn "=" param);

  # Words of a command line (runs of spaces collapse).
  cmdlineWords = cmdline: builtins.filter (word: word != "") (splitOn "[ ]+" cmdline);

  # Problems with a complete spec cmdline, as a list of messages (empty when fine).
  cmdlineProblems = cmdline:
    let reserved = builtins.filter (word: builtins.elem (paramName word) reservedParams) (cmdlineWords cmdline);
    in
    (if builtins.stringLength cmdline > maxCmdlineBytes then [ "cmdline is longer than ${toString maxCmdlineBytes} bytes" ] else [ ])
    ++ (if hasControlChars cmdline then [ "cmdline contains control characters" ] else [ ])
    ++ (if reserved != [ ] then [ "cmdline may not set ${paramName (builtins.head reserved)} (the worker sets it)" ] else [ ]);

  # Order-preserving de-duplication.
  unique = list: builtins.foldl' (kept: item: if builtins.elem item kept then kept else kept ++ [ item ]) [ ] list;

  # Throws one message listing every problem, like spec.ts does, so a user fixes them all at once.
  throwIfProblems = what: problems: value:
    if problems == [ ] then value
    else throw "flake-vmm: invalid ${what}: ${builtins.concatStringsSep "; " problems}";
}
