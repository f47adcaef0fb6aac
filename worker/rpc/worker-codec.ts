// schema/worker.capnp and schema/common.capnp on the wire: struct layouts and codecs shared by
// the service and the client. Layouts from `capnp compile -ocapnp`; test/rpc/codec.test.ts checks
// them against the compiler and test/interop against the C++ implementation.
import {
  type ActiveFault,
  DIRECTIONS,
  type Direction,
  DISK_OPS,
  type ExecRequest,
  type ExecResult,
  type FileStat,
  type FileType,
  type OutputStream,
  type ProcessStart,
  type ProcessStatus,
  FAULT_KINDS,
  type FaultInput,
  type FaultName,
  type IoCounters,
  type PlacementInput,
  type SecretInput,
  type VmEvent,
  type VmSpecInput,
  type VmStatus,
  type VmView,
  VM_STATUSES,
  VM_ORIGINS,
} from "../core/api.js";
import { invalidArgument } from "../core/errors.js";
import { HOST_ID, LABEL_KEY, LABEL_VALUE, MAX_LABELS } from "../fleet/host-info.js";
import {
  type MessageBuilder,
  type StructReader,
  listStruct,
  readBool,
  readData,
  readStruct,
  readStructList,
  readText,
  readTextList,
  readU16,
  readU32,
  readU64,
} from "./wire.js";

export const WORKER_INTERFACE_ID = 0xa6f558509d9fa23cn;

export const WorkerMethod = {
  listVms: 0,
  read: 1,
  createVm: 2,
  deleteVm: 3,
  getVm: 4,
  events: 5,
  injectFault: 6,
  clearFault: 7,
  listFaults: 8,
  exec: 9,
  writeFile: 10,
  readFile: 11,
  statFile: 12,
  listDir: 13,
  startProcess: 14,
  readProcess: 15,
  writeProcess: 16,
  signalProcess: 17,
  waitProcess: 18,
  resizeProcess: 19,
} as const;

/** Struct sizes: data words, pointer count. */
export const Size = {
  RunningVm: [6, 13],
  IoCounters: [8, 0],
  VmEvent: [3, 2],
  VmSpec: [3, 7],
  Secret: [0, 2],
  ListVmsResults: [0, 1],
  ReadParams: [2, 1],
  ReadResults: [1, 1],
  CreateVmParams: [1, 4],
  Placement: [0, 2],
  Label: [0, 2],
  CreateVmResults: [0, 1],
  IdParams: [0, 1],
  GetVmResults: [0, 1],
  EventsParams: [2, 0],
  EventsResults: [1, 1],
  Fault: [1, 1],
  Partition: [1, 1],
  Loss: [1, 1],
  Delay: [1, 1],
  Bandwidth: [1, 0],
  DiskErrors: [3, 0],
  CpuThrottle: [1, 0],
  GuestProcess: [1, 1],
  ClockShift: [1, 0],
  ClockStrobe: [2, 0],
  FillDisk: [0, 1],
  ActiveFault: [2, 3],
  InjectFaultParams: [0, 2],
  InjectFaultResults: [0, 1],
  ClearFaultParams: [0, 2],
  ListFaultsResults: [0, 1],
  ExecCommand: [1, 4],
  ExecResult: [3, 2],
  ExecParams: [0, 2],
  ExecResults: [0, 1],
  WriteFileParams: [2, 3],
  WriteFileResults: [1, 0],
  ReadFileParams: [2, 2],
  ReadFileResults: [2, 1],
  StatFileParams: [0, 2],
  StatFileResults: [0, 1],
  ListDirParams: [1, 2],
  ListDirResults: [1, 1],
  FileStat: [3, 1],
  ProcessCommand: [1, 3],
  StartProcessParams: [0, 2],
  StartProcessResults: [1, 0],
  ReadProcessParams: [3, 1],
  ReadProcessResults: [3, 1],
  WriteProcessParams: [1, 2],
  SignalProcessParams: [1, 1],
  WaitProcessParams: [1, 1],
  WaitProcessResults: [0, 1],
  ProcessStatus: [2, 0],
  ResizeProcessParams: [1, 1],
} as const satisfies Record<string, readonly [number, number]>;

