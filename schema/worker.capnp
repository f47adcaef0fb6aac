@0xce87e4f6795988f7;
# Public contract: names and ordinals never change; new fields and methods only at higher ordinals.
# Errors are exceptions whose reason is "<CODE>: <message>", CODE one of INVALID_ARGUMENT,
# NOT_FOUND, ALREADY_EXISTS, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, UNAVAILABLE, INTERNAL.

using Common = import "common.capnp";

interface Worker {
  listVms @0 () -> (vms :List(RunningVm));
  read @1 (id :Text, offset :UInt64, maxBytes :UInt32) -> (data :Data, nextOffset :UInt64);  # serial console
  # waitReadyMs: 0 answers once the VMM runs; else the call waits that long for the guest agent's
  # hello, and a VM whose agent is not ready by then is deleted (UNAVAILABLE).
  # idempotencyKey: "" none; else at most 128 bytes of printable ASCII. A create whose key names a
  # VM the worker has (or is making) answers that VM's id instead of making another; the same key
  # with a different spec, secrets, ttlSeconds or placement is INVALID_ARGUMENT (waitReadyMs may differ). The key is free again once its VM is
  # deleted or its create failed. placement: where a fleet gateway may put the VM; a single worker
  # ignores it.
  createVm @2 (spec :Common.VmSpec, secrets :List(Common.Secret), ttlSeconds :UInt32, waitReadyMs :UInt32,
               idempotencyKey :Text, placement :Placement) -> (id :Text);
  deleteVm @3 (id :Text) -> ();
  getVm @4 (id :Text) -> (vm :RunningVm);
  events @5 (sinceSeq :UInt64, maxEvents :UInt32, waitMs :UInt32) -> (events :List(VmEvent), nextSeq :UInt64);
  # Fault injection (docs/faults.md). Instant faults (resume, killVmm, powerOff, reboot,
  # killProcess) return an id but are never active; the others stay active until cleared or until durationMs passes.
  injectFault @6 (id :Text, fault :Fault) -> (faultId :Text);
  clearFault @7 (id :Text, faultId :Text) -> ();
  listFaults @8 (id :Text) -> (faults :List(ActiveFault));
  # Runs a command in the guest through its agent (docs/agent-protocol.md): UNAVAILABLE while the
  # agent has not said hello, or after its channel broke; FAILED_PRECONDITION without an agent.
  exec @9 (id :Text, command :ExecCommand) -> (result :ExecResult);
  # Files in the guest, through its agent. A call moves at most 1 MiB: bigger files take several,
  # by offset. Paths are absolute. writeFile creates missing parents; mode applies to a new file.
  writeFile @10 (id :Text, path :Text, data :Data, offset :UInt64, mode :UInt32, truncate :Bool) -> (size :UInt64);
  readFile @11 (id :Text, path :Text, offset :UInt64, maxBytes :UInt32) -> (data :Data, size :UInt64, eof :Bool);
  statFile @12 (id :Text, path :Text) -> (stat :FileStat);
  listDir @13 (id :Text, path :Text, offset :UInt32) -> (entries :List(FileStat), truncated :Bool);
  # Long-running processes in the guest, named by the pid startProcess answers. Output is read by
  # offset (the agent keeps the last 1 MiB of each stream); readProcess and waitProcess wait up to
  # waitMs for something new.
  startProcess @14 (id :Text, command :ProcessCommand) -> (pid :UInt32);
  readProcess @15 (id :Text, pid :UInt32, stream :OutputStream, offset :UInt64, maxBytes :UInt32, waitMs :UInt32)
      -> (data :Data, offset :UInt64, nextOffset :UInt64, eof :Bool);
  writeProcess @16 (id :Text, pid :UInt32, data :Data, closeStdin :Bool) -> ();
  signalProcess @17 (id :Text, pid :UInt32, signal :UInt32) -> ();
  waitProcess @18 (id :Text, pid :UInt32, waitMs :UInt32) -> (status :ProcessStatus);
  resizeProcess @19 (id :Text, pid :UInt32, rows :UInt16, cols :UInt16) -> ();
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
  group @17 :Text;            # "": none
  origin @18 :VmOrigin;       # how it started: booted for its create, or claimed from a warm pool
  host @19 :Text;             # the fleet host id it is on; "": a worker outside a fleet
  idempotencyKey @20 :Text;   # the key its create carried (the client's string, no secret); "": none
}

