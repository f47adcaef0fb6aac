// The Worker interface of schema/worker.capnp served from a WorkerApi: translation only.
// Params are decoded synchronously (the message buffer is only borrowed), results encoded on return.
import type { CallerInfo, WorkerApi } from "../core/api.js";
import { invalidArgument } from "../core/errors.js";
import { MAX_IDEMPOTENCY_KEY_BYTES } from "../core/idempotency.js";
import type { CallContext, ContentWriter, InterfaceDispatcher, MethodEntry } from "./connection.js";
import {
  RUNNING_VM_BYTES_ESTIMATE,
  Size,
  WORKER_INTERFACE_ID,
  WorkerMethod,
  outputStreamFromWire,
  readExecCommand,
  readFault,
  readPlacement,
  readProcessCommand,
  readSecrets,
  readVmSpec,
  writeActiveFaultList,
  writeExecResult,
  writeFileStat,
  writeFileStatList,
  writeProcessStatus,
  writeRunningVm,
  writeRunningVmList,
  writeVmEventList,
} from "./worker-codec.js";
import { type MessageBuilder, type StructReader, readBool, readData, readStruct, readText, readU16, readU32, readU64 } from "./wire.js";

const caller = (context: CallContext): CallerInfo => ({
  connection: context.connection,
  requestId: context.requestId,
  signal: context.signal,
  describe: context.describePeer,
});

/** A results struct of the given size, filled by `fill` (which receives its data section offset). */
function results(size: readonly [number, number], fill?: (b: MessageBuilder, s: number) => void, sizeHint?: number): ContentWriter {
  const write: ContentWriter = (b, at) => {
    const s = b.initStruct(at, size[0], size[1]);
    fill?.(b, s);
  };
  write.sizeHint = sizeHint;
  return write;
}

