// Files, processes and waitReady through the core (core/files.ts, core/processes.ts, service.ts) on
// the fake backend and FakeAgents: what is refused before the guest, and how a call is split.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { FILE_LIMITS } from "../../worker/core/files.js";
import { AGENT_CHUNK_BYTES } from "../../worker/ports/agent.js";
import { rejectsWith } from "../helpers/errors.js";
import { specInput, World } from "./fakes.js";

const sha = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");

async function worldWithVm() {
  const w = new World({ agents: true });
  const id = await w.service.createVm(specInput(), {});
  return { w, id, agent: w.agents.connections.get(id)! };
}

test("a 1 MiB write goes to the agent in frame-sized pieces, truncating only with the first", async () => {
  const { w, id, agent } = await worldWithVm();
  const calls: { offset: number; length: number; truncate?: boolean }[] = [];
  const write = agent.writeFile.bind(agent);
  agent.writeFile = (request) => {
    calls.push({ offset: request.offset, length: request.data.length, truncate: request.truncate });
    return write(request);
  };
  const data = Buffer.alloc(FILE_LIMITS.maxCallBytes, 7);
  data.write("start", 0);
  const { size } = await w.service.writeFile(id, { path: "/root/blob", offset: 0, data, truncate: true, mode: 0o600 });
  assert.equal(size, data.length);
  assert.equal(calls.length, Math.ceil(data.length / AGENT_CHUNK_BYTES));
  assert.deepEqual(
    calls.map((call) => call.truncate ?? false),
    calls.map((_, i) => i === 0),
  );
  assert.ok(calls.every((call) => call.length <= AGENT_CHUNK_BYTES));
  assert.equal(agent.files.get("/root/blob")!.mode, 0o600);

  const read = await w.service.readFile(id, "/root/blob", 0, FILE_LIMITS.maxCallBytes);
  assert.equal(sha(read.data), sha(data));
  assert.equal(read.eof, true);
  assert.equal(read.size, data.length);
});

test("a read asks for at most one call's worth, stops at the end of the file and says eof", async () => {
  const { w, id, agent } = await worldWithVm();
  await agent.writeFile({ path: "/f", offset: 0, data: Buffer.alloc(AGENT_CHUNK_BYTES * 2 + 10, 1) });
  const middle = await w.service.readFile(id, "/f", 5, AGENT_CHUNK_BYTES);
  assert.equal(middle.data.length, AGENT_CHUNK_BYTES);
  assert.equal(middle.eof, false);
  const tail = await w.service.readFile(id, "/f", AGENT_CHUNK_BYTES, 10 * FILE_LIMITS.maxCallBytes);
  assert.equal(tail.data.length, AGENT_CHUNK_BYTES + 10, "the rest of the file, though more was asked");
  assert.equal(tail.eof, true);
  const past = await w.service.readFile(id, "/f", 10 * AGENT_CHUNK_BYTES, 100);
  assert.deepEqual([past.data.length, past.eof], [0, true]);
  await rejectsWith(w.service.readFile(id, "/missing", 0, 10), "NOT_FOUND", /missing/);
});

test("bad file calls are INVALID_ARGUMENT and never reach the guest", async () => {
  const { w, id, agent } = await worldWithVm();
  const one = new Uint8Array(1);
  await rejectsWith(w.service.writeFile(id, { path: "relative", offset: 0, data: one }), "INVALID_ARGUMENT", /not absolute/);
  await rejectsWith(w.service.writeFile(id, { path: "/a\0b", offset: 0, data: one }), "INVALID_ARGUMENT", /NUL/);
  await rejectsWith(w.service.writeFile(id, { path: `/${"a".repeat(5000)}`, offset: 0, data: one }), "INVALID_ARGUMENT", /longer/);
  await rejectsWith(w.service.writeFile(id, { path: "/a", offset: -1, data: one }), "INVALID_ARGUMENT", /offset/);
  await rejectsWith(w.service.writeFile(id, { path: "/a", offset: 2 ** 60, data: one }), "INVALID_ARGUMENT", /offset/);
  const big = new Uint8Array(FILE_LIMITS.maxCallBytes + 1);
  await rejectsWith(w.service.writeFile(id, { path: "/a", offset: 0, data: big }), "INVALID_ARGUMENT", /by offset/);
  await rejectsWith(w.service.writeFile(id, { path: "/a", offset: 0, data: one, mode: 0o10000 }), "INVALID_ARGUMENT", /mode/);
  await rejectsWith(w.service.readFile(id, "x", 0, 1), "INVALID_ARGUMENT", /not absolute/);
  await rejectsWith(w.service.statFile(id, ""), "INVALID_ARGUMENT", /not absolute/);
  await rejectsWith(w.service.listDir(id, "/", -3), "INVALID_ARGUMENT", /offset/);
  assert.equal(agent.files.size, 0);
  await rejectsWith(w.service.statFile("vm-nope", "/"), "NOT_FOUND", /vm-nope/);
});

