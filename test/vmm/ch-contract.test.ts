// The Cloud Hypervisor backend against Cloud Hypervisor's own REST contract (the OpenAPI file of
// cloud-hypervisor/cloud-hypervisor, copied to test/fixtures/ch). Every request body the backend
// can send validates against the request schema; every response it parses is checked both ways
// against the response schema; every path+method it calls exists. The validator is strict (unknown
// fields rejected) and the tests prove that a contract change breaking our requests fails them.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { before, describe, test } from "node:test";
import { parse } from "yaml";
import type { VmLaunchSpec } from "../../worker/ports/index.js";
import {
  CH_API_CALLS,
  CH_VM_STATES,
  parseCounters,
  parseResponse,
  vmInfoResponseSchema,
  vmmPingResponseSchema,
} from "../../worker/vmm/cloud-hypervisor/api.js";
import { buildVmConfig, chCage, guestRunState, vmmArgv } from "../../worker/vmm/cloud-hypervisor/backend.js";
import { restoredConfig } from "../../worker/vmm/cloud-hypervisor/snapshot.js";
import { CH_OPENAPI_YAML, REFERENCE_OPENAPI_YAML, loadChOpenApi, type ChOpenApi } from "../fixtures/ch/fixtures.js";

const minimalSpec: VmLaunchSpec = {
  id: "vm-min",
  vmDir: "/var/lib/procurator/vms/vm-min",
  kernel: "/nix/store/aaa-kernel/bzImage",
  cmdline: "console=ttyS0 quiet",
  cpu: 1,
  memoryBytes: 256 * 1024 * 1024,
  consolePath: "/var/lib/procurator/vms/vm-min/console.log",
};
const fullSpec: VmLaunchSpec = {
  ...minimalSpec,
  id: "vm-full",
  vmDir: "/var/lib/procurator/vms/vm-full",
  initrd: "/nix/store/bbb-initrd/initrd",
  image: "/nix/store/ccc-image/root.img",
  cpu: 4,
  memoryBytes: 8 * 1024 ** 3,
  net: { tap: "pcrt-0a1b2c", mac: "52:54:00:12:34:56" },
  share: { tag: "secrets", hostDir: "/run/procurator/secrets/vm-full" },
  agentSocket: "/var/lib/procurator/vms/vm-full/agent.sock",
};
const VIRTIOFS_SOCKET = "/var/lib/procurator/vms/vm-full/virtiofs.sock";

/** Every body shape the backend can send to vm.create: each combination of the optional parts. */
function allVmConfigBodies(): Record<string, object> {
  const optional = {
    initrd: fullSpec.initrd,
    image: fullSpec.image,
    net: fullSpec.net,
    share: fullSpec.share,
    agentSocket: fullSpec.agentSocket,
  } as const;
  const names = Object.keys(optional) as (keyof typeof optional)[];
  const bodies: Record<string, object> = {};
  for (let mask = 0; mask < 1 << names.length; mask++) {
    const chosen = names.filter((_, bit) => mask & (1 << bit));
    const spec: VmLaunchSpec = { ...minimalSpec, ...Object.fromEntries(chosen.map((name) => [name, optional[name]])) };
    bodies[chosen.join("+") || "minimal"] = buildVmConfig(spec, spec.share ? { virtiofsSocket: VIRTIOFS_SOCKET } : {});
  }
  // Larger machines: numbers stay within the contract's integer formats.
  bodies.big = buildVmConfig({ ...fullSpec, cpu: 64, memoryBytes: 512 * 1024 ** 3 }, { virtiofsSocket: VIRTIOFS_SOCKET });
  return bodies;
}

const clone = <T>(value: T): T => structuredClone(value);