export function workerDispatcher(api: WorkerApi): InterfaceDispatcher {
  const methods: MethodEntry[] = [];
  const define = (ordinal: number, name: string, handle: (params: StructReader, context: CallContext) => Promise<ContentWriter>) => {
    methods[ordinal] = { name, handle };
  };

  define(WorkerMethod.listVms, "listVms", async (_params, context) => {
    const vms = await api.listVms(caller(context));
    return results(Size.ListVmsResults, (b, s) => writeRunningVmList(b, s, vms), 256 + vms.length * RUNNING_VM_BYTES_ESTIMATE);
  });

  define(WorkerMethod.read, "read", async (params, context) => {
    const id = readText(params, 0);
    const offset = readU64(params, 0);
    const maxBytes = readU32(params, 8);
    const chunk = await api.read(id, offset, maxBytes, caller(context));
    return results(
      Size.ReadResults,
      (b, s) => {
        b.setData(s + 8, chunk.data);
        b.setU64(s, chunk.nextOffset);
      },
      256 + chunk.data.length,
    );
  });

  define(WorkerMethod.createVm, "createVm", async (params, context) => {
    const spec = readVmSpec(readStruct(params, 0));
    const secrets = readSecrets(params, 1);
    const ttlSeconds = readU32(params, 0);
    const waitReadyMs = readU32(params, 4);
    const idempotencyKey = readText(params, 2);
    // Bounded here, before the call: a key the core would refuse anyway is not kept a moment longer.
    if (idempotencyKey.length > MAX_IDEMPOTENCY_KEY_BYTES) {
      throw invalidArgument(`idempotencyKey is ${idempotencyKey.length} bytes (at most ${MAX_IDEMPOTENCY_KEY_BYTES})`);
    }
    const placement = readPlacement(readStruct(params, 3));
    const options = {
      secrets,
      ttlSeconds,
      waitReadyMs,
      ...(idempotencyKey ? { idempotencyKey } : {}),
      ...(placement ? { placement } : {}),
    };
    const id = await api.createVm(spec, options, caller(context));
    return results(Size.CreateVmResults, (b, s) => b.setText(s, id));
  });

  define(WorkerMethod.deleteVm, "deleteVm", async (params, context) => {
    await api.deleteVm(readText(params, 0), caller(context));
    return results([0, 0]);
  });

  define(WorkerMethod.getVm, "getVm", async (params, context) => {
    const vm = await api.getVm(readText(params, 0), caller(context));
    return results(Size.GetVmResults, (b, s) => {
      const [dataWords, ptrCount] = Size.RunningVm;
      writeRunningVm(b, b.initStruct(s, dataWords, ptrCount), vm);
    });
  });

  define(WorkerMethod.events, "events", async (params, context) => {
    const sinceSeq = readU64(params, 0);
    const maxEvents = readU32(params, 8);
    const waitMs = readU32(params, 12);
    const { events, nextSeq } = await api.events(sinceSeq, maxEvents, waitMs, caller(context));
    return results(
      Size.EventsResults,
      (b, s) => {
        writeVmEventList(b, s + 8, events);
        b.setU64(s, nextSeq);
      },
      256 + events.length * 128,
    );
  });

  define(WorkerMethod.injectFault, "injectFault", async (params, context) => {
    const id = readText(params, 0);
    const fault = readFault(readStruct(params, 1));
    const faultId = await api.injectFault(id, fault, caller(context));
    return results(Size.InjectFaultResults, (b, s) => b.setText(s, faultId));
  });

  define(WorkerMethod.clearFault, "clearFault", async (params, context) => {
    await api.clearFault(readText(params, 0), readText(params, 1), caller(context));
    return results([0, 0]);
  });

  define(WorkerMethod.listFaults, "listFaults", async (params, context) => {
    const faults = await api.listFaults(readText(params, 0), caller(context));
    return results(Size.ListFaultsResults, (b, s) => writeActiveFaultList(b, s, faults), 256 + faults.length * 128);
  });

  define(WorkerMethod.exec, "exec", async (params, context) => {
    const result = await api.exec(readText(params, 0), readExecCommand(readStruct(params, 1)), caller(context));
    return results(Size.ExecResults, (b, s) => writeExecResult(b, s, result), 256 + result.stdout.length + result.stderr.length);
  });

  // Offsets beyond 2^53 are refused by the core's checks: Number() keeps them unsafe, not wrapped.
  define(WorkerMethod.writeFile, "writeFile", async (params, context) => {
    const write = {
      path: readText(params, 1),
      data: readData(params, 2),
      offset: Number(readU64(params, 0)),
      mode: readU32(params, 8),
      truncate: readBool(params, 96),
    };
    const { size } = await api.writeFile(readText(params, 0), write, caller(context));
    return results(Size.WriteFileResults, (b, s) => b.setU64(s, BigInt(size)));
  });

  define(WorkerMethod.readFile, "readFile", async (params, context) => {
    const offset = Number(readU64(params, 0));
    const chunk = await api.readFile(readText(params, 0), readText(params, 1), offset, readU32(params, 8), caller(context));
    return results(
      Size.ReadFileResults,
      (b, s) => {
        b.setData(s + 16, chunk.data);
        b.setU64(s, BigInt(chunk.size));
        b.setBool(s, 64, chunk.eof);
      },
      256 + chunk.data.length,
    );
  });

  define(WorkerMethod.statFile, "statFile", async (params, context) => {
    const stat = await api.statFile(readText(params, 0), readText(params, 1), caller(context));
    return results(Size.StatFileResults, (b, s) => writeFileStat(b, s, stat));
  });

  define(WorkerMethod.listDir, "listDir", async (params, context) => {
    const listing = await api.listDir(readText(params, 0), readText(params, 1), readU32(params, 0), caller(context));
    return results(
      Size.ListDirResults,
      (b, s) => {
        writeFileStatList(b, s + 8, listing.entries);
        b.setBool(s, 0, listing.truncated);
      },
      256 + listing.entries.length * 128,
    );
  });

  define(WorkerMethod.startProcess, "startProcess", async (params, context) => {
    const pid = await api.startProcess(readText(params, 0), readProcessCommand(readStruct(params, 1)), caller(context));
    return results(Size.StartProcessResults, (b, s) => b.setU32(s, pid));
  });

  define(WorkerMethod.readProcess, "readProcess", async (params, context) => {
    const stream = outputStreamFromWire(readU16(params, 4));
    const offset = Number(readU64(params, 8));
    const output = await api.readProcess(
      readText(params, 0),
      readU32(params, 0),
      stream,
      offset,
      readU32(params, 16),
      readU32(params, 20),
      caller(context),
    );
    return results(
      Size.ReadProcessResults,
      (b, s) => {
        b.setData(s + 24, output.data);
        b.setU64(s, BigInt(output.offset));
        b.setU64(s + 8, BigInt(output.nextOffset));
        b.setBool(s, 128, output.eof);
      },
      256 + output.data.length,
    );
  });

  define(WorkerMethod.writeProcess, "writeProcess", async (params, context) => {
    await api.writeProcess(readText(params, 0), readU32(params, 0), readData(params, 1), readBool(params, 32), caller(context));
    return results([0, 0]);
  });

  define(WorkerMethod.signalProcess, "signalProcess", async (params, context) => {
    await api.signalProcess(readText(params, 0), readU32(params, 0), readU32(params, 4), caller(context));
    return results([0, 0]);
  });

  define(WorkerMethod.waitProcess, "waitProcess", async (params, context) => {
    const status = await api.waitProcess(readText(params, 0), readU32(params, 0), readU32(params, 4), caller(context));
    return results(Size.WaitProcessResults, (b, s) => writeProcessStatus(b, s, status));
  });

  define(WorkerMethod.resizeProcess, "resizeProcess", async (params, context) => {
    await api.resizeProcess(readText(params, 0), readU32(params, 0), readU16(params, 4), readU16(params, 6), caller(context));
    return results([0, 0]);
  });

  return { interfaceId: WORKER_INTERFACE_ID, name: "Worker", methods };
}
