import assert from "node:assert/strict";
import { test } from "node:test";
import type { VmSpecInput } from "../../worker/core/api.js";
import { WorkerError } from "../../worker/core/errors.js";
import { isStorePath, parseVmSpecJson, specHash, storePathRoot, validateSpec } from "../../worker/core/spec.js";

const MIB = 1024 * 1024;
const limits = { maxCpu: 2, minMemoryBytes: 64 * MIB, maxMemoryBytes: 4096 * MIB, maxAllowedDomains: 8 };
const KERNEL = "/nix/store/0c0n6s3ybp2ixy6nnjxfv4xljnhrqzjf-pcr-test-vmlinux";
const base: VmSpecInput = {
  hostname: "agent-1",
  kernel: KERNEL,
  initrd: "/nix/store/1c0n6s3ybp2ixy6nnjxfv4xljnhrqzjf-initrd/initrd",
  image: "",
  cmdline: "console=ttyS0",
  cpu: 1,
  memoryBytes: 256n * BigInt(MIB),
  allowedDomains: ["api.example.com"],
};

function rejects(spec: Partial<VmSpecInput>, pattern: RegExp): void {
  assert.throws(
    () => validateSpec({ ...base, ...spec }, limits),
    (err: unknown) => {
      assert.ok(err instanceof WorkerError);
      assert.equal(err.code, "INVALID_ARGUMENT");
      assert.match(err.message, pattern);
      return true;
    },
  );
}

test("a good spec passes and keeps its fields", () => {
  const spec = validateSpec(base, limits);
  assert.equal(spec.memoryBytes, 256 * MIB);
  assert.equal(spec.kernel, KERNEL);
});

test("store paths: only real-looking /nix/store paths, no traversal", () => {
  assert.ok(isStorePath(KERNEL));
  assert.ok(isStorePath(`${KERNEL}/bzImage`));
  assert.ok(!isStorePath("/etc/passwd"));
  assert.ok(!isStorePath(`${KERNEL}/../../etc/passwd`));
  assert.ok(!isStorePath("/nix/store/short-name"));
  assert.ok(!isStorePath("/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-e")); // e is not in nix base32
  assert.equal(storePathRoot(`${KERNEL}/bzImage`), KERNEL);
});

test("bad fields are rejected with every problem named", () => {
  rejects({ kernel: "/boot/vmlinuz" }, /kernel .* not a path inside \/nix\/store/);
  rejects({ kernel: "" }, /kernel is required/);
  rejects({ cpu: 0 }, /cpu 0 is out of range 1\.\.2/);
  rejects({ cpu: 3 }, /cpu 3/);
  rejects({ memoryBytes: 1n }, /memoryBytes 1 is out of range/);
  rejects({ memoryBytes: 256n * BigInt(MIB) + 1n }, /multiple of 1 MiB/);
  rejects({ hostname: "under_score" }, /RFC 1123/);
  rejects({ hostname: "-dash" }, /RFC 1123/);
  rejects({ hostname: "a".repeat(64) }, /RFC 1123/);
  rejects({ cmdline: "console=ttyS0 pcr.ip=1.2.3.4/24" }, /may not set pcr\.ip/);
  rejects({ cmdline: "a\nb" }, /control characters/);
  rejects({ allowedDomains: Array.from({ length: 9 }, (_, i) => `d${i}.example`) }, /at most 8/);
  rejects({ cpu: 0, hostname: "x_y" }, /RFC 1123.*; cpu 0/);
});

test("spec JSON: exactly what nix eval --json prints, strict about keys", () => {
  const json = JSON.stringify({
    allowedDomains: [],
    cmdline: "console=ttyS0",
    cpu: 1,
    hostname: "h",
    image: "",
    initrd: "",
    kernel: KERNEL,
    memoryBytes: 268435456,
  });
  const spec = parseVmSpecJson(json);
  assert.equal(spec.memoryBytes, 268435456n);
  assert.throws(() => parseVmSpecJson("{"), /INVALID_ARGUMENT|not valid JSON/);
  assert.throws(() => parseVmSpecJson(JSON.stringify({ hostname: "h", kernel: KERNEL, kernal: "x" })), /unknown key\(s\) kernal/);
  assert.throws(() => parseVmSpecJson(JSON.stringify({ hostname: "h", kernel: KERNEL, cpu: -1 })), /cpu/);
  assert.throws(() => parseVmSpecJson("[]"), /bad spec/);
});

test("spec hash is stable and order-independent", () => {
  const a = validateSpec(base, limits);
  const b = validateSpec({ ...base }, limits);
  assert.equal(specHash(a), specHash(b));
  assert.notEqual(specHash(a), specHash(validateSpec({ ...base, cpu: 2 }, limits)));
  assert.match(specHash(a), /^[0-9a-f]{64}$/);
});
