// An in-memory WorkerApi for RPC tests: records what arrived, answers like the core would.
import type {
  ActiveFault,
  CallerInfo,
  ConsoleChunk,
  CreateVmOptions,
  DirListing,
  ExecRequest,
  ExecResult,
  FaultInput,
  FileChunk,
  FileStat,
  FileWriteInput,
  OutputStream,
  ProcessOutput,
  ProcessStart,
  ProcessStatus,
  VmEvent,
  VmSpecInput,
  VmView,
  WorkerApi,
} from "../../worker/core/api.js";
import { WorkerError, notFound } from "../../worker/core/errors.js";

export function sampleVm(i: number): VmView {
  return {
    id: `vm-${i.toString().padStart(6, "0")}`,
    hostname: `host-${i}`,
    // Every status, `lost` included, as cpp/sample.h sets them.
    status: (["creating", "running", "paused", "stopping", "stopped", "failed", "lost"] as const)[i % 7]!,
    failure: i % 6 === 5 ? `boot failed #${i}` : "",
    ip: `10.213.${(i >> 8) & 255}.${i & 255}`,
    mac: "52:54:00:12:34:56",
    cpu: 1 + (i % 4),
    memoryBytes: BigInt(256 + i) * 1024n * 1024n,
    specHash: "a".repeat(64),
    createdAtMs: 1_700_000_000_000n + BigInt(i),
    uptimeMs: BigInt(i * 1000),
    // Every counter distinct, one beyond 2^32, so a misplaced field shows.
    counters: {
      blockReadBytes: BigInt(i),
      blockWriteBytes: BigInt(i) * 2n + 1n,
      blockReadOps: BigInt(i) * 3n + 2n,
      blockWriteOps: BigInt(i) * 4n + 3n,
      netRxBytes: BigInt(i) * 5n + 4n,
      netTxBytes: BigInt(i) * 6n + 5n,
      netRxPackets: BigInt(i) * 7n + 6n,
      netTxPackets: 2n ** 40n + BigInt(i),
    },
    egressDrops: BigInt(i % 7),
    backend: "qemu",
    faults:
      i % 3 === 0
        ? [{ id: `f-${i}`, kind: "loss", description: `loss ${i}%`, injectedAtMs: 1_700_000_000_000n + BigInt(i), expiresAtMs: BigInt(i) }]
        : [],
    agentState: (["none", "connecting", "ready", "broken"] as const)[i % 4],
    agentReadyMs: i % 4 === 2 ? BigInt(2000 + i) : 0n,
    group: i % 2 === 1 ? `grp-${i % 3}` : "",
    origin: (["boot", "pool", "snapshot"] as const)[i % 3],
    host: i % 2 === 0 ? `h${i % 5}` : "",
    idempotencyKey: i % 4 === 1 ? `key ${i} ~!` : "",
  };
}

export interface CreateRecord {
  spec: VmSpecInput;
  options: CreateVmOptions;
  caller?: CallerInfo;
}

export class FakeWorker implements WorkerApi {
  vms: VmView[] = [];
  created: CreateRecord[] = [];
  /** Milliseconds getVm waits before answering (to keep calls in flight). */
  getVmDelayMs = 0;
  events: WorkerApi["events"] = async (sinceSeq, maxEvents) => {
    const events: VmEvent[] = [];
    for (let i = 0; i < Math.min(maxEvents, 3); i++) {
      events.push({ seq: sinceSeq + BigInt(i), vmId: "vm-1", status: "running", atMs: 1_700_000_000_000n, reason: `event ${i}` });
    }
    return { events, nextSeq: sinceSeq + BigInt(events.length) };
  };

  async listVms(): Promise<VmView[]> {
    return this.vms;
  }

