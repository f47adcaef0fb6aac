// A typed Worker client mirroring WorkerApi; RPC exceptions come back as WorkerError. It speaks
// through a WorkerCaller, so the same client works over a stream connection or over NATS.
import type {
  ActiveFault,
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
} from "../core/api.js";
import { WorkerError } from "../core/errors.js";
import { type RemoteCapability, type RpcConnection, RpcException, type ContentWriter } from "./connection.js";
import { type ConnectOptions, connectRpc } from "./client.js";
import {
  Size,
  WORKER_INTERFACE_ID,
  WorkerMethod,
  readActiveFaultList,
  outputStreamToWire,
  readExecResult,
  readFileStat,
  readFileStatList,
  readProcessStatus,
  readRunningVm,
  readRunningVmList,
  readVmEventList,
  writeExecCommand,
  writeFault,
  writeProcessCommand,
  writeSecrets,
  writeVmSpec,
} from "./worker-codec.js";
import { type StructReader, readBool, readData, readStruct, readText, readU32, readU64 } from "./wire.js";

/**
 * One Cap'n Proto call: params written by `write` (root = the params struct), resolving with the
 * results struct. Failures are RpcException (mapped to WorkerError here) or WorkerError.
 */
export interface WorkerCaller {
  call(interfaceId: bigint, method: number, write?: ContentWriter, sizeHint?: number): Promise<StructReader>;
  close(): void;
}

/** Calls on a capability of a stream RpcConnection. */
export function connectionCaller(connection: RpcConnection, cap: RemoteCapability): WorkerCaller {
  return {
    call: (interfaceId, method, write, sizeHint) => connection.call(cap, interfaceId, method, write, sizeHint),
    close: () => connection.close(),
  };
}

const toWorkerError = (err: unknown): never => {
  if (err instanceof RpcException) throw WorkerError.fromReason(err.reason);
  throw err;
};

const params =
  (size: readonly [number, number], fill: (b: Parameters<ContentWriter>[0], s: number) => void): ContentWriter =>
  (b, at) =>
    fill(b, b.initStruct(at, size[0], size[1]));

export class WorkerClient {
  constructor(private readonly caller: WorkerCaller) {}

  private call<T>(method: number, decode: (results: StructReader) => T, write?: ContentWriter, sizeHint?: number): Promise<T> {
    return this.caller.call(WORKER_INTERFACE_ID, method, write, sizeHint).then((results) => {
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
        b.setU32(s + 4, options.waitReadyMs ?? 0);
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

  writeFile(id: string, write: FileWriteInput): Promise<{ size: number }> {
    return this.call(
      WorkerMethod.writeFile,
      (r) => ({ size: Number(readU64(r, 0)) }),
      params(Size.WriteFileParams, (b, s) => {
        b.setText(s + 16, id);
        b.setText(s + 24, write.path);
        b.setData(s + 32, write.data);
        b.setU64(s, BigInt(write.offset));
        b.setU32(s + 8, write.mode ?? 0);
        b.setBool(s, 96, write.truncate ?? false);
      }),
      1024 + write.path.length * 3 + write.data.length,
    );
  }

  readFile(id: string, path: string, offset: number, maxBytes: number): Promise<FileChunk> {
    return this.call(
      WorkerMethod.readFile,
      (r) => ({ data: readData(r, 0), size: Number(readU64(r, 0)), eof: readBool(r, 64) }),
      params(Size.ReadFileParams, (b, s) => {
        b.setText(s + 16, id);
        b.setText(s + 24, path);
        b.setU64(s, BigInt(offset));
        b.setU32(s + 8, maxBytes);
      }),
    );
  }

  statFile(id: string, path: string): Promise<FileStat> {
    return this.call(
      WorkerMethod.statFile,
      (r) => readFileStat(readStruct(r, 0)),
      params(Size.StatFileParams, (b, s) => {
        b.setText(s, id);
        b.setText(s + 8, path);
      }),
    );
  }

  listDir(id: string, path: string, offset: number): Promise<DirListing> {
    return this.call(
      WorkerMethod.listDir,
      (r) => ({ entries: readFileStatList(r, 0), truncated: readBool(r, 0) }),
      params(Size.ListDirParams, (b, s) => {
        b.setText(s + 8, id);
        b.setText(s + 16, path);
        b.setU32(s, offset);
      }),
    );
  }

  startProcess(id: string, command: ProcessStart): Promise<number> {
    const textBytes = [...command.argv, ...(command.env ?? []), command.cwd ?? ""].reduce((sum, text) => sum + text.length * 3 + 16, 0);
    return this.call(
      WorkerMethod.startProcess,
      (r) => readU32(r, 0),
      params(Size.StartProcessParams, (b, s) => {
        b.setText(s, id);
        writeProcessCommand(b, s + 8, command);
      }),
      1024 + textBytes,
    );
  }

  readProcess(id: string, pid: number, stream: OutputStream, offset: number, maxBytes: number, waitMs: number): Promise<ProcessOutput> {
    return this.call(
      WorkerMethod.readProcess,
      (r) => ({ data: readData(r, 0), offset: Number(readU64(r, 0)), nextOffset: Number(readU64(r, 8)), eof: readBool(r, 128) }),
      params(Size.ReadProcessParams, (b, s) => {
        b.setText(s + 24, id);
        b.setU32(s, pid);
        b.setU16(s + 4, outputStreamToWire(stream));
        b.setU64(s + 8, BigInt(offset));
        b.setU32(s + 16, maxBytes);
        b.setU32(s + 20, waitMs);
      }),
    );
  }

  async writeProcess(id: string, pid: number, data: Uint8Array, closeStdin: boolean): Promise<void> {
    await this.call(
      WorkerMethod.writeProcess,
      () => undefined,
      params(Size.WriteProcessParams, (b, s) => {
        b.setText(s + 8, id);
        b.setU32(s, pid);
        b.setData(s + 16, data);
        b.setBool(s, 32, closeStdin);
      }),
      1024 + data.length,
    );
  }

  async signalProcess(id: string, pid: number, signal: number): Promise<void> {
    await this.call(
      WorkerMethod.signalProcess,
      () => undefined,
      params(Size.SignalProcessParams, (b, s) => {
        b.setText(s + 8, id);
        b.setU32(s, pid);
        b.setU32(s + 4, signal);
      }),
    );
  }

  waitProcess(id: string, pid: number, waitMs: number): Promise<ProcessStatus> {
    return this.call(
      WorkerMethod.waitProcess,
      (r) => readProcessStatus(readStruct(r, 0)),
      params(Size.WaitProcessParams, (b, s) => {
        b.setText(s + 8, id);
        b.setU32(s, pid);
        b.setU32(s + 4, waitMs);
      }),
    );
  }

  async resizeProcess(id: string, pid: number, rows: number, cols: number): Promise<void> {
    await this.call(
      WorkerMethod.resizeProcess,
      () => undefined,
      params(Size.ResizeProcessParams, (b, s) => {
        b.setText(s + 8, id);
        b.setU32(s, pid);
        b.setU16(s + 4, rows);
        b.setU16(s + 6, cols);
      }),
    );
  }

  close(): void {
    this.caller.close();
  }
}

/** Connects to a worker at "/path", "unix:/path" or "tcp://host:port". */
export async function connectWorker(address: string, options?: ConnectOptions): Promise<WorkerClient> {
  const { connection, bootstrap } = await connectRpc(address, options);
  return new WorkerClient(connectionCaller(connection, bootstrap));
}