test("processes: bad pids, signals, waits and terminal sizes are INVALID_ARGUMENT; a good start answers the pid", async () => {
  const { w, id, agent } = await worldWithVm();
  await rejectsWith(w.service.startProcess(id, { argv: [] }), "INVALID_ARGUMENT", /argv is empty/);
  await rejectsWith(w.service.startProcess(id, { argv: ["sh"], tty: { rows: 0, cols: 80 } }), "INVALID_ARGUMENT", /rows/);
  await rejectsWith(w.service.startProcess(id, { argv: ["sh"], cwd: "tmp" }), "INVALID_ARGUMENT", /absolute/);
  assert.equal(agent.processes.size, 0);
  const pid = await w.service.startProcess(id, { argv: ["sh", "-c", "x"], tty: { rows: 24, cols: 80 } });
  await rejectsWith(w.service.signalProcess(id, pid, 0), "INVALID_ARGUMENT", /signal/);
  await rejectsWith(w.service.signalProcess(id, pid, 65), "INVALID_ARGUMENT", /signal/);
  await rejectsWith(w.service.signalProcess(id, 0, 9), "INVALID_ARGUMENT", /pid/);
  await rejectsWith(w.service.waitProcess(id, pid, 3_600_000), "INVALID_ARGUMENT", /waitMs/);
  await rejectsWith(w.service.readProcess(id, pid, "stdin" as "stdout", 0, 10, 0), "INVALID_ARGUMENT", /stream/);
  await rejectsWith(w.service.resizeProcess(id, pid, 24, 100_000), "INVALID_ARGUMENT", /cols/);
  await rejectsWith(w.service.writeProcess(id, pid, new Uint8Array(AGENT_CHUNK_BYTES + 1), false), "INVALID_ARGUMENT", /at most/);

  const output = await w.service.readProcess(id, pid, "stdout", 0, 10 * AGENT_CHUNK_BYTES, 0);
  assert.equal(Buffer.from(output.data).toString(), "sh -c x");
  await w.service.writeProcess(id, pid, Buffer.from("bye"), true);
  assert.deepEqual(await w.service.waitProcess(id, pid, 0), { pid, running: false, exitCode: 0, signal: 0 });
  await rejectsWith(w.service.waitProcess(id, 4242, 0), "NOT_FOUND", /4242/);
});

test("waitReady: the create answers once the agent says hello", async () => {
  const w = new World({ agents: true });
  w.agents.startState = "connecting";
  const creating = w.service.createVm(specInput(), { waitReadyMs: 5_000 });
  let answered = false;
  void creating.then(() => (answered = true));
  while (w.agents.connections.size === 0) await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(answered, false, "not before the hello");
  const [connection] = w.agents.connections.values();
  connection!.sayHello();
  const id = await creating;
  assert.equal((await w.service.getVm(id)).agentState, "ready");
});

test("waitReady: a VM whose agent stays silent is deleted and the create is UNAVAILABLE", async () => {
  const w = new World({ agents: true });
  w.agents.startState = "connecting";
  await rejectsWith(w.service.createVm(specInput(), { waitReadyMs: 50 }), "UNAVAILABLE", /was deleted: its guest agent was not ready/);
  assert.deepEqual(await w.service.listVms(), []);
  w.assertEmpty();
});

test("waitReady: refused before anything is done without an agent channel, or out of range", async () => {
  const w = new World({ agents: true, backend: { capabilities: { agent: false } } });
  await rejectsWith(w.service.createVm(specInput(), { waitReadyMs: 1000 }), "FAILED_PRECONDITION", /no guest agent channel/);
  await rejectsWith(w.service.createVm(specInput(), { waitReadyMs: 11 * 60_000 }), "INVALID_ARGUMENT", /waitReadyMs/);
  assert.equal(w.host.all().length, 0);
  w.assertEmpty();
});