const statusFromWire = (value: number): VmStatus => VM_STATUSES[value] ?? "failed";
/**
 * Most elements a list may have before we decode it into objects: far above what the core accepts
 * (64 secrets, 256 domains), low enough that a small message cannot make us build millions of objects.
 */
export const MAX_LIST_LENGTH = { secrets: 1024, allowedDomains: 4096, vms: 100_000, events: 100_000, faults: 10_000, cidrs: 4096 } as const;

const STATUS_CODES = new Map(VM_STATUSES.map((status, code) => [status, code]));
const statusToWire = (status: VmStatus): number => STATUS_CODES.get(status) ?? 0;

/** Bytes a RunningVm usually takes (struct, counters, texts): sizes result buffers up front. */
export const RUNNING_VM_BYTES_ESTIMATE = 400;

// ---- RunningVm / IoCounters ----

const COUNTER_KEYS = [
  "blockReadBytes",
  "blockWriteBytes",
  "blockReadOps",
  "blockWriteOps",
  "netRxBytes",
  "netTxBytes",
  "netRxPackets",
  "netTxPackets",
] as const satisfies readonly (keyof IoCounters)[];

/** Writes a RunningVm into an allocated struct whose data section starts at `s`. */
export function writeRunningVm(b: MessageBuilder, s: number, vm: VmView): void {
  const p = s + Size.RunningVm[0] * 8;
  b.setText(p, vm.id);
  b.setText(p + 8, vm.hostname);
  b.setU16(s, statusToWire(vm.status));
  b.setText(p + 16, vm.failure);
  b.setText(p + 24, vm.ip);
  b.setText(p + 32, vm.mac);
  b.setU32(s + 4, vm.cpu);
  b.setU64(s + 8, vm.memoryBytes);
  b.setText(p + 40, vm.specHash);
  b.setU64(s + 16, vm.createdAtMs);
  b.setU64(s + 24, vm.uptimeMs);
  const counters = b.initStruct(p + 48, Size.IoCounters[0], Size.IoCounters[1]);
  const c = vm.counters;
  b.setU64(counters, c.blockReadBytes);
  b.setU64(counters + 8, c.blockWriteBytes);
  b.setU64(counters + 16, c.blockReadOps);
  b.setU64(counters + 24, c.blockWriteOps);
  b.setU64(counters + 32, c.netRxBytes);
  b.setU64(counters + 40, c.netTxBytes);
  b.setU64(counters + 48, c.netRxPackets);
  b.setU64(counters + 56, c.netTxPackets);
  b.setU64(s + 32, vm.egressDrops);
  b.setText(p + 56, vm.backend);
  writeActiveFaultList(b, p + 64, vm.faults ?? []);
  b.setText(p + 72, vm.agentState ?? "none");
  b.setU64(s + 40, vm.agentReadyMs ?? 0n);
  b.setText(p + 80, vm.group ?? "");
  b.setU16(s + 2, VM_ORIGINS.indexOf(vm.origin ?? "boot"));
  b.setText(p + 88, vm.host ?? "");
  b.setText(p + 96, vm.idempotencyKey ?? "");
}

export function readRunningVm(s: StructReader): VmView {
  const c = readStruct(s, 6);
  const counters = {} as IoCounters;
  for (let i = 0; i < COUNTER_KEYS.length; i++) counters[COUNTER_KEYS[i]!] = c === null ? 0n : readU64(c, i * 8);
  return {
    id: readText(s, 0),
    hostname: readText(s, 1),
    status: statusFromWire(readU16(s, 0)),
    failure: readText(s, 2),
    ip: readText(s, 3),
    mac: readText(s, 4),
    cpu: readU32(s, 4),
    memoryBytes: readU64(s, 8),
    specHash: readText(s, 5),
    createdAtMs: readU64(s, 16),
    uptimeMs: readU64(s, 24),
    counters,
    egressDrops: readU64(s, 32),
    backend: readText(s, 7),
    faults: readActiveFaultList(s, 8),
    // A peer that predates the agent sends neither: its VMs have none.
    agentState: readText(s, 9) || "none",
    agentReadyMs: readU64(s, 40),
    group: readText(s, 10),
    // An origin this reader does not know yet (a newer worker's) is shown as a boot.
    origin: VM_ORIGINS[readU16(s, 2)] ?? "boot",
    // Peers that predate these send neither: "" (outside a fleet; no key).
    host: readText(s, 11),
    idempotencyKey: readText(s, 12),
  };
}

