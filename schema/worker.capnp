@0xce87e4f6795988f7;
# Public contract: names and ordinals never change; new fields and methods only at higher ordinals.
# Errors are exceptions whose reason is "<CODE>: <message>", CODE one of INVALID_ARGUMENT,
# NOT_FOUND, ALREADY_EXISTS, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, UNAVAILABLE, INTERNAL.

using Common = import "common.capnp";

interface Worker {
  listVms @0 () -> (vms :List(RunningVm));
  read @1 (id :Text, offset :UInt64, maxBytes :UInt32) -> (data :Data, nextOffset :UInt64);  # serial console
  createVm @2 (spec :Common.VmSpec, secrets :List(Common.Secret), ttlSeconds :UInt32) -> (id :Text);
  deleteVm @3 (id :Text) -> ();
  getVm @4 (id :Text) -> (vm :RunningVm);
  events @5 (sinceSeq :UInt64, maxEvents :UInt32, waitMs :UInt32) -> (events :List(VmEvent), nextSeq :UInt64);
}

struct RunningVm {
  id @0 :Text;
  hostname @1 :Text;
  status @2 :VmStatus;
  failure @3 :Text;
  ip @4 :Text;
  mac @5 :Text;
  cpu @6 :UInt32;
  memoryBytes @7 :UInt64;
  specHash @8 :Text;          # sha256 of the canonical spec
  createdAtMs @9 :UInt64;     # unix epoch milliseconds
  uptimeMs @10 :UInt64;       # since the guest started running; 0 if it never did
  counters @11 :IoCounters;
  egressDrops @12 :UInt64;    # packets the egress allowlist dropped
  backend @13 :Text;          # "qemu" or "cloud-hypervisor"
}

struct IoCounters {
  blockReadBytes @0 :UInt64;
  blockWriteBytes @1 :UInt64;
  blockReadOps @2 :UInt64;
  blockWriteOps @3 :UInt64;
  netRxBytes @4 :UInt64;
  netTxBytes @5 :UInt64;
  netRxPackets @6 :UInt64;
  netTxPackets @7 :UInt64;
}

enum VmStatus { creating @0; running @1; paused @2; stopping @3; stopped @4; failed @5; }

struct VmEvent {
  seq @0 :UInt64;
  vmId @1 :Text;
  status @2 :VmStatus;
  atMs @3 :UInt64;
  reason @4 :Text;
}
