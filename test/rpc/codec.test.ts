// The codec's layout constants against the reference schema compiler: `capnp compile -o-` emits a
// CodeGeneratorRequest (itself a Cap'n Proto message), which we read with our own wire reader.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { describe, test } from "node:test";
import { FrameDecoder } from "../../worker/rpc/framing.js";
import { DEFAULT_LIMITS } from "../../worker/rpc/limits.js";
import { MessageReader, type StructReader, listStruct, readStructList, readText, readU16, readU64 } from "../../worker/rpc/wire.js";
import { DIRECTIONS, DISK_OPS, VM_ORIGINS, VM_STATUSES } from "../../worker/core/api.js";
import { Size, WORKER_INTERFACE_ID, WorkerMethod } from "../../worker/rpc/worker-codec.js";
import { repoRoot } from "./repo-root.js";

function capnpAvailable(): boolean {
  try {
    execFileSync("capnp", ["--version"]);
    return true;
  } catch {
    return false;
  }
}

interface SchemaNode {
  id: bigint;
  name: string;
  kind: number;
  size: [number, number];
  methods: Array<{ name: string; params: bigint; results: bigint }>;
  /** An enum's enumerant names, in ordinal order. */
  enumerants: string[];
}

/** Nodes of the compiled schema (schema.capnp layouts: Node, Method, CodeGeneratorRequest). */
function compiledSchema(): Map<string, SchemaNode> {
  const root = repoRoot();
  const schema = join(root, "schema");
  const bytes = execFileSync("capnp", [
    "compile",
    "-o-",
    `--src-prefix=${schema}`,
    join(schema, "common.capnp"),
    join(schema, "worker.capnp"),
  ]);
  const segments = new FrameDecoder(DEFAULT_LIMITS).push(bytes)[0]!;
  const request = new MessageReader(segments, DEFAULT_LIMITS).root();
  const nodes = readStructList(request, 0)!;
  const out = new Map<string, SchemaNode>();
  for (let i = 0; i < nodes.length; i++) {
    const node: StructReader = listStruct(nodes, i);
    const name = readText(node, 0);
    const kind = readU16(node, 12); // 1 struct, 2 enum, 3 interface
    const methods: SchemaNode["methods"] = [];
    const enumerants: string[] = [];
    if (kind === 2) {
      const list = readStructList(node, 3)!; // Node.enum.enumerants, in ordinal order
      for (let e = 0; e < list.length; e++) enumerants.push(readText(listStruct(list, e), 0));
    }
    if (kind === 3) {
      const list = readStructList(node, 3)!;
      for (let m = 0; m < list.length; m++) {
        const method = listStruct(list, m);
        methods.push({ name: readText(method, 0), params: readU64(method, 8), results: readU64(method, 16) });
      }
    }
    const size: [number, number] = [readU16(node, 14), readU16(node, 24)];
    out.set(name.slice(name.indexOf(":") + 1), { id: readU64(node, 0), name, kind, size, methods, enumerants });
  }
  return out;
}