// ---- lists of structs ----

/** Writes `items` as a list of structs of `size`; `writeOne` gets each element's data offset `s` and pointer offset `p`. */
function writeStructs<T>(
  b: MessageBuilder,
  at: number,
  items: readonly T[],
  [dataWords, ptrCount]: readonly [number, number],
  writeOne: (s: number, p: number, item: T) => void,
): void {
  const start = b.initStructList(at, items.length, dataWords, ptrCount);
  const step = (dataWords + ptrCount) * 8;
  for (let i = 0; i < items.length; i++) writeOne(start + i * step, start + i * step + dataWords * 8, items[i]!);
}

/** Reads a list of structs (at most `maxLength`, else malformed) through `readOne`; an absent list is empty. */
function readStructs<T>(s: StructReader, index: number, maxLength: number, readOne: (e: StructReader) => T): T[] {
  const list = readStructList(s, index, maxLength);
  if (list === null) return [];
  const out: T[] = new Array(list.length);
  for (let i = 0; i < list.length; i++) out[i] = readOne(listStruct(list, i));
  return out;
}

export function writeRunningVmList(b: MessageBuilder, at: number, vms: readonly VmView[]): void {
  writeStructs(b, at, vms, Size.RunningVm, (s, _p, vm) => writeRunningVm(b, s, vm));
}

export function readRunningVmList(s: StructReader, index: number): VmView[] {
  return readStructs(s, index, MAX_LIST_LENGTH.vms, readRunningVm);
}

// ---- VmEvent ----

export function writeVmEventList(b: MessageBuilder, at: number, events: readonly VmEvent[]): void {
  writeStructs(b, at, events, Size.VmEvent, (s, p, event) => {
    b.setU64(s, event.seq);
    b.setText(p, event.vmId);
    b.setU16(s + 8, statusToWire(event.status));
    b.setU64(s + 16, event.atMs);
    b.setText(p + 8, event.reason);
  });
}

export function readVmEventList(s: StructReader, index: number): VmEvent[] {
  return readStructs(s, index, MAX_LIST_LENGTH.events, (e) => ({
    seq: readU64(e, 0),
    vmId: readText(e, 0),
    status: statusFromWire(readU16(e, 8)),
    atMs: readU64(e, 16),
    reason: readText(e, 1),
  }));
}

// ---- VmSpec / Secret ----

export function writeVmSpec(b: MessageBuilder, at: number, spec: VmSpecInput): void {
  const s = b.initStruct(at, Size.VmSpec[0], Size.VmSpec[1]);
  const p = s + Size.VmSpec[0] * 8;
  b.setText(p, spec.hostname);
  b.setText(p + 8, spec.kernel);
  b.setText(p + 16, spec.initrd);
  b.setText(p + 24, spec.image);
  b.setText(p + 32, spec.cmdline);
  b.setU32(s, spec.cpu);
  b.setU64(s + 8, spec.memoryBytes);
  b.setTextList(p + 40, spec.allowedDomains);
  b.setU64(s + 16, spec.dataDiskBytes ?? 0n);
  b.setText(p + 48, spec.group ?? "");
}

export function readVmSpec(s: StructReader | null): VmSpecInput {
  if (s === null) {
    return { hostname: "", kernel: "", initrd: "", image: "", cmdline: "", cpu: 0, memoryBytes: 0n, allowedDomains: [] };
  }
  return {
    hostname: readText(s, 0),
    kernel: readText(s, 1),
    initrd: readText(s, 2),
    image: readText(s, 3),
    cmdline: readText(s, 4),
    cpu: readU32(s, 0),
    memoryBytes: readU64(s, 8),
    allowedDomains: readTextList(s, 5, MAX_LIST_LENGTH.allowedDomains),
    // Absent rather than 0n when unset, like a spec from a peer that predates the field.
    ...(readU64(s, 16) > 0n ? { dataDiskBytes: readU64(s, 16) } : {}),
    ...(readText(s, 6) ? { group: readText(s, 6) } : {}),
  };
}

