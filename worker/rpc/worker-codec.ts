// schema/worker.capnp and schema/common.capnp on the wire: struct layouts and codecs shared by
// the service and the client. Layouts from `capnp compile -ocapnp`; test/rpc/codec.test.ts checks
// them against the compiler and test/interop against the C++ implementation.
import { VM_STATUSES, type IoCounters, type SecretInput, type VmEvent, type VmSpecInput, type VmStatus, type VmView } from "../core/api.js";
import {
  type MessageBuilder,
  type StructReader,
  listStruct,
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
} as const;

/** Struct sizes: data words, pointer count. */
export const Size = {
  RunningVm: [5, 8],
  IoCounters: [8, 0],
  VmEvent: [3, 2],
  VmSpec: [2, 6],
  Secret: [0, 2],
  ListVmsResults: [0, 1],
  ReadParams: [2, 1],
  ReadResults: [1, 1],
  CreateVmParams: [1, 2],
  CreateVmResults: [0, 1],
  IdParams: [0, 1],
  GetVmResults: [0, 1],
  EventsParams: [2, 0],
  EventsResults: [1, 1],
} as const satisfies Record<string, readonly [number, number]>;

const statusFromWire = (value: number): VmStatus => VM_STATUSES[value] ?? "failed";
/**
 * Most elements a list may have before we decode it into objects: far above what the core accepts
 * (64 secrets, 256 domains), low enough that a small message cannot make us build millions of objects.
 */
export const MAX_LIST_LENGTH = { secrets: 1024, allowedDomains: 4096, vms: 100_000, events: 100_000 } as const;

const STATUS_CODES = new Map(VM_STATUSES.map((status, code) => [status, code]));
const statusToWire = (status: VmStatus): number => STATUS_CODES.get(status) ?? 0;

/** Bytes a RunningVm usually takes (struct, counters, texts): sizes result buffers up front. */
export const RUNNING_VM_BYTES_ESTIMATE = 360;

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
  };
}

export function writeRunningVmList(b: MessageBuilder, at: number, vms: readonly VmView[]): void {
  const [dataWords, ptrCount] = Size.RunningVm;
  const start = b.initStructList(at, vms.length, dataWords, ptrCount);
  const step = (dataWords + ptrCount) * 8;
  for (let i = 0; i < vms.length; i++) writeRunningVm(b, start + i * step, vms[i]!);
}

export function readRunningVmList(s: StructReader, index: number): VmView[] {
  const list = readStructList(s, index, MAX_LIST_LENGTH.vms);
  if (list === null) return [];
  const out: VmView[] = new Array(list.length);
  for (let i = 0; i < list.length; i++) out[i] = readRunningVm(listStruct(list, i));
  return out;
}

// ---- VmEvent ----

export function writeVmEventList(b: MessageBuilder, at: number, events: readonly VmEvent[]): void {
  const [dataWords, ptrCount] = Size.VmEvent;
  const start = b.initStructList(at, events.length, dataWords, ptrCount);
  const step = (dataWords + ptrCount) * 8;
  for (let i = 0; i < events.length; i++) {
    const s = start + i * step;
    const p = s + dataWords * 8;
    const event = events[i]!;
    b.setU64(s, event.seq);
    b.setText(p, event.vmId);
    b.setU16(s + 8, statusToWire(event.status));
    b.setU64(s + 16, event.atMs);
    b.setText(p + 8, event.reason);
  }
}

export function readVmEventList(s: StructReader, index: number): VmEvent[] {
  const list = readStructList(s, index, MAX_LIST_LENGTH.events);
  if (list === null) return [];
  const out: VmEvent[] = new Array(list.length);
  for (let i = 0; i < list.length; i++) {
    const e = listStruct(list, i);
    out[i] = { seq: readU64(e, 0), vmId: readText(e, 0), status: statusFromWire(readU16(e, 8)), atMs: readU64(e, 16), reason: readText(e, 1) };
  }
  return out;
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
  };
}

export function writeSecrets(b: MessageBuilder, at: number, secrets: readonly SecretInput[]): void {
  const start = b.initStructList(at, secrets.length, Size.Secret[0], Size.Secret[1]);
  for (let i = 0; i < secrets.length; i++) {
    const p = start + i * 16;
    b.setText(p, secrets[i]!.name);
    b.setData(p + 8, secrets[i]!.value);
  }
}

export function readSecrets(s: StructReader, index: number): SecretInput[] {
  const list = readStructList(s, index, MAX_LIST_LENGTH.secrets);
  if (list === null) return [];
  const out: SecretInput[] = new Array(list.length);
  for (let i = 0; i < list.length; i++) {
    const e = listStruct(list, i);
    out[i] = { name: readText(e, 0), value: readData(e, 1) };
  }
  return out;
}
