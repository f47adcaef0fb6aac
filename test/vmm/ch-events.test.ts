// The event-monitor stream parser: concatenated pretty-printed JSON objects, split anywhere; and
// what Cloud Hypervisor's log lines say about how it ended.
import assert from "node:assert/strict";
import { appendFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { ChEventParser, JsonObjectStream, tailEventFile, type ChEvent } from "../../worker/vmm/cloud-hypervisor/events.js";
import { eventRunState, readChLog } from "../../worker/vmm/cloud-hypervisor/backend.js";

const event = (source: string, name: string, properties: Record<string, unknown> | null = null, secs = 0) => ({
  timestamp: { secs, nanos: 29228206 },
  source,
  event: name,
  properties,
});

// As Cloud Hypervisor writes them: pretty-printed, back to back.
const STREAM = [
  event("vmm", "starting"),
  event("vm", "booting", null, 1),
  event("vm", "booted", null, 1),
  event("vm", "device-added", { id: "_disk{0}", note: 'braces } and "quotes" in strings' }, 2),
  event("vm", "shutdown", null, 3),
]
  .map((value) => JSON.stringify(value, null, 2))
  .join("\n");

test("the whole stream in one chunk gives every event in order", () => {
  const parser = new ChEventParser();
  const events = parser.push(STREAM);
  assert.deepEqual(
    events.map((e) => `${e.source}:${e.event}`),
    ["vmm:starting", "vm:booting", "vm:booted", "vm:device-added", "vm:shutdown"],
  );
  assert.equal(events[3]!.properties!.note, 'braces } and "quotes" in strings');
});

test("every split point gives the same events (incremental parsing)", () => {
  const expected = new ChEventParser().push(STREAM);
  for (let cut = 0; cut <= STREAM.length; cut++) {
    const parser = new ChEventParser();
    const events = [...parser.push(STREAM.slice(0, cut)), ...parser.push(STREAM.slice(cut))];
    assert.deepEqual(events, expected, `split at ${cut}`);
  }
});

test("byte-at-a-time feeding and compact objects without separators", () => {
  const compact = [event("vm", "paused"), event("vm", "resumed")].map((v) => JSON.stringify(v)).join("");
  const stream = new JsonObjectStream();
  const out: unknown[] = [];
  for (const char of compact) out.push(...stream.push(char));
  assert.equal(out.length, 2);
  assert.equal(stream.bufferedLength, 0);
});

test("objects that are not events are reported, not returned; garbage throws", () => {
  const invalid: unknown[] = [];
  const parser = new ChEventParser((value) => invalid.push(value));
  assert.deepEqual(parser.push('{"hello": 1}\n{"source":"vm","event":"booted","properties":null}'), [
    { source: "vm", event: "booted", properties: null },
  ]);
  assert.deepEqual(invalid, [{ hello: 1 }]);
  assert.throws(() => new JsonObjectStream().push("not json"), /unexpected/);
});

test("event names map to guest run states", () => {
  const state = (source: string, name: string) => eventRunState({ source, event: name });
  assert.equal(state("vm", "booted"), "running");
  assert.equal(state("vm", "resumed"), "running");
  assert.equal(state("vm", "paused"), "paused");
  assert.equal(state("vm", "restored"), "paused", "a restored VM stands paused until resumed");
  assert.equal(state("vm", "snapshotted"), undefined);
  assert.equal(state("vm", "shutdown"), "shutdown");
  assert.equal(state("vmm", "shutdown"), "shutdown");
  assert.equal(state("vm", "booting"), undefined);
});

test("tailEventFile follows a file that appears late and grows in pieces, including split UTF-8", async () => {
  const dir = await mkdtemp(join(tmpdir(), "pcr-ch-events-"));
  const path = join(dir, "events");
  const seen: ChEvent[] = [];
  const tail = tailEventFile(path, (e) => seen.push(e), { intervalMs: 10 });
  try {
    await new Promise((resolve) => setTimeout(resolve, 30));
    const text = Buffer.from(`${JSON.stringify(event("vm", "booted", { who: "ünïcode ✓" }), null, 2)}\n`);
    await writeFile(path, text.subarray(0, 60));
    await new Promise((resolve) => setTimeout(resolve, 30));
    // Cut inside a multi-byte character.
    const cut = text.indexOf(Buffer.from("✓")) + 1;
    await appendFile(path, text.subarray(60, cut));
    await new Promise((resolve) => setTimeout(resolve, 30));
    await appendFile(path, Buffer.concat([text.subarray(cut), Buffer.from(JSON.stringify(event("vm", "shutdown")))]));
    const deadline = Date.now() + 2000;
    while (seen.length < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.deepEqual(
      seen.map((e) => e.event),
      ["booted", "shutdown"],
    );
    assert.equal(seen[0]!.properties!.who, "ünïcode ✓");
  } finally {
    await tail.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test("CH's log tells a guest power-off from its other exits with status 0 (lines in logger.rs's default format)", () => {
  const line = (level: string, location: string, message: string) =>
    `cloud-hypervisor:   2.123456s: <vmm> ${level}:${location} -- ${message}`;
  const boot = [
    line("INFO", "vmm/src/api/mod.rs:1336", "API request event: VmBoot"),
    line("INFO", "vmm/src/vm.rs:1630", "Loading kernel"),
    "a line of something else",
  ];
  assert.deepEqual(
    readChLog([
      ...boot,
      line("INFO", "devices/src/acpi.rs:80", "ACPI Shutdown signalled"),
      line("INFO", "vmm/src/lib.rs:2151", "VM guest exit event"),
    ]),
    {
      guestExit: true,
      exitEvent: false,
      apiShutdown: false,
    },
  );
  assert.deepEqual(
    readChLog([
      ...boot,
      line("ERROR", "vmm/src/cpu.rs:1487", "VCPU generated error: VcpuRun(x)"),
      line("INFO", "vmm/src/lib.rs:2135", "VM exit event"),
    ]),
    {
      guestExit: false,
      exitEvent: true,
      apiShutdown: false,
      lastError: "VCPU generated error: VcpuRun(x)",
    },
  );
  assert.deepEqual(readChLog([...boot, line("INFO", "vmm/src/api/mod.rs:2045", "API request event: VmmShutdown")]), {
    guestExit: false,
    exitEvent: false,
    apiShutdown: true,
  });
  // Without -v there are no info lines: nothing is claimed.
  assert.deepEqual(readChLog([line("WARN", "vmm/src/lib.rs:1", "something")]), { guestExit: false, exitEvent: false, apiShutdown: false });
});

test("tailEventFile marks the events already in the file at adoption (liveFrom) as history", async () => {
  const dir = await mkdtemp(join(tmpdir(), "pcr-ch-events-"));
  const path = join(dir, "events");
  const old = [event("vm", "booted"), event("vm", "rebooting"), event("vm", "rebooted")]
    .map((e) => `${JSON.stringify(e, null, 2)}\n\n`)
    .join("");
  await writeFile(path, old);
  const seen: [string, boolean][] = [];
  const tail = tailEventFile(path, (e, historic) => seen.push([e.event, historic]), { intervalMs: 10, liveFrom: Buffer.byteLength(old) });
  try {
    await appendFile(path, JSON.stringify(event("vm", "rebooting"), null, 2));
    const deadline = Date.now() + 2000;
    while (seen.length < 4 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.deepEqual(seen, [
      ["booted", true],
      ["rebooting", true],
      ["rebooted", true],
      ["rebooting", false],
    ]);
  } finally {
    await tail.close();
    await rm(dir, { recursive: true, force: true });
  }
});