/** Deletes the field at a dotted path ("fs.0.tag"); returns the modified copy. */
function without(body: object, path: string): object {
  const copy = clone(body) as Record<string, unknown>;
  const keys = path.split(".");
  let node = copy as Record<string, unknown>;
  for (const key of keys.slice(0, -1)) node = node[key] as Record<string, unknown>;
  assert.ok(keys.at(-1)! in node, `${path} is in our body`);
  delete node[keys.at(-1)!];
  return copy;
}

let api: ChOpenApi;
before(async () => {
  api = await loadChOpenApi(CH_OPENAPI_YAML);
});

describe("the OpenAPI fixture and the validator", () => {
  test("the fixture is Cloud Hypervisor's file, unchanged", {
    skip: !existsSync(REFERENCE_OPENAPI_YAML) && "reference copy /work/shared/reference not present",
  }, () => {
    const fixture = readFileSync(CH_OPENAPI_YAML, "utf8").replace(/^(#.*\n)+/, "");
    assert.equal(fixture, readFileSync(REFERENCE_OPENAPI_YAML, "utf8"));
  });

  test("the validator is strict: unknown fields, wrong types, missing required fields and out-of-range integers fail", () => {
    const valid = { payload: { kernel: "/k" } };
    assert.equal(api.validate("VmConfig", valid), null);
    assert.match(api.validate("VmConfig", { payload: { kernel: "/k", kernal: "/k" } })!.join(), /additional properties \(kernal\)/);
    assert.match(api.validate("VmConfig", { payload: { kernel: "/k" }, cpu: { boot_vcpus: 1 } })!.join(), /additional properties \(cpu\)/);
    assert.match(api.validate("VmConfig", { payload: { kernel: 1 } })!.join(), /must be string/);
    assert.match(api.validate("VmConfig", {})!.join(), /required property 'payload'/);
    // format: int16 became a range; format: int64 and nullable are adapted, not ignored.
    assert.match(api.validate("DiskConfig", { path: "/d", pci_segment: 70000 })!.join(), /must be <= 32767/);
    assert.match(api.validate("MemoryConfig", { size: 1.5 })!.join(), /must be integer/);
  });

  test("a non-strict validator (for comparison) would let a misspelt field through", async () => {
    const loose = await loadChOpenApi(CH_OPENAPI_YAML, { strict: false });
    assert.equal(loose.validate("VmConfig", { payload: { kernel: "/k", kernal: "/k" } }), null);
  });

  test("the validator reads the YAML it is given: a required field removed from the file is no longer required", async () => {
    const doc = parse(readFileSync(CH_OPENAPI_YAML, "utf8"));
    doc.components.schemas.VmConfig.required = [];
    const edited = await loadChOpenApi(doc);
    assert.equal(edited.validate("VmConfig", {}), null);
  });
});

describe("requests: every path, method and body the backend sends", () => {
  test("every API call of the backend exists in the OpenAPI file with that method", () => {
    for (const [name, call] of Object.entries(CH_API_CALLS)) {
      assert.ok(api.operation(call.path, call.method), `${name}: ${call.method} ${call.path} is not in the OpenAPI file`);
    }
  });

  test("a call sends a body exactly when the operation has a request body; vm.create takes VmConfig", () => {
    for (const [name, call] of Object.entries(CH_API_CALLS)) {
      const schema = api.requestSchemaName(call.path, call.method);
      assert.equal(Boolean(schema), call.body, `${name}: request body ${schema ?? "none"} vs ours ${call.body}`);
    }
    assert.equal(api.requestSchemaName(CH_API_CALLS.createVm.path, "PUT"), "VmConfig");
  });

  test("every vm.create body shape (the 32 combinations of initrd, image, net, share, vsock) validates strictly against VmConfig", () => {
    const bodies = Object.entries(allVmConfigBodies());
    assert.equal(bodies.length, 33);
    for (const [variant, body] of bodies) {
      assert.equal(api.validate("VmConfig", body), null, `${variant}: ${JSON.stringify(api.validate("VmConfig", body))}`);
    }
  });

  test(
    "the body carries what the brief asks: vcpus, shared memory with virtio-fs, payload, readonly disk, TAP+MAC, fs, " +
      "serial to file, console off, rng",
    () => {
      const body = buildVmConfig(fullSpec, { virtiofsSocket: VIRTIOFS_SOCKET });
      assert.deepEqual(body.cpus, { boot_vcpus: 4, max_vcpus: 4 });
      assert.deepEqual(body.memory, { size: 8 * 1024 ** 3, shared: true });
      assert.deepEqual(body.payload, { kernel: fullSpec.kernel, initramfs: fullSpec.initrd, cmdline: fullSpec.cmdline });
      assert.deepEqual(body.disks, [{ path: fullSpec.image, readonly: true, id: "disk0", image_type: "Raw" }]);
      assert.deepEqual(body.net, [{ tap: "pcrt-0a1b2c", mac: "52:54:00:12:34:56", id: "net0" }]);
      assert.deepEqual(body.fs, [{ tag: "secrets", socket: VIRTIOFS_SOCKET, num_queues: 1, queue_size: 1024, id: "fs0" }]);
      assert.deepEqual(body.serial, { mode: "File", file: fullSpec.consolePath });
      assert.deepEqual(body.console, { mode: "Off" });
      assert.deepEqual(body.rng, { src: "/dev/urandom" });
      assert.deepEqual(body.vsock, { cid: 3, socket: fullSpec.agentSocket }, "the guest agent's channel is a vsock");
      assert.equal(buildVmConfig(minimalSpec).vsock, undefined);
      assert.equal(buildVmConfig(minimalSpec).memory.shared, false);
      assert.throws(() => buildVmConfig(fullSpec), /virtiofsd socket/);
    },
  );

  test("caged, Cloud Hypervisor gets /dev/kvm, /dev/net/tun and its TAP handed over; a restore can read its snapshot", () => {
    const cage = {
      helper: "/h",
      uid: 40001,
      gid: 40001,
      root: "/r",
      readOnly: ["/usr"],
      readWrite: [fullSpec.vmDir],
      devices: [],
      cgroups: [],
      nofile: 4096,
    };
    const caged = chCage(cage, { ...fullSpec, restoreFrom: "/var/lib/procurator/snapshots/k-cloud-hypervisor-v.state" }, true);
    assert.deepEqual(caged.devices, ["/dev/kvm", "/dev/net/tun"]);
    assert.deepEqual(caged.tapOwners, ["pcrt-0a1b2c"]);
    assert.deepEqual(caged.readOnly, ["/usr", "/var/lib/procurator/snapshots/k-cloud-hypervisor-v.state"]);
    const noNet = chCage(cage, minimalSpec, false);
    assert.deepEqual([noNet.devices, noNet.tapOwners, noNet.readOnly], [[], [], ["/usr"]], "no /dev/kvm where there is none");
  });

  test("the VMM argv has nothing about the VM", () => {
    assert.deepEqual(vmmArgv("/v/vm1"), [
      "--api-socket",
      "path=/v/vm1/ch.sock",
      "--event-monitor",
      "path=/v/vm1/events",
      "--log-file",
      "/v/vm1/ch.log",
      "--seccomp",
      "true",
      "-v",
    ]);
  });

  test("removing any field the contract requires from our body fails validation", () => {
    const body = buildVmConfig(fullSpec, { virtiofsSocket: VIRTIOFS_SOCKET });
    const required = [
      "payload",
      "cpus.boot_vcpus",
      "cpus.max_vcpus",
      "memory.size",
      "fs.0.tag",
      "fs.0.socket",
      "fs.0.num_queues",
      "fs.0.queue_size",
      "serial.mode",
      "console.mode",
      "rng.src",
      "vsock.cid",
      "vsock.socket",
    ];
    for (const path of required) {
      assert.notEqual(api.validate("VmConfig", without(body, path)), null, `removing ${path} should fail`);
    }
    // Sanity: the list above is what the YAML requires along our body's shape.
    const schemas = api.doc.components.schemas as Record<string, { required?: string[] }>;
    assert.deepEqual(schemas.FsConfig!.required!.sort(), ["num_queues", "queue_size", "socket", "tag"]);
    assert.deepEqual(schemas.CpusConfig!.required!.sort(), ["boot_vcpus", "max_vcpus"]);
    assert.deepEqual(schemas.VsockConfig!.required!.sort(), ["cid", "socket"]);
  });

  test(
    "contract changes that break our requests fail validation: " + "new required field, renamed field, narrowed type, removed enum value",
    async () => {
      const body = buildVmConfig(fullSpec, { virtiofsSocket: VIRTIOFS_SOCKET });
      const original = parse(readFileSync(CH_OPENAPI_YAML, "utf8"));
      const mutations: [string, (doc: typeof original) => void][] = [
        ["CpusConfig requires topology", (doc) => doc.components.schemas.CpusConfig.required.push("topology")],
        ["NetConfig requires ip", (doc) => (doc.components.schemas.NetConfig.required = ["ip"])],
        [
          "DiskConfig.readonly renamed to read_only",
          (doc) => {
            const disk = doc.components.schemas.DiskConfig.properties;
            disk.read_only = disk.readonly;
            delete disk.readonly;
          },
        ],
        ["MemoryConfig.size becomes a string", (doc) => (doc.components.schemas.MemoryConfig.properties.size = { type: "string" })],
        ["ConsoleMode loses File", (doc) => (doc.components.schemas.ConsoleMode.enum = ["Off", "Pty", "Tty", "Socket", "Null"])],
        ["VmConfig loses the fs property", (doc) => delete doc.components.schemas.VmConfig.properties.fs],
      ];
      for (const [name, mutate] of mutations) {
        const doc = clone(original);
        mutate(doc);
        const mutated = await loadChOpenApi(doc);
        assert.notEqual(mutated.validate("VmConfig", body), null, `"${name}" must break our vm.create body`);
      }
    },
  );
});

describe("snapshots: vm.snapshot, vm.restore and the config.json a restore rewrites", () => {
  const template: VmLaunchSpec = { ...fullSpec, share: undefined, net: { tap: "pcrt-template", mac: "02:70:63:72:00:00" } };
  const clone: VmLaunchSpec = {
    ...template,
    id: "vm-clone",
    vmDir: "/var/lib/procurator/vms/vm-clone",
    consolePath: "/var/lib/procurator/vms/vm-clone/console.log",
    net: { tap: "pcrt-clone", mac: "02:70:63:72:00:00" },
    agentSocket: "/var/lib/procurator/vms/vm-clone/agent.sock",
    kernel: "/proc/self/fd/4",
  };

  test("the snapshot and restore bodies validate strictly against VmSnapshotConfig and RestoreConfig", () => {
    assert.equal(api.requestSchemaName(CH_API_CALLS.snapshot.path, "PUT"), "VmSnapshotConfig");
    assert.equal(api.requestSchemaName(CH_API_CALLS.restore.path, "PUT"), "RestoreConfig");
    assert.equal(api.validate("VmSnapshotConfig", { destination_url: "file:///var/lib/procurator/snapshots/x.draft" }), null);
    assert.equal(api.validate("RestoreConfig", { source_url: "file:///var/lib/procurator/vms/vm-clone/restore", resume: true }), null);
    assert.notEqual(api.validate("RestoreConfig", { resume: true }), null, "source_url is required");
  });

  test("the restored config is the saved one with the clone's TAP, console, vsock and boot files, and is a valid VmConfig", () => {
    // Cloud Hypervisor writes every field of its config, defaults included: they pass through.
    const saved = buildVmConfig(template) as unknown as Record<string, Record<string, unknown>>;
    saved.net = [{ ...(saved.net as unknown as object[])[0], num_queues: 2, queue_size: 256, offload_tso: true }] as never;
    saved.cpus = { ...saved.cpus, kvm_hyperv: false };
    const restored = restoredConfig(saved, buildVmConfig(clone));
    assert.equal(api.validate("VmConfig", restored), null, JSON.stringify(api.validate("VmConfig", restored)));
    assert.deepEqual(restored.net, [
      { tap: "pcrt-clone", mac: "02:70:63:72:00:00", id: "net0", num_queues: 2, queue_size: 256, offload_tso: true },
    ]);
    assert.deepEqual(restored.serial, { mode: "File", file: clone.consolePath });
    assert.deepEqual(restored.vsock, { cid: 3, socket: clone.agentSocket });
    assert.deepEqual(restored.payload, buildVmConfig(clone).payload);
    assert.deepEqual(restored.cpus, { boot_vcpus: 4, max_vcpus: 4, kvm_hyperv: false });
    assert.deepEqual(buildVmConfig(template).net![0]!.tap, "pcrt-template", "the saved config is not changed in place");
  });

  test("a restore into another machine is refused: vCPUs, memory, devices or vsock differ", () => {
    const saved = buildVmConfig(template);
    const refuse = (other: VmLaunchSpec, pattern: RegExp) => assert.throws(() => restoredConfig(saved, buildVmConfig(other)), pattern);
    refuse({ ...clone, cpu: 2 }, /another machine: its vCPU count is \[4,4\], this VM's \[2,2\]/);
    refuse({ ...clone, memoryBytes: 1024 ** 3 }, /its memory size is 8589934592, this VM's 1073741824/);
    refuse({ ...clone, image: undefined }, /its disks are \[disk0\], this VM's \[\]/);
    refuse({ ...clone, net: undefined }, /its net are \[net0\], this VM's \[\]/);
    refuse({ ...clone, agentSocket: undefined }, /its vsock is 3, this VM's null/);
    assert.throws(() => restoredConfig({ payload: {} }, buildVmConfig(clone)), /not a Cloud Hypervisor VmConfig/);
  });
});

describe("responses: every response the backend parses", () => {
  const examplePing = { version: "v53.0", build_version: "v53.0-246-gae44c29", pid: 4242, features: ["kvm", "io_uring"] };
  const exampleCounters = {
    disk0: { read_bytes: 1048576, write_bytes: 0, read_ops: 256, write_ops: 0, read_latency_min: 10 },
    net0: { rx_bytes: 1500, tx_bytes: 900, rx_frames: 3, tx_frames: 2 },
  };
  const exampleInfo = (state: string) => ({
    config: buildVmConfig(fullSpec, { virtiofsSocket: VIRTIOFS_SOCKET }),
    state,
    memory_actual_size: 8 * 1024 ** 3,
    device_tree: { disk0: { id: "disk0", resources: [{ PciBar: {} }], children: [], pci_bdf: "0000:00:02.0" } },
  });

  test("the backend parses each response with the schema the OpenAPI file names for it", () => {
    assert.equal(api.responseSchemaName(CH_API_CALLS.ping.path, "GET", 200), "VmmPingResponse");
    assert.equal(api.responseSchemaName(CH_API_CALLS.info.path, "GET", 200), "VmInfo");
    assert.equal(api.responseSchemaName(CH_API_CALLS.counters.path, "GET", 200), "VmCounters");
    // The other calls return no body on success (204), so there is nothing else to parse.
    for (const [name, call] of Object.entries(CH_API_CALLS)) {
      if (name === "ping" || name === "info" || name === "counters") continue;
      const responses = api.operation(call.path, call.method)!.responses as Record<string, unknown>;
      assert.ok("204" in responses, `${name} answers 204`);
    }
  });

  test("schema-valid example responses pass the spec and the backend's zod parsers", () => {
    const cases: [string, unknown, Parameters<typeof parseResponse>[1]][] = [
      ["VmmPingResponse", examplePing, vmmPingResponseSchema],
      ["VmmPingResponse", { version: "v53.0" }, vmmPingResponseSchema],
      ["VmInfo", exampleInfo("Running"), vmInfoResponseSchema],
      ["VmInfo", { config: { payload: {} }, state: "Created" }, vmInfoResponseSchema],
    ];
    for (const [schemaName, example, zodSchema] of cases) {
      assert.equal(api.validate(schemaName, example), null, `${schemaName} example is spec-valid`);
      assert.doesNotThrow(() => parseResponse(schemaName, zodSchema, JSON.stringify(example)), `${schemaName} parses`);
    }
  });

  test("vm.counters: the contract's example and CH's real u64 values parse exactly; strings and fractions do not", () => {
    assert.equal(api.validate("VmCounters", exampleCounters), null, "the example is spec-valid");
    const example = parseCounters(JSON.stringify(exampleCounters));
    for (const [device, values] of Object.entries(exampleCounters as Record<string, Record<string, number>>)) {
      for (const [name, value] of Object.entries(values)) assert.equal(example[device]![name], BigInt(value));
    }
    assert.deepEqual(parseCounters("{}"), {});
    // What a v53 VM with a read-only root disk sent (block.rs starts latency minima at u64::MAX).
    const real = parseCounters(`{
      "_disk0": { "read_bytes": 147753984, "read_ops": 64306, "write_bytes": 0, "write_ops": 0,
        "read_latency_min": 3, "read_latency_max": 65932, "read_latency_avg": 19,
        "write_latency_min": 18446744073709551615, "write_latency_max": 18446744073709551615,
        "write_latency_avg": 1844674407370955 },
      "_net1": { "rx_bytes": 0, "rx_frames": 0, "tx_bytes": 0, "tx_frames": 0 }
    }`);
    assert.equal(real._disk0!.write_latency_min, 18446744073709551615n);
    assert.equal(real._disk0!.read_bytes, 147753984n);
    assert.equal(real._net1!.tx_frames, 0n);
    for (const bad of [
      '{"disk0": {"read_bytes": "12"}}',
      '{"disk0": {"read_bytes": 1.5}}',
      '{"disk0": {"read_bytes": -1}}',
      "[]",
      "nope",
    ]) {
      assert.throws(() => parseCounters(bad), /unexpected response|not JSON/, bad);
    }
  });

  test("every VmState of the contract is understood by the parser and mapped to a run state", () => {
    const states = (api.doc.components.schemas as Record<string, { enum?: string[] }>).VmState!.enum!;
    assert.deepEqual([...states].sort(), [...CH_VM_STATES].sort(), "VmState enum changed in the contract");
    for (const state of states) {
      assert.equal(api.validate("VmInfo", exampleInfo(state)), null);
      const info = parseResponse("vm.info", vmInfoResponseSchema, JSON.stringify(exampleInfo(state)));
      assert.ok(["running", "paused", "shutdown", "unknown"].includes(guestRunState(info.state)));
    }
    assert.equal(guestRunState("Running"), "running");
    assert.equal(guestRunState("Paused"), "paused");
    assert.equal(guestRunState("Shutdown"), "shutdown");
  });

  test("responses the contract rejects, the parsers reject too", () => {
    const cases: [string, unknown, Parameters<typeof parseResponse>[1]][] = [
      ["VmmPingResponse", { build_version: "x" }, vmmPingResponseSchema],
      ["VmInfo", { config: {}, state: "Migrating" }, vmInfoResponseSchema],
      ["VmInfo", { state: "Running" }, vmInfoResponseSchema],
    ];
    for (const [schemaName, example, zodSchema] of cases) {
      assert.notEqual(api.validate(schemaName, example), null, `${JSON.stringify(example)} is spec-invalid`);
      assert.throws(() => parseResponse(schemaName, zodSchema, JSON.stringify(example)), /unexpected response/);
    }
  });
});