export function writeSecrets(b: MessageBuilder, at: number, secrets: readonly SecretInput[]): void {
  writeStructs(b, at, secrets, Size.Secret, (_s, p, secret) => {
    b.setText(p, secret.name);
    b.setData(p + 8, secret.value);
  });
}

export function readSecrets(s: StructReader, index: number): SecretInput[] {
  return readStructs(s, index, MAX_LIST_LENGTH.secrets, (e) => ({ name: readText(e, 0), value: readData(e, 1) }));
}

// ---- Placement ----

/** Writes a Placement struct and points `at` to it; nothing (a null pointer) when there is none. */
export function writePlacement(b: MessageBuilder, at: number, placement: PlacementInput | undefined): void {
  if (!placement) return;
  const labels = Object.entries(placement.labels ?? {});
  if (!placement.host && labels.length === 0) return;
  const s = b.initStruct(at, Size.Placement[0], Size.Placement[1]);
  b.setText(s, placement.host ?? "");
  writeStructs(b, s + 8, labels, Size.Label, (_s, p, [key, value]) => {
    b.setText(p, key);
    b.setText(p + 8, value);
  });
}

/**
 * A Placement, bounded before anything is turned into objects: at most MAX_LABELS labels, each key
 * and value of the fleet's label charset, the host a host id. Absent or empty: undefined.
 */
export function readPlacement(s: StructReader | null): PlacementInput | undefined {
  if (s === null) return undefined;
  const host = readText(s, 0);
  if (host && !HOST_ID.test(host)) throw invalidArgument(`placement host ${JSON.stringify(host.slice(0, 80))} is no host id`);
  const list = readStructList(s, 1);
  if (list !== null && list.length > MAX_LABELS) throw invalidArgument(`placement has ${list.length} labels (at most ${MAX_LABELS})`);
  const labels: Record<string, string> = {};
  for (let i = 0; i < (list?.length ?? 0); i++) {
    const label = listStruct(list!, i);
    const key = readText(label, 0);
    const value = readText(label, 1);
    if (!LABEL_KEY.test(key) || !LABEL_VALUE.test(value)) {
      throw invalidArgument(`bad placement label ${JSON.stringify(`${key.slice(0, 80)}=${value.slice(0, 140)}`)}`);
    }
    if (Object.hasOwn(labels, key)) throw invalidArgument(`placement label ${key} given twice`);
    labels[key] = value;
  }
  const some = Object.keys(labels).length > 0;
  return host || some ? { ...(host ? { host } : {}), ...(some ? { labels } : {}) } : undefined;
}

// ---- Fault / ActiveFault ----

/** Float64 fields: the builder and reader only know integers, so go through the bits. */
const f64 = new Float64Array(1);
const f64Bits = new BigUint64Array(f64.buffer);
const setF64 = (b: MessageBuilder, at: number, value: number): void => {
  f64[0] = value;
  b.setU64(at, f64Bits[0]!);
};
const readF64 = (s: StructReader, byteOffset: number): number => {
  f64Bits[0] = readU64(s, byteOffset);
  return f64[0]!;
};

// The union tags of schema/worker.capnp's Fault, in the order FAULT_KINDS lists the one fault model's kinds.
const FAULT_TAGS = new Map<FaultName, number>(FAULT_KINDS.map((kind, tag) => [kind, tag]));

