// Wraps a WorkerApi with metrics, request-scoped logs and the audit log, so the service
// and the RPC layer stay free of both.
import type { Logger } from "pino";
import type { CallerInfo, ExecResult, WorkerApi } from "../core/api.js";
import { asWorkerError } from "../core/errors.js";
import type { AuditLog } from "./audit.js";
import type { WorkerMetrics } from "./metrics.js";

// Calls the audit log records: those that change a VM, and those that reach into the guest (exec,
// files, processes). Not a process's reads, waits, writes or resizes: a terminal makes many of
// them, and the process's start is audited.
const MUTATING = new Set([
  "createVm",
  "deleteVm",
  "injectFault",
  "clearFault",
  "exec",
  "writeFile",
  "readFile",
  "statFile",
  "listDir",
  "startProcess",
  "signalProcess",
]);

export function instrument(api: WorkerApi, metrics: WorkerMetrics, audit: AuditLog | undefined, logger: Logger): WorkerApi {
  /** `details` go into the audit entry of a mutating call (what fault, which fault id). */
  async function observe<T>(
    method: keyof WorkerApi,
    caller: CallerInfo | undefined,
    vmId: string | undefined,
    run: () => Promise<T>,
    /** Never env values, stdin or output: exec is audited by its argv[0] and its exit. */
    details?: { fault?: string; faultSpec?: unknown; faultId?: string; command?: string; path?: string; pid?: number; signal?: number },
  ): Promise<T> {
    const started = performance.now();
    // Looked up while the caller is surely still connected; ready long before most calls end.
    // A caller that cannot be described is audited without a description; the call itself goes on.
    const describing = MUTATING.has(method) ? caller?.describe?.().catch(() => undefined) : undefined;
    let code = "OK";
    let result: T | undefined;
    try {
      result = await run();
      return result;
    } catch (err) {
      code = asWorkerError(err).code;
      throw err;
    } finally {
      const seconds = (performance.now() - started) / 1000;
      metrics.rpcCalls.inc({ method, code });
      metrics.callSeconds.observe({ method }, seconds);
      if (code !== "OK") metrics.rpcErrors.inc({ method, code });
      if (code === "OK" && method === "createVm") metrics.createSeconds.observe(seconds);
      if (code === "OK" && method === "deleteVm") metrics.deleteSeconds.observe(seconds);
      if (MUTATING.has(method)) {
        const id = vmId ?? (typeof result === "string" ? result : undefined);
        const faultId = details?.faultId ?? (method === "injectFault" && typeof result === "string" ? result : undefined);
        const entry = {
          time: new Date().toISOString(),
          caller: (await describing) ?? caller?.connection ?? "in-process",
          requestId: caller?.requestId ?? "",
          method,
          vmId: id,
          code,
          durationMs: Math.round(seconds * 1000),
          ...(details?.fault ? { fault: details.fault, faultSpec: details.faultSpec } : {}),
          ...(faultId ? { faultId } : {}),
          ...(details?.command !== undefined ? { command: details.command } : {}),
          ...(details?.path !== undefined ? { path: details.path } : {}),
          ...(details?.pid !== undefined ? { pid: details.pid } : {}),
          ...(details?.signal !== undefined ? { signal: details.signal } : {}),
          ...(method === "startProcess" && typeof result === "number" ? { pid: result } : {}),
          ...(method === "exec" && isExecResult(result)
            ? { exitCode: result.exitCode, signal: result.signal, timedOut: result.timedOut }
            : {}),
        };
        audit?.write(entry);
        logger.info({ ...entry, vmId: id }, "call");
      }
    }
  }
  return {
    listVms: (caller) => observe("listVms", caller, undefined, () => api.listVms(caller)),
    getVm: (id, caller) => observe("getVm", caller, id, () => api.getVm(id, caller)),
    read: (id, offset, maxBytes, caller) => observe("read", caller, id, () => api.read(id, offset, maxBytes, caller)),
    createVm: (spec, options, caller) => observe("createVm", caller, undefined, () => api.createVm(spec, options, caller)),
    deleteVm: (id, caller) => observe("deleteVm", caller, id, () => api.deleteVm(id, caller)),
    events: (since, max, waitMs, caller) => observe("events", caller, undefined, () => api.events(since, max, waitMs, caller)),
    injectFault: (id, fault, caller) =>
      observe("injectFault", caller, id, () => api.injectFault(id, fault, caller), { fault: fault.kind, faultSpec: fault }),
    clearFault: (id, faultId, caller) => observe("clearFault", caller, id, () => api.clearFault(id, faultId, caller), { faultId }),
    listFaults: (id, caller) => observe("listFaults", caller, id, () => api.listFaults(id, caller)),
    exec: (id, command, caller) => observe("exec", caller, id, () => api.exec(id, command, caller), { command: command.argv[0] ?? "" }),
    writeFile: (id, write, caller) => observe("writeFile", caller, id, () => api.writeFile(id, write, caller), { path: write.path }),
    readFile: (id, path, offset, maxBytes, caller) =>
      observe("readFile", caller, id, () => api.readFile(id, path, offset, maxBytes, caller), { path }),
    statFile: (id, path, caller) => observe("statFile", caller, id, () => api.statFile(id, path, caller), { path }),
    listDir: (id, path, offset, caller) => observe("listDir", caller, id, () => api.listDir(id, path, offset, caller), { path }),
    startProcess: (id, request, caller) =>
      observe("startProcess", caller, id, () => api.startProcess(id, request, caller), { command: request.argv[0] ?? "" }),
    readProcess: (id, pid, stream, offset, maxBytes, waitMs, caller) =>
      observe("readProcess", caller, id, () => api.readProcess(id, pid, stream, offset, maxBytes, waitMs, caller)),
    writeProcess: (id, pid, data, closeStdin, caller) =>
      observe("writeProcess", caller, id, () => api.writeProcess(id, pid, data, closeStdin, caller)),
    signalProcess: (id, pid, signal, caller) =>
      observe("signalProcess", caller, id, () => api.signalProcess(id, pid, signal, caller), { pid, signal }),
    waitProcess: (id, pid, waitMs, caller) => observe("waitProcess", caller, id, () => api.waitProcess(id, pid, waitMs, caller)),
    resizeProcess: (id, pid, rows, cols, caller) =>
      observe("resizeProcess", caller, id, () => api.resizeProcess(id, pid, rows, cols, caller)),
  };
}

function isExecResult(value: unknown): value is ExecResult {
  return typeof value === "object" && value !== null && "exitCode" in value && "signal" in value;
}
