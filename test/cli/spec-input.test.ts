import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { parseSize, placementFromFlags, secretFromFlag, secretsFromDir, specFromFlags } from "../../cli/spec-input.js";

const KERNEL = "/nix/store/0c0n6s3ybp2ixy6nnjxfv4xljnhrqzjf-pcr-test-vmlinux";

test("sizes", () => {
  assert.equal(parseSize("512M"), 512n * 1024n * 1024n);
  assert.equal(parseSize("2G"), 2n * 1024n ** 3n);
  assert.equal(parseSize("1GiB"), 1024n ** 3n);
  assert.equal(parseSize("268435456"), 268435456n);
  assert.throws(() => parseSize("lots"), /INVALID_ARGUMENT|not a size/);
});

test("individual flags build a spec; exactly one source is required", () => {
  const spec = specFromFlags({
    kernel: KERNEL,
    disk: "/nix/store/x",
    cpu: 2,
    memory: "1G",
    cmdline: "console=ttyS0",
    allow: ["a.example"],
  });
  assert.equal(spec.image, "/nix/store/x");
  assert.equal(spec.memoryBytes, 1024n ** 3n);
  assert.deepEqual(spec.allowedDomains, ["a.example"]);
  assert.throws(() => specFromFlags({}), /exactly one/);
  assert.throws(() => specFromFlags({ kernel: KERNEL, specJson: "{}" }), /exactly one/);
});

test("secrets come from files or the environment, never literally", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "pcr-cli-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, "token"), "s3cr3t-file");
  assert.equal(Buffer.from(secretFromFlag(`TOKEN=@${join(dir, "token")}`).value).toString(), "s3cr3t-file");
  assert.equal(Buffer.from(secretFromFlag("KEY=env:PCR_T_KEY", { PCR_T_KEY: "from-env" }).value).toString(), "from-env");
  assert.throws(
    () => secretFromFlag("KEY=literal-value"),
    (err: Error) => !err.message.includes("literal-value") && /never taken from the command line/.test(err.message),
  );
  assert.throws(() => secretFromFlag("KEY=env:PCR_T_MISSING", {}), /not set/);
  assert.deepEqual(
    secretsFromDir(dir).map((s) => s.name),
    ["token"],
  );
});

test("--on-host and --label KEY=VALUE make a placement; neither makes none", () => {
  assert.equal(placementFromFlags(undefined, []), undefined);
  assert.equal(placementFromFlags(undefined, undefined), undefined);
  assert.deepEqual(placementFromFlags("h1"), { host: "h1" });
  assert.deepEqual(placementFromFlags(undefined, ["zone=eu-1", "gpu=", "url=a=b"]), { labels: { zone: "eu-1", gpu: "", url: "a=b" } });
  assert.deepEqual(placementFromFlags("h2", ["zone=us"]), { host: "h2", labels: { zone: "us" } });
  assert.throws(() => placementFromFlags(undefined, ["zone"]), { code: "INVALID_ARGUMENT", message: /KEY=VALUE/ });
  assert.throws(() => placementFromFlags(undefined, ["=v"]), { code: "INVALID_ARGUMENT" });
  assert.throws(() => placementFromFlags(undefined, ["a=1", "a=2"]), { code: "INVALID_ARGUMENT", message: /twice/ });
});