# Constraints on the host a fleet gateway places a create on (docs/fleet.md); a single worker ignores them.
struct Placement {
  host @0 :Text;              # "": any; else that host id only
  labels @1 :List(Label);     # the host must carry every one (at most 32)
}

struct Label {
  key @0 :Text;               # a name: A-Z a-z 0-9 . _ / -, 1-63 bytes
  value @1 :Text;             # A-Z a-z 0-9 . _ : / -, at most 128 bytes
}

enum VmOrigin {
  boot @0;      # booted for its create
  pool @1;      # kept booted and paused in a warm pool, claimed by its create
  snapshot @2;  # restored from its pool's snapshot on disk at its create
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

struct FileStat {
  name @0 :Text;
  type @1 :FileType;
  size @2 :UInt64;
  mode @3 :UInt32;            # permission bits
  mtimeMs @4 :Int64;
}

enum FileType { file @0; dir @1; symlink @2; other @3; }

struct ProcessCommand {
  argv @0 :List(Text);
  env @1 :List(Text);         # NAME=value; empty: a minimal PATH and HOME
  cwd @2 :Text;
  tty @3 :Bool;               # a terminal: one pty for stdin, stdout and stderr (stderr stays empty)
  rows @4 :UInt16;
  cols @5 :UInt16;
}

enum OutputStream { stdout @0; stderr @1; }

struct ProcessStatus {
  pid @0 :UInt32;
  running @1 :Bool;
  exitCode @2 :Int32;         # -1 while running or when a signal ended it
  signal @3 :UInt32;
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
    # In the guest, through its agent (FAILED_PRECONDITION without one, UNAVAILABLE before its
    # hello or while the VM is paused).
    killProcess @12 :GuestProcess;    # instant: the signal to the process(es)
    freezeProcess @13 :GuestProcess;  # SIGSTOP; clearing it sends SIGCONT to the processes it stopped
    clockShift @14 :ClockShift;       # steps the guest's realtime clock; clearing it steps back
    clockStrobe @15 :ClockStrobe;     # +deltaMs and back every periodMs; clearing it ends where it began
    fillDisk @16 :FillDisk;           # a file until the filesystem is full (ENOSPC); clearing it frees that
  }
}

struct Partition {
  cidrs @0 :List(Text);       # drop traffic to and from these; empty: all traffic
  direction @1 :Direction;    # both ways, or only one
}

# Which of a VM's traffic a fault drops: both ways, only what it sends, or only what it receives.
enum Direction { both @0; outbound @1; inbound @2; }

struct Loss {
  percent @0 :Float64;        # each packet, either direction, is dropped with this probability
  cidrs @1 :List(Text);       # only traffic to and from these; empty: all traffic
}

struct Delay {
  ms @0 :UInt32;              # added to packets towards the guest
  jitterMs @1 :UInt32;
  cidrs @2 :List(Text);       # only packets from these; empty: all traffic
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

enum VmStatus {
  creating @0; running @1; paused @2; stopping @3; stopped @4; failed @5;
  lost @6;                    # its host stopped heartbeating: set by a fleet gateway, never by a worker
                              # itself; the VM may still run there, and is re-adopted when the host returns
}

struct VmEvent {
  seq @0 :UInt64;
  vmId @1 :Text;
  status @2 :VmStatus;
  atMs @3 :UInt64;
  reason @4 :Text;
}

# In-guest faults
struct GuestProcess {
  pid @0 :UInt32;             # 0: by name
  name @1 :Text;              # /proc/<pid>/comm or argv[0]'s base name: every such process (never
                              # init, the agent or kernel threads); empty: by pid
  signal @2 :UInt32;          # killProcess: 1-64; unused by freezeProcess
}

struct ClockShift {
  deltaMs @0 :Int64;          # non-zero, at most ten years either way
}

struct ClockStrobe {
  deltaMs @0 :Int64;
  periodMs @1 :UInt32;        # 50 to 3600000
}

struct FillDisk {
  dir @0 :Text;               # an absolute directory in the guest; the file is <dir>/.pcr-fill-<faultId>
}
