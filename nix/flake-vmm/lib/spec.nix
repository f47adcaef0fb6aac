# mkVmSpec: options -> the attribute set `pcr-worker-test create-vm --spec-file` accepts.
# Builtins only. builtins.toJSON of the result is the vmSpecJson file: keys sorted, exactly
#   { allowedDomains, cmdline, cpu, hostname, image, initrd, kernel, memoryBytes }.
# Bad options throw "flake-vmm: invalid VM spec: <every problem>".
let
  checks = import ./checks.nix;
  inherit (checks) mib;

  lower = builtins.replaceStrings
    [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ]
    [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];

  # Generous static bounds; the worker applies the host's real limits (maxCpuPerVm, maxMemoryPerVmBytes).
  maxCpu = 255;
  minMemoryBytes = 64 * mib;

  show = builtins.toJSON;

  storePathProblems = field: value: required:
    if !(builtins.isString value) then [ "${field} must be a string" ]
    else if value == "" then (if required then [ "${field} is required" ] else [ ])
    else if !(checks.isStorePath (builtins.unsafeDiscardStringContext value)) then
      [ "${field} ${show (builtins.unsafeDiscardStringContext value)} is not a path inside /nix/store" ]
    else [ ];

  cpuProblems = cpu:
    if !(builtins.isInt cpu) then [ "cpu must be an integer" ]
    else if cpu < 1 || cpu > maxCpu then [ "cpu ${toString cpu} is out of range 1..${toString maxCpu}" ]
    else [ ];

  memoryProblems = memoryBytes:
    if !(builtins.isInt memoryBytes) then [ "memoryBytes must be an integer" ]
    else if memoryBytes < minMemoryBytes then [ "memoryBytes ${toString memoryBytes} is below ${toString minMemoryBytes} (64 MiB)" ]
    else if memoryBytes - (memoryBytes / mib) * mib != 0 then [ "memoryBytes ${toString memoryBytes} is not a multiple of 1 MiB" ]
    else [ ];

  hostnameProblems = hostname:
    if checks.isHostname hostname then [ ]
    else [ "hostname ${show hostname} is not an RFC 1123 host name" ];

  domainProblems = domains:
    if !(builtins.isList domains) then [ "allowedDomains must be a list of strings" ]
    else
      map (entry: "allowedDomains entry ${show entry} is not a domain name (api.example.com), IPv4 address or IPv4 CIDR")
        (builtins.filter (entry: !(checks.isEgressTarget entry)) domains);

  cmdlineProblems = cmdline:
    if !(builtins.isString cmdline) then [ "cmdline must be a string" ]
    else
      checks.cmdlineProblems (builtins.unsafeDiscardStringContext cmdline)
      # Kept verbatim (splitting would drop the store-path context), so it must already be tidy.
      ++ (if builtins.match "( .*|.* |.*  .*)" cmdline != null then [ "cmdline has leading, trailing or doubled spaces" ] else [ ]);
in
{
  inherit maxCpu minMemoryBytes;

  mkVmSpec =
    { hostname
    , kernel
    , initrd ? ""
    , image ? ""
    , cmdline ? ""
    , cpu ? 1
    , memoryBytes ? 256 * mib
    , allowedDomains ? [ ]
    }:
    let
      problems =
        hostnameProblems hostname
        ++ storePathProblems "kernel" kernel true
        ++ storePathProblems "initrd" initrd false
        ++ storePathProblems "image" image false
        ++ cmdlineProblems cmdline
        ++ cpuProblems cpu
        ++ memoryProblems memoryBytes
        ++ domainProblems allowedDomains;
    in
    checks.throwIfProblems "VM spec" problems {
      # Strings keep their store-path context: a file written from this spec refers to
      # kernel, initrd and image, so copying the spec's closure copies the whole VM.
      inherit hostname kernel initrd image cmdline cpu memoryBytes;
      allowedDomains = checks.unique (map lower allowedDomains);
    };
}