  async getVm(id: string): Promise<VmView> {
    if (this.getVmDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.getVmDelayMs).unref());
    if (id === "throw-plain") throw new Error("plain failure");
    const vm = this.vms.find((v) => v.id === id);
    if (!vm) throw notFound(`no vm ${id}`);
    return vm;
  }

  async read(id: string, offset: bigint, maxBytes: number): Promise<ConsoleChunk> {
    if (id === "none") throw notFound(`no vm ${id}`);
    const data = Buffer.from(`console of ${id} from ${offset}`.slice(0, maxBytes));
    return { data, nextOffset: offset + BigInt(data.length) };
  }

  async createVm(spec: VmSpecInput, options: CreateVmOptions, caller?: CallerInfo): Promise<string> {
    if (spec.hostname === "") throw new WorkerError("INVALID_ARGUMENT", "hostname is required");
    this.created.push({ spec, options, caller });
    return `vm-created-${this.created.length}`;
  }

  injected: { id: string; fault: FaultInput }[] = [];

  async injectFault(id: string, fault: FaultInput): Promise<string> {
    if (id === "none") throw notFound(`no vm ${id}`);
    this.injected.push({ id, fault });
    return `fault-${this.injected.length}`;
  }

  async clearFault(id: string, faultId: string): Promise<void> {
    if (!this.injected.some((entry, i) => entry.id === id && `fault-${i + 1}` === faultId)) throw notFound(`no fault ${faultId}`);
  }

  async listFaults(id: string): Promise<ActiveFault[]> {
    return this.injected
      .map((entry, i) => ({ entry, id: `fault-${i + 1}` }))
      .filter(({ entry }) => entry.id === id)
      .map(({ entry, id: faultId }) => ({
        id: faultId,
        kind: entry.fault.kind,
        description: entry.fault.kind,
        injectedAtMs: 1n,
        expiresAtMs: 0n,
      }));
  }

  execs: { id: string; request: ExecRequest }[] = [];

  /** Answers from what it was asked, so a misplaced field shows: exit code = argc, stdout = stdin. */
  async exec(id: string, request: ExecRequest): Promise<ExecResult> {
    if (id === "vm-missing") throw notFound(`no vm ${id}`);
    this.execs.push({ id, request });
    return {
      exitCode: request.argv[0] === "crash" ? -1 : request.argv.length,
      signal: request.argv[0] === "crash" ? 11 : 0,
      timedOut: (request.timeoutMs ?? 0) === 1,
      stdout: request.stdin ?? new Uint8Array(),
      stderr: new TextEncoder().encode(`${request.cwd}|${(request.env ?? []).join(",")}`),
      stdoutTruncated: request.argv.includes("--big"),
      stderrTruncated: false,
      durationMs: 2 ** 33,
    };
  }

  /** Files and processes: every call as it arrived, in order. */
  guestCalls: { method: string; args: unknown[] }[] = [];

  private guest(method: string, id: string, ...args: unknown[]): void {
    if (id === "vm-missing") throw notFound(`no vm ${id}`);
    this.guestCalls.push({ method, args: [id, ...args] });
  }

  // Answers are made from what was asked, so a misplaced field shows.
  async writeFile(id: string, write: FileWriteInput): Promise<{ size: number }> {
    this.guest("writeFile", id, write);
    return { size: write.offset + write.data.length };
  }

  async readFile(id: string, path: string, offset: number, maxBytes: number): Promise<FileChunk> {
    this.guest("readFile", id, path, offset, maxBytes);
    return { data: new TextEncoder().encode(path), size: offset + maxBytes, eof: maxBytes === 7 };
  }

  async statFile(id: string, path: string): Promise<FileStat> {
    this.guest("statFile", id, path);
    return { name: path, type: "symlink", size: 2 ** 40, mode: 0o4755, mtimeMs: -5 };
  }

  async listDir(id: string, path: string, offset: number): Promise<DirListing> {
    this.guest("listDir", id, path, offset);
    const entries: FileStat[] = Array.from({ length: offset }, (_, i) => ({
      name: `${path}-${i}`,
      type: i % 2 ? "dir" : "file",
      size: i,
      mode: 0o600 + i,
      mtimeMs: 1_700_000_000_000 + i,
    }));
    return { entries, truncated: offset > 2 };
  }

  async startProcess(id: string, request: ProcessStart): Promise<number> {
    this.guest("startProcess", id, request);
    return 1000 + request.argv.length;
  }

  async readProcess(
    id: string,
    pid: number,
    stream: OutputStream,
    offset: number,
    maxBytes: number,
    waitMs: number,
  ): Promise<ProcessOutput> {
    this.guest("readProcess", id, pid, stream, offset, maxBytes, waitMs);
    const data = new TextEncoder().encode(stream);
    return { data, offset: offset + 1, nextOffset: offset + 1 + data.length, eof: waitMs === 0 };
  }

  async writeProcess(id: string, pid: number, data: Uint8Array, closeStdin: boolean): Promise<void> {
    this.guest("writeProcess", id, pid, data, closeStdin);
  }

  async signalProcess(id: string, pid: number, signal: number): Promise<void> {
    this.guest("signalProcess", id, pid, signal);
  }

  async waitProcess(id: string, pid: number, waitMs: number): Promise<ProcessStatus> {
    this.guest("waitProcess", id, pid, waitMs);
    return { pid, running: waitMs > 100, exitCode: -1, signal: waitMs % 64 };
  }

  async resizeProcess(id: string, pid: number, rows: number, cols: number): Promise<void> {
    this.guest("resizeProcess", id, pid, rows, cols);
  }

  async deleteVm(id: string): Promise<void> {
    const index = this.vms.findIndex((v) => v.id === id);
    if (index < 0) throw notFound(`no vm ${id}`);
    this.vms.splice(index, 1);
  }
}
