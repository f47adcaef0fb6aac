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
  # Fault injection (docs/faults.md). Instant faults (resume, killVmm, powerOff, reboot) return an
  # id but are never active; the others stay active until cleared or until durationMs passes.
  injectFault @6 (id :Text, fault :Fault) -> (faultId :Text);
  clearFault @7 (id :Text, faultId :Text) -> ();
  listFaults @8 (id :Text) -> (faults :List(ActiveFault));
  # Runs a command in the guest through its agent (docs/agent-protocol.md): UNAVAILABLE while the
  # agent has not said hello, or after its channel broke; FAILED_PRECONDITION without an agent.
  exec @9 (id :Text, command :ExecCommand) -> (result :ExecResult);
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
  faults @14 :List(ActiveFault);  # faults active right now
  agentState @15 :Text;       # the guest agent's channel: none, connecting, ready, broken or closed
  agentReadyMs @16 :UInt64;   # from create to the agent's first hello; 0 until then
}

struct ExecCommand {
  argv @0 :List(Text);
  env @1 :List(Text);         # NAME=value; empty: a minimal PATH and HOME
  cwd @2 :Text;               # absolute; empty: the agent's
  stdin @3 :Data;             # at most 128 KiB
  timeoutMs @4 :UInt32;       # the command and its process group are killed after this; 0: never
}

struct ExecResult {
  exitCode @0 :Int32;         # -1 when a signal ended it
  signal @1 :UInt32;          # 0: none
  timedOut @2 :Bool;
  stdout @3 :Data;            # at most 64 KiB each; the rest is dropped and flagged
  stderr @4 :Data;
  stdoutTruncated @5 :Bool;
  stderrTruncated @6 :Bool;
  durationMs @7 :UInt64;
}

struct Fault {
  durationMs @0 :UInt32;      # clears itself after this long; 0: until clearFault
  union {
    partition @1 :Partition;
    loss @2 :Loss;
    delay @3 :Delay;
    bandwidth @4 :Bandwidth;
    pause @5 :Void;           # QMP stop / vm.pause; clearing it resumes
    resume @6 :Void;          # instant: resumes a paused guest, clears pause faults
    killVmm @7 :Void;         # instant: SIGKILL of the VMM, a crash (the VM fails)
    powerOff @8 :Void;        # instant: hard power off (the VM stops)
    reboot @9 :Void;          # instant: hard reset of the guest
    diskErrors @10 :DiskErrors;
    cpuThrottle @11 :CpuThrottle;
  }
}

struct Partition {
  cidrs @0 :List(Text);       # drop traffic to and from these; empty: all traffic
}

struct Loss {
  percent @0 :Float64;        # each packet, either direction, is dropped with this probability
}

struct Delay {
  ms @0 :UInt32;              # added to packets towards the guest
  jitterMs @1 :UInt32;
}

struct Bandwidth {
  kbitPerSecond @0 :UInt64;   # towards the guest
}

struct DiskErrors {
  op @0 :DiskOp;
  errno @1 :UInt32;           # 0: EIO
  afterOps @2 :UInt64;        # start failing after this many more operations of that kind (0: at once)
  probabilityPercent @3 :Float64;  # 0 or 100: every block; else each 4 KiB block fails with this probability
}

enum DiskOp { readWrite @0; read @1; write @2; }

struct CpuThrottle {
  percent @0 :UInt32;         # of one host CPU, for the whole VMM process
}

struct ActiveFault {
  id @0 :Text;
  kind @1 :Text;              # the union member's name, e.g. "loss"
  description @2 :Text;       # e.g. "loss 30%"
  injectedAtMs @3 :UInt64;
  expiresAtMs @4 :UInt64;     # 0: until cleared
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
