// Our hand-written codec against capnp-es, the schema compiler's TypeScript output (npm run gen):
// messages built by capnp-es decode intact with our bounds-checked reader, and messages our
// builder writes read back intact through capnp-es. Layout drift between schema/*.capnp and
// worker-codec.ts fails here (and in codec.test.ts against `capnp compile`).
import assert from "node:assert/strict";
import { test } from "node:test";
import * as $ from "capnp-es";
import { VmSpec } from "../../schema/gen/common.js";
import { Fault, Placement, Worker_CreateVm$Params } from "../../schema/gen/worker.js";
import type { VmSpecInput } from "../../worker/core/api.js";
import { FrameDecoder } from "../../worker/rpc/framing.js";
import { DEFAULT_LIMITS } from "../../worker/rpc/limits.js";
import { MessageBuilder, MessageReader, readStruct, readText, readU32 } from "../../worker/rpc/wire.js";
import { readPlacement, readSecrets, readVmSpec, writeFault, writePlacement, writeVmSpec } from "../../worker/rpc/worker-codec.js";

const SPEC: VmSpecInput = {
  hostname: "agent-sandbox",
  kernel: "/nix/store/3829i36x9nzw5b48l3150inhqdz6ky8b-vmlinux",
  initrd: "/nix/store/xn98nh9c7vw556mfviy87fk0fj252pdp-initrd",
  image: "/nix/store/sarcfc1pmjhsdv4mpwas8v7ysp5gxvnp-root.ext4",
  cmdline: "console=ttyS0 quiet pcr.cmd=ZWNobyBoaQ==",
  cpu: 2,
  memoryBytes: 3n * 1024n ** 3n,
  allowedDomains: ["api.anthropic.com", "198.51.100.0/24", "ünïcödé.example"],
  dataDiskBytes: 64n * 1024n * 1024n,
};

function ourRoot(bytes: Buffer) {
  const segments = new FrameDecoder(DEFAULT_LIMITS).push(bytes)[0]!;
  return new MessageReader(segments, DEFAULT_LIMITS).root();
}

function fillSpec(target: VmSpec, spec: VmSpecInput): void {
  target.hostname = spec.hostname;
  target.kernel = spec.kernel;
  target.initrd = spec.initrd;
  target.image = spec.image;
  target.cmdline = spec.cmdline;
  target.cpu = spec.cpu;
  target.memoryBytes = spec.memoryBytes;
  target.dataDiskBytes = spec.dataDiskBytes ?? 0n;
  const domains = target._initAllowedDomains(spec.allowedDomains.length);
  for (const [i, domain] of spec.allowedDomains.entries()) domains.set(i, domain);
}

test("createVm params built by capnp-es arrive intact through our reader", () => {
  const message = new $.Message();
  const params = message.initRoot(Worker_CreateVm$Params);
  fillSpec(params._initSpec(), SPEC);
  const secrets = params._initSecrets(2);
  const values = [Buffer.from("sk-test-123"), Buffer.from([0, 1, 2, 255])];
  ["API_KEY", "blob"].forEach((name, i) => {
    const secret = secrets.get(i);
    secret.name = name;
    const data = secret._initValue(values[i]!.length);
    for (const [j, byte] of values[i]!.entries()) data.set(j, byte);
  });
  params.ttlSeconds = 3600;
  params.idempotencyKey = "create-42";
  const placement = params._initPlacement();
  placement.host = "h1";
  const labels = placement._initLabels(2);
  labels.get(0).key = "zone";
  labels.get(0).value = "eu-1";
  labels.get(1).key = "gpu";
  labels.get(1).value = "";

  const root = ourRoot(Buffer.from(message.toArrayBuffer()));
  // The appended params: the key is pointer 2, the placement pointer 3.
  assert.equal(readText(root, 2), "create-42");
  assert.deepEqual(readPlacement(readStruct(root, 3)), { host: "h1", labels: { zone: "eu-1", gpu: "" } });
  assert.deepEqual(readVmSpec(readStruct(root, 0)), SPEC);
  assert.deepEqual(
    readSecrets(root, 1).map(({ name, value }) => ({ name, value: Buffer.from(value) })),
    [
      { name: "API_KEY", value: values[0] },
      { name: "blob", value: values[1] },
    ],
  );
  assert.equal(readU32(root, 0), 3600);
});

test("a VmSpec our builder writes reads back intact through capnp-es", () => {
  const b = new MessageBuilder();
  writeVmSpec(b, b.root, SPEC);
  const spec = new $.Message(b.finish(), false).getRoot(VmSpec);
  assert.deepEqual(
    {
      hostname: spec.hostname,
      kernel: spec.kernel,
      initrd: spec.initrd,
      image: spec.image,
      cmdline: spec.cmdline,
      cpu: spec.cpu,
      memoryBytes: spec.memoryBytes,
      allowedDomains: [...spec.allowedDomains],
      dataDiskBytes: spec.dataDiskBytes,
    },
    SPEC,
  );
});

test("a Fault union our builder writes has the tag and group fields capnp-es expects", () => {
  const b = new MessageBuilder();
  writeFault(b, b.root, { kind: "loss", percent: 37.5, durationMs: 2500 });
  const fault = new $.Message(b.finish(), false).getRoot(Fault);
  assert.equal(fault.which(), Fault.LOSS);
  assert.equal(fault.durationMs, 2500);
  assert.equal(fault.loss.percent, 37.5);

  const partition = new MessageBuilder();
  writeFault(partition, partition.root, { kind: "partition", cidrs: ["10.0.0.0/8", "198.18.0.10/32"], durationMs: 0 });
  const read = new $.Message(partition.finish(), false).getRoot(Fault);
  assert.equal(read.which(), Fault.PARTITION);
  assert.deepEqual([...read.partition.cidrs], ["10.0.0.0/8", "198.18.0.10/32"]);
});

test("a Placement our builder writes reads back intact through capnp-es", () => {
  const b = new MessageBuilder();
  writePlacement(b, b.root, { host: "h2", labels: { zone: "us", "example.com/ssd": "yes" } });
  const placement = new $.Message(b.finish(), false).getRoot(Placement);
  assert.equal(placement.host, "h2");
  assert.deepEqual(
    [...placement.labels].map((label) => [label.key, label.value]),
    [
      ["zone", "us"],
      ["example.com/ssd", "yes"],
    ],
  );
});