/** Writes a Fault struct and points `at` to it. */
export function writeFault(b: MessageBuilder, at: number, fault: FaultInput): void {
  const s = b.initStruct(at, Size.Fault[0], Size.Fault[1]);
  const p = s + Size.Fault[0] * 8;
  b.setU32(s, fault.durationMs ?? 0);
  b.setU16(s + 4, FAULT_TAGS.get(fault.kind)!);
  switch (fault.kind) {
    case "partition": {
      const d = b.initStruct(p, Size.Partition[0], Size.Partition[1]);
      b.setTextList(d + 8, fault.cidrs);
      b.setU16(d, DIRECTIONS.indexOf(fault.direction ?? "both"));
      break;
    }
    case "loss": {
      const d = b.initStruct(p, Size.Loss[0], Size.Loss[1]);
      setF64(b, d, fault.percent);
      b.setTextList(d + 8, fault.cidrs ?? []);
      break;
    }
    case "delay": {
      const d = b.initStruct(p, Size.Delay[0], Size.Delay[1]);
      b.setU32(d, fault.ms);
      b.setU32(d + 4, fault.jitterMs);
      b.setTextList(d + 8, fault.cidrs ?? []);
      break;
    }
    case "bandwidth":
      b.setU64(b.initStruct(p, Size.Bandwidth[0], Size.Bandwidth[1]), BigInt(fault.kbitPerSecond));
      break;
    case "diskErrors": {
      const d = b.initStruct(p, Size.DiskErrors[0], Size.DiskErrors[1]);
      b.setU16(d, DISK_OPS.indexOf(fault.op));
      b.setU32(d + 4, fault.errno);
      b.setU64(d + 8, BigInt(fault.afterOps));
      setF64(b, d + 16, fault.probabilityPercent);
      break;
    }
    case "cpuThrottle":
      b.setU32(b.initStruct(p, Size.CpuThrottle[0], Size.CpuThrottle[1]), fault.percent);
      break;
    case "killProcess":
    case "freezeProcess": {
      const d = b.initStruct(p, Size.GuestProcess[0], Size.GuestProcess[1]);
      b.setU32(d, fault.pid);
      if (fault.kind === "killProcess") b.setU32(d + 4, fault.signal);
      b.setText(d + Size.GuestProcess[0] * 8, fault.name);
      break;
    }
    case "clockShift":
      b.setU64(b.initStruct(p, Size.ClockShift[0], Size.ClockShift[1]), BigInt.asUintN(64, BigInt(fault.deltaMs)));
      break;
    case "clockStrobe": {
      const d = b.initStruct(p, Size.ClockStrobe[0], Size.ClockStrobe[1]);
      b.setU64(d, BigInt.asUintN(64, BigInt(fault.deltaMs)));
      b.setU32(d + 8, fault.periodMs);
      break;
    }
    case "fillDisk":
      b.setText(b.initStruct(p, Size.FillDisk[0], Size.FillDisk[1]), fault.dir);
      break;
    default:
      break; // Void members
  }
}

/** Reads a Fault; INVALID_ARGUMENT for a union member this worker does not know. */
export function readFault(s: StructReader | null): FaultInput {
  if (s === null) throw invalidArgument("fault is required");
  const durationMs = readU32(s, 0);
  const tag = readU16(s, 4);
  const kind = FAULT_KINDS[tag];
  const inner = readStruct(s, 0);
  const u64 = (offset: number) => (inner === null ? 0n : readU64(inner, offset));
  const u32 = (offset: number) => (inner === null ? 0 : readU32(inner, offset));
  const cidrs = () => (inner === null ? [] : readTextList(inner, 0, MAX_LIST_LENGTH.cidrs));
  const peerCidrs = () => (cidrs().length ? { cidrs: cidrs() } : {});
  switch (kind) {
    // Defaults (both ways, every peer) are left absent, as a client that predates them sends them.
    case "partition": {
      const wire = inner === null ? 0 : readU16(inner, 0);
      // An unknown value (a newer peer's) is refused by the fault model, not taken for "both".
      const direction = wire === 0 ? undefined : (DIRECTIONS[wire] ?? ("unknown" as Direction));
      return { kind, durationMs, cidrs: cidrs(), ...(direction ? { direction } : {}) };
    }
    case "loss":
      return { kind, durationMs, percent: inner === null ? 0 : readF64(inner, 0), ...peerCidrs() };
    case "delay":
      return { kind, durationMs, ms: u32(0), jitterMs: u32(4), ...peerCidrs() };
    case "bandwidth":
      return { kind, durationMs, kbitPerSecond: Number(u64(0)) };
    case "diskErrors":
      return {
        kind,
        durationMs,
        op: DISK_OPS[inner === null ? 0 : readU16(inner, 0)] ?? "readWrite",
        errno: u32(4),
        afterOps: Number(u64(8)),
        probabilityPercent: inner === null ? 0 : readF64(inner, 16),
      };
    case "cpuThrottle":
      return { kind, durationMs, percent: u32(0) };
    case "killProcess":
      return { kind, durationMs, pid: u32(0), name: inner === null ? "" : readText(inner, 0), signal: u32(4) };
    case "freezeProcess":
      return { kind, durationMs, pid: u32(0), name: inner === null ? "" : readText(inner, 0) };
    // Int64 fields: past 2^53 they lose precision, and the fault model refuses them anyway.
    case "clockShift":
      return { kind, durationMs, deltaMs: Number(BigInt.asIntN(64, u64(0))) };
    case "clockStrobe":
      return { kind, durationMs, deltaMs: Number(BigInt.asIntN(64, u64(0))), periodMs: u32(8) };
    case "fillDisk":
      return { kind, durationMs, dir: inner === null ? "" : readText(inner, 0) };
    case undefined:
      throw invalidArgument(`unknown fault kind (union tag ${tag})`);
    default:
      return { kind, durationMs };
  }
}

