import assert from "node:assert/strict";
import { test } from "node:test";
import { encodeHostInfo, type HostInfo, MAX_HOST_INFO_BYTES, parseHostInfo } from "../../worker/fleet/host-info.js";
import { storeMembership, summarizeStore } from "../../worker/fleet/store-summary.js";
import { throwsWith } from "../helpers/errors.js";
import { GiB, host, storePath } from "./fleet-hosts.js";

const json = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
/** A valid host as plain JSON, one field replaced (at a dotted path). */
function withField(path: string, value: unknown): Uint8Array {
  const raw = JSON.parse(JSON.stringify(host("h1", { labels: { zone: "eu-1" }, groups: ["web"] })));
  const keys = path.split(".");
  let at = raw;
  for (const key of keys.slice(0, -1)) at = at[key];
  at[keys.at(-1)!] = value;
  return json(raw);
}

test("a host round-trips through its published bytes, summary and all", () => {
  const info: HostInfo = host("node-1", {
    backend: "cloud-hypervisor",
    labels: { zone: "eu-1", "example.com/gpu": "", arch: "x86_64" },
    used: { vms: 2, cpu: 3, memoryBytes: 3 * GiB, diskBytes: 0 },
    groups: ["web", "db"],
    paths: [storePath("a"), storePath("b")],
  });
  const back = parseHostInfo(encodeHostInfo(info));
  assert.deepEqual(back, info);
  assert.ok(storeMembership(back.store)("a".repeat(32)));
});

test("fields a newer worker adds are dropped, not refused", () => {
  const raw = { ...JSON.parse(JSON.stringify(host("h1"))), gpus: 4 };
  assert.equal("gpus" in parseHostInfo(json(raw)), false);
});

test("junk is INVALID_ARGUMENT: not JSON, not UTF-8, too big, not an object", () => {
  throwsWith(() => parseHostInfo(new TextEncoder().encode("{ half")), "INVALID_ARGUMENT", /not UTF-8 JSON/);
  throwsWith(() => parseHostInfo(new Uint8Array([0x7b, 0xff, 0x7d])), "INVALID_ARGUMENT", /not UTF-8 JSON/);
  throwsWith(() => parseHostInfo(new Uint8Array(MAX_HOST_INFO_BYTES + 1)), "INVALID_ARGUMENT", /exceeds/);
  for (const value of [null, 42, "host", [], {}]) throwsWith(() => parseHostInfo(json(value)), "INVALID_ARGUMENT", /bad host info/);
});

test("hostile fields are refused, each naming where", () => {
  const cases: Array<[string, unknown, RegExp]> = [
    ["hostId", "", /hostId/],
    ["hostId", "a".repeat(65), /hostId/],
    ["hostId", "a..b", /hostId/],
    ["hostId", "a.b", /hostId/], // a dot would split the host's NATS subject
    ["hostId", "h1 > /etc/passwd", /hostId/],
    ["hostId", 7, /hostId/],
    ["backend", "QEMU; rm -rf /", /backend/],
    ["used.cpu", -1, /used\.cpu/],
    ["capacity.memoryBytes", 2 ** 53, /capacity\.memoryBytes/],
    ["capacity.memoryBytes", "17179869184", /capacity\.memoryBytes/],
    ["capacity.vms", 1.5, /capacity\.vms/],
    ["capacity.cpu", Number.NaN, /capacity\.cpu/], // JSON null
    ["used", { vms: 0, cpu: 0 }, /used\.memoryBytes/],
    ["labels", { "bad key": "v" }, /labels/],
    ["labels", { zone: "x".repeat(129) }, /labels\.zone/],
    ["labels", { zone: "eu\n1" }, /labels\.zone/],
    ["labels", { ["k".repeat(64)]: "v" }, /labels/],
    ["labels", Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, "v"])), /at most 32 labels/],
    ["labels", ["zone"], /labels/],
    ["groups", Array.from({ length: 4097 }, (_, i) => `g${i}`), /groups/],
    ["groups", ["Web"], /groups\.0/],
    ["groups", "web", /groups/],
    ["store.hashes", 0, /store\.hashes/],
    ["store.hashes", 1000, /store\.hashes/],
    ["store.bloom", "not base64!", /store\.bloom/],
    ["store.bloom", Buffer.alloc(1000).toString("base64"), /power of two/],
    ["store.bloom", Buffer.alloc(32768).toString("base64"), /store\.bloom/],
    ["version", "", /version/],
    ["seenAtMs", -5, /seenAtMs/],
    ["startedAtMs", "yesterday", /startedAtMs/],
  ];
  for (const [path, value, pattern] of cases) {
    throwsWith(() => parseHostInfo(withField(path, value)), "INVALID_ARGUMENT", pattern);
  }
});

test("a __proto__ label pollutes nothing and never comes back as a label", () => {
  const raw = JSON.parse(JSON.stringify(host("h1")));
  const bytes = new TextEncoder().encode(
    JSON.stringify(raw).replace('"labels":{}', '"labels":{"__proto__":{"polluted":"yes"},"zone":"a"}'),
  );
  let info: HostInfo | undefined;
  try {
    info = parseHostInfo(bytes);
  } catch {
    // Refusing it is as good as dropping it.
  }
  if (info) assert.deepEqual(Object.keys(info.labels), ["zone"]);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
});

test("a worker cannot publish what a gateway would refuse", () => {
  throwsWith(() => encodeHostInfo(host("h 1")), "INVALID_ARGUMENT", /hostId/);
  throwsWith(
    () => encodeHostInfo({ ...host("h1"), store: summarizeStore([], { bytes: 64 }), groups: ["-"] }),
    "INVALID_ARGUMENT",
    /groups/,
  );
});
