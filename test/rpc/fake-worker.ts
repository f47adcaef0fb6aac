// An in-memory WorkerApi for RPC tests: records what arrived, answers like the core would.
import type {
  ActiveFault,
  CallerInfo,
  ConsoleChunk,
  CreateVmOptions,
  ExecRequest,
  ExecResult,
  FaultInput,
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
    status: (["creating", "running", "paused", "stopping", "stopped", "failed"] as const)[i % 6]!,
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

  async deleteVm(id: string): Promise<void> {
    const index = this.vms.findIndex((v) => v.id === id);
    if (index < 0) throw notFound(`no vm ${id}`);
    this.vms.splice(index, 1);
  }
}
