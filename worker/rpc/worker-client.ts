// A typed Worker client mirroring WorkerApi; RPC exceptions come back as WorkerError.
import type {
  ActiveFault,
  ConsoleChunk,
  CreateVmOptions,
  ExecRequest,
  ExecResult,
  FaultInput,
  VmEvent,
  VmSpecInput,
  VmView,
} from "../core/api.js";
import { WorkerError } from "../core/errors.js";
import { type RemoteCapability, type RpcConnection, RpcException, type ContentWriter } from "./connection.js";
import { type ConnectOptions, connectRpc } from "./client.js";
import {
  Size,
  WORKER_INTERFACE_ID,
  WorkerMethod,
  readActiveFaultList,
  readExecResult,
  readRunningVm,
  readRunningVmList,
  readVmEventList,
  writeExecCommand,
  writeFault,
  writeSecrets,
  writeVmSpec,
} from "./worker-codec.js";
import { type StructReader, readData, readStruct, readText, readU64 } from "./wire.js";

const toWorkerError = (err: unknown): never => {
  if (err instanceof RpcException) throw WorkerError.fromReason(err.reason);
  throw err;
};

const params =
  (size: readonly [number, number], fill: (b: Parameters<ContentWriter>[0], s: number) => void): ContentWriter =>
  (b, at) =>
    fill(b, b.initStruct(at, size[0], size[1]));

export class WorkerClient {
  constructor(
    readonly connection: RpcConnection,
    private readonly cap: RemoteCapability,
  ) {}

  private call<T>(method: number, decode: (results: StructReader) => T, write?: ContentWriter, sizeHint?: number): Promise<T> {
    return this.connection.call(this.cap, WORKER_INTERFACE_ID, method, write, sizeHint).then((results) => {
      try {
        return decode(results);
      } catch (err) {
        if (err instanceof WorkerError) throw err;
        throw new WorkerError("INTERNAL", `malformed results: ${(err as Error).message}`, { cause: err });
      }
    }, toWorkerError);
  }

  listVms(): Promise<VmView[]> {
    return this.call(WorkerMethod.listVms, (r) => readRunningVmList(r, 0));
  }

  getVm(id: string): Promise<VmView> {
    return this.call(
      WorkerMethod.getVm,
      (r) => {
        const vm = readStruct(r, 0);
        if (vm === null) throw new WorkerError("INTERNAL", "getVm returned no vm");
        return readRunningVm(vm);
      },
      params(Size.IdParams, (b, s) => b.setText(s, id)),
    );
  }

  read(id: string, offset: bigint, maxBytes: number): Promise<ConsoleChunk> {
    return this.call(
      WorkerMethod.read,
      (r) => ({ data: readData(r, 0), nextOffset: readU64(r, 0) }),
      params(Size.ReadParams, (b, s) => {
        b.setText(s + 16, id);
        b.setU64(s, offset);
        b.setU32(s + 8, maxBytes);
      }),
    );
  }

  createVm(spec: VmSpecInput, options: CreateVmOptions = {}): Promise<string> {
    const secrets = options.secrets ?? [];
    const hint = 1024 + secrets.reduce((n, s) => n + s.value.length + s.name.length * 3 + 32, 0);
    return this.call(
      WorkerMethod.createVm,
      (r) => readText(r, 0),
      params(Size.CreateVmParams, (b, s) => {
        writeVmSpec(b, s + 8, spec);
        writeSecrets(b, s + 16, secrets);
        b.setU32(s, options.ttlSeconds ?? 0);
      }),
      hint,
    );
  }

  async deleteVm(id: string): Promise<void> {
    await this.call(
      WorkerMethod.deleteVm,
      () => undefined,
      params(Size.IdParams, (b, s) => b.setText(s, id)),
    );
  }

  events(sinceSeq: bigint, maxEvents: number, waitMs: number): Promise<{ events: VmEvent[]; nextSeq: bigint }> {
    return this.call(
      WorkerMethod.events,
      (r) => ({ events: readVmEventList(r, 0), nextSeq: readU64(r, 0) }),
      params(Size.EventsParams, (b, s) => {
        b.setU64(s, sinceSeq);
        b.setU32(s + 8, maxEvents);
        b.setU32(s + 12, waitMs);
      }),
    );
  }

  injectFault(id: string, fault: FaultInput): Promise<string> {
    return this.call(
      WorkerMethod.injectFault,
      (r) => readText(r, 0),
      params(Size.InjectFaultParams, (b, s) => {
        b.setText(s, id);
        writeFault(b, s + 8, fault);
      }),
      1024 + (fault.kind === "partition" ? fault.cidrs.length * 64 : 0),
    );
  }

  async clearFault(id: string, faultId: string): Promise<void> {
    await this.call(
      WorkerMethod.clearFault,
      () => undefined,
      params(Size.ClearFaultParams, (b, s) => {
        b.setText(s, id);
        b.setText(s + 8, faultId);
      }),
    );
  }

  listFaults(id: string): Promise<ActiveFault[]> {
    return this.call(
      WorkerMethod.listFaults,
      (r) => readActiveFaultList(r, 0),
      params(Size.IdParams, (b, s) => b.setText(s, id)),
    );
  }

  exec(id: string, command: ExecRequest): Promise<ExecResult> {
    const textBytes = [...command.argv, ...(command.env ?? []), command.cwd ?? ""].reduce((sum, text) => sum + text.length * 3 + 16, 0);
    return this.call(
      WorkerMethod.exec,
      (r) => readExecResult(readStruct(r, 0)),
      params(Size.ExecParams, (b, s) => {
        b.setText(s, id);
        writeExecCommand(b, s + 8, command);
      }),
      1024 + textBytes + (command.stdin?.length ?? 0),
    );
  }

  close(): void {
    this.connection.close();
  }
}

/** Connects to a worker at "/path", "unix:/path" or "tcp://host:port". */
export async function connectWorker(address: string, options?: ConnectOptions): Promise<WorkerClient> {
  const { connection, bootstrap } = await connectRpc(address, options);
  return new WorkerClient(connection, bootstrap);
}