describe("worker codec vs the capnp compiler", { skip: capnpAvailable() ? false : "capnp (capnproto package) not installed" }, () => {
  test("interface id, method ordinals and every struct size match schema/*.capnp", () => {
    const nodes = compiledSchema();
    const worker = nodes.get("Worker")!;
    assert.equal(worker.id, WORKER_INTERFACE_ID);
    assert.deepEqual(
      worker.methods.map((m) => m.name),
      Object.keys(WorkerMethod),
    );
    for (const [name, ordinal] of Object.entries(WorkerMethod)) assert.equal(worker.methods[ordinal]!.name, name);

    const byId = new Map([...nodes.values()].map((n) => [n.id, n]));
    const sizeOf = (method: string, which: "params" | "results") =>
      byId.get(worker.methods[WorkerMethod[method as keyof typeof WorkerMethod]]![which])!.size;
    const expected: Array<[string, readonly number[], [number, number]]> = [
      ["RunningVm", Size.RunningVm, nodes.get("RunningVm")!.size],
      ["IoCounters", Size.IoCounters, nodes.get("IoCounters")!.size],
      ["VmEvent", Size.VmEvent, nodes.get("VmEvent")!.size],
      ["VmSpec", Size.VmSpec, nodes.get("VmSpec")!.size],
      ["Secret", Size.Secret, nodes.get("Secret")!.size],
      ["Placement", Size.Placement, nodes.get("Placement")!.size],
      ["Label", Size.Label, nodes.get("Label")!.size],
      ["listVms results", Size.ListVmsResults, sizeOf("listVms", "results")],
      ["read params", Size.ReadParams, sizeOf("read", "params")],
      ["read results", Size.ReadResults, sizeOf("read", "results")],
      ["createVm params", Size.CreateVmParams, sizeOf("createVm", "params")],
      ["createVm results", Size.CreateVmResults, sizeOf("createVm", "results")],
      ["deleteVm params", Size.IdParams, sizeOf("deleteVm", "params")],
      ["getVm params", Size.IdParams, sizeOf("getVm", "params")],
      ["getVm results", Size.GetVmResults, sizeOf("getVm", "results")],
      ["events params", Size.EventsParams, sizeOf("events", "params")],
      ["events results", Size.EventsResults, sizeOf("events", "results")],
      ...(
        [
          "Fault",
          "Partition",
          "Loss",
          "Delay",
          "Bandwidth",
          "DiskErrors",
          "CpuThrottle",
          "ActiveFault",
          "GuestProcess",
          "ClockShift",
          "ClockStrobe",
          "FillDisk",
        ] as const
      ).map((name) => [name, Size[name], nodes.get(name)!.size] as [string, readonly number[], [number, number]]),
      ["injectFault params", Size.InjectFaultParams, sizeOf("injectFault", "params")],
      ["injectFault results", Size.InjectFaultResults, sizeOf("injectFault", "results")],
      ["clearFault params", Size.ClearFaultParams, sizeOf("clearFault", "params")],
      ["listFaults params", Size.IdParams, sizeOf("listFaults", "params")],
      ["listFaults results", Size.ListFaultsResults, sizeOf("listFaults", "results")],
      ["ExecCommand", Size.ExecCommand, nodes.get("ExecCommand")!.size],
      ["ExecResult", Size.ExecResult, nodes.get("ExecResult")!.size],
      ["exec params", Size.ExecParams, sizeOf("exec", "params")],
      ["exec results", Size.ExecResults, sizeOf("exec", "results")],
      ["FileStat", Size.FileStat, nodes.get("FileStat")!.size],
      ["ProcessCommand", Size.ProcessCommand, nodes.get("ProcessCommand")!.size],
      ["ProcessStatus", Size.ProcessStatus, nodes.get("ProcessStatus")!.size],
      ["writeFile params", Size.WriteFileParams, sizeOf("writeFile", "params")],
      ["writeFile results", Size.WriteFileResults, sizeOf("writeFile", "results")],
      ["readFile params", Size.ReadFileParams, sizeOf("readFile", "params")],
      ["readFile results", Size.ReadFileResults, sizeOf("readFile", "results")],
      ["statFile params", Size.StatFileParams, sizeOf("statFile", "params")],
      ["statFile results", Size.StatFileResults, sizeOf("statFile", "results")],
      ["listDir params", Size.ListDirParams, sizeOf("listDir", "params")],
      ["listDir results", Size.ListDirResults, sizeOf("listDir", "results")],
      ["startProcess params", Size.StartProcessParams, sizeOf("startProcess", "params")],
      ["startProcess results", Size.StartProcessResults, sizeOf("startProcess", "results")],
      ["readProcess params", Size.ReadProcessParams, sizeOf("readProcess", "params")],
      ["readProcess results", Size.ReadProcessResults, sizeOf("readProcess", "results")],
      ["writeProcess params", Size.WriteProcessParams, sizeOf("writeProcess", "params")],
      ["signalProcess params", Size.SignalProcessParams, sizeOf("signalProcess", "params")],
      ["waitProcess params", Size.WaitProcessParams, sizeOf("waitProcess", "params")],
      ["waitProcess results", Size.WaitProcessResults, sizeOf("waitProcess", "results")],
      ["resizeProcess params", Size.ResizeProcessParams, sizeOf("resizeProcess", "params")],
    ];
    for (const [label, ours, compiled] of expected) assert.deepEqual([...ours], compiled, label);
  });

  test("enum ordinals match schema/*.capnp (a new enumerant only ever at the next ordinal)", () => {
    const nodes = compiledSchema();
    const enums: Array<[string, readonly string[]]> = [
      ["VmStatus", VM_STATUSES],
      ["VmOrigin", VM_ORIGINS],
      ["Direction", DIRECTIONS],
      ["DiskOp", DISK_OPS],
    ];
    for (const [name, ours] of enums) assert.deepEqual(nodes.get(name)!.enumerants, [...ours], name);
    // The published order: clients in other languages already compiled against these ordinals.
    assert.deepEqual(nodes.get("VmStatus")!.enumerants, ["creating", "running", "paused", "stopping", "stopped", "failed", "lost"]);
  });
});
