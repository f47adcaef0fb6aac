@0xd90022b777f0a259;
# Public contract: names and ordinals never change; new fields only at higher ordinals.

struct VmSpec {
  hostname @0 :Text;
  kernel @1 :Text;          # /nix/store path: PVH vmlinux or bzImage
  initrd @2 :Text;          # /nix/store path
  image @3 :Text;           # /nix/store path: root disk, attached read-only
  cmdline @4 :Text;
  cpu @5 :UInt32;
  memoryBytes @6 :UInt64;
  allowedDomains @7 :List(Text);  # names, *.wildcards, IPs or CIDRs the guest may reach
  dataDiskBytes @8 :UInt64;       # 0: none; else a fresh sparse writable disk (/dev/vdb), gone with the VM
  group @9 :Text;                 # "": none; else a host-name label: members reach each other and resolve
                                  # each other's <hostname> and <hostname>.<group>
}

struct Secret {
  name @0 :Text;            # file name under /run/secrets
  value @1 :Data;
}