export function writeActiveFaultList(b: MessageBuilder, at: number, faults: readonly ActiveFault[]): void {
  writeStructs(b, at, faults, Size.ActiveFault, (s, p, fault) => {
    b.setText(p, fault.id);
    b.setText(p + 8, fault.kind);
    b.setText(p + 16, fault.description);
    b.setU64(s, fault.injectedAtMs);
    b.setU64(s + 8, fault.expiresAtMs);
  });
}

export function readActiveFaultList(s: StructReader, index: number): ActiveFault[] {
  return readStructs(s, index, MAX_LIST_LENGTH.faults, (e) => ({
    id: readText(e, 0),
    kind: readText(e, 1) as ActiveFault["kind"],
    description: readText(e, 2),
    injectedAtMs: readU64(e, 0),
    expiresAtMs: readU64(e, 8),
  }));
}

// ---- ExecCommand / ExecResult ----

/** Longest argv or env list decoded; the core refuses far shorter ones (core/exec.ts). */
const MAX_EXEC_LIST = 4096;

export function writeExecCommand(b: MessageBuilder, at: number, command: ExecRequest): void {
  const s = b.initStruct(at, Size.ExecCommand[0], Size.ExecCommand[1]);
  const p = s + Size.ExecCommand[0] * 8;
  b.setTextList(p, command.argv);
  b.setTextList(p + 8, command.env ?? []);
  b.setText(p + 16, command.cwd ?? "");
  b.setData(p + 24, command.stdin ?? new Uint8Array());
  b.setU32(s, command.timeoutMs ?? 0);
}

export function readExecCommand(s: StructReader | null): ExecRequest {
  if (s === null) throw invalidArgument("command is required");
  return {
    argv: readTextList(s, 0, MAX_EXEC_LIST),
    env: readTextList(s, 1, MAX_EXEC_LIST),
    cwd: readText(s, 2),
    stdin: readData(s, 3),
    timeoutMs: readU32(s, 0),
  };
}

export function writeExecResult(b: MessageBuilder, at: number, result: ExecResult): void {
  const s = b.initStruct(at, Size.ExecResult[0], Size.ExecResult[1]);
  const p = s + Size.ExecResult[0] * 8;
  b.setU32(s, result.exitCode >>> 0); // Int32 on the wire: two's complement
  b.setU32(s + 4, result.signal);
  b.setBool(s, 64, result.timedOut);
  b.setData(p, result.stdout);
  b.setData(p + 8, result.stderr);
  b.setBool(s, 65, result.stdoutTruncated);
  b.setBool(s, 66, result.stderrTruncated);
  b.setU64(s + 16, BigInt(result.durationMs));
}

export function readExecResult(s: StructReader | null): ExecResult {
  if (s === null) throw invalidArgument("exec result is missing");
  return {
    exitCode: readU32(s, 0) | 0,
    signal: readU32(s, 4),
    timedOut: readBool(s, 64),
    stdout: readData(s, 0),
    stderr: readData(s, 1),
    stdoutTruncated: readBool(s, 65),
    stderrTruncated: readBool(s, 66),
    durationMs: Number(readU64(s, 16)),
  };
}

// ---- files and processes ----

const FILE_TYPES: readonly FileType[] = ["file", "dir", "symlink", "other"];
const OUTPUT_STREAMS: readonly OutputStream[] = ["stdout", "stderr"];
/** Most entries one listDir answer decodes (the agent sends at most 4096). */
const MAX_DIR_ENTRIES = 65_536;

export const outputStreamToWire = (stream: OutputStream): number => OUTPUT_STREAMS.indexOf(stream);
export function outputStreamFromWire(value: number): OutputStream {
  const stream = OUTPUT_STREAMS[value];
  if (!stream) throw invalidArgument(`stream ${value} is neither stdout (0) nor stderr (1)`);
  return stream;
}

function writeFileStatAt(b: MessageBuilder, s: number, p: number, stat: FileStat): void {
  b.setText(p, stat.name);
  b.setU16(s, Math.max(0, FILE_TYPES.indexOf(stat.type)));
  b.setU32(s + 4, stat.mode);
  b.setU64(s + 8, BigInt(stat.size));
  b.setU64(s + 16, BigInt.asUintN(64, BigInt(stat.mtimeMs))); // Int64 on the wire
}

function readFileStatAt(s: StructReader): FileStat {
  return {
    name: readText(s, 0),
    type: FILE_TYPES[readU16(s, 0)] ?? "other",
    mode: readU32(s, 4),
    size: Number(readU64(s, 8)),
    mtimeMs: Number(BigInt.asIntN(64, readU64(s, 16))),
  };
}

export function writeFileStat(b: MessageBuilder, at: number, stat: FileStat): void {
  const s = b.initStruct(at, Size.FileStat[0], Size.FileStat[1]);
  writeFileStatAt(b, s, s + Size.FileStat[0] * 8, stat);
}

export function readFileStat(s: StructReader | null): FileStat {
  if (s === null) throw invalidArgument("stat is missing");
  return readFileStatAt(s);
}

export function writeFileStatList(b: MessageBuilder, at: number, entries: readonly FileStat[]): void {
  writeStructs(b, at, entries, Size.FileStat, (s, p, stat) => writeFileStatAt(b, s, p, stat));
}

export function readFileStatList(s: StructReader, index: number): FileStat[] {
  return readStructs(s, index, MAX_DIR_ENTRIES, readFileStatAt);
}

export function writeProcessCommand(b: MessageBuilder, at: number, command: ProcessStart): void {
  const s = b.initStruct(at, Size.ProcessCommand[0], Size.ProcessCommand[1]);
  const p = s + Size.ProcessCommand[0] * 8;
  b.setTextList(p, command.argv);
  b.setTextList(p + 8, command.env ?? []);
  b.setText(p + 16, command.cwd ?? "");
  b.setBool(s, 0, command.tty !== undefined);
  b.setU16(s + 2, command.tty?.rows ?? 0);
  b.setU16(s + 4, command.tty?.cols ?? 0);
}

export function readProcessCommand(s: StructReader | null): ProcessStart {
  if (s === null) throw invalidArgument("command is required");
  const command: ProcessStart = { argv: readTextList(s, 0, MAX_EXEC_LIST), env: readTextList(s, 1, MAX_EXEC_LIST), cwd: readText(s, 2) };
  if (readBool(s, 0)) command.tty = { rows: readU16(s, 2), cols: readU16(s, 4) };
  return command;
}

export function writeProcessStatus(b: MessageBuilder, at: number, status: ProcessStatus): void {
  const s = b.initStruct(at, Size.ProcessStatus[0], Size.ProcessStatus[1]);
  b.setU32(s, status.pid);
  b.setBool(s, 32, status.running);
  b.setU32(s + 8, status.exitCode >>> 0); // Int32 on the wire
  b.setU32(s + 12, status.signal);
}

export function readProcessStatus(s: StructReader | null): ProcessStatus {
  if (s === null) throw invalidArgument("process status is missing");
  return { pid: readU32(s, 0), running: readBool(s, 32), exitCode: readU32(s, 8) | 0, signal: readU32(s, 12) };
}
