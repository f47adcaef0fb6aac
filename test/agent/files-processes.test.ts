// Files, long-running processes and terminals through the worker's agent channel, against the
// real pcr-agent on the host (test/helpers/agent.ts), in a temporary directory; and the agent
// facing a hostile worker that sends raw frames.
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, mkdirSync, openSync } from "node:fs";
import { mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import type { AgentChannel } from "../../worker/agent/channel.js";
import { type AgentFrame, encodeFrame, encodeMixed, FrameDecoder, FrameType } from "../../worker/agent/frame.js";
import { AGENT_CHUNK_BYTES, type OutputStream } from "../../worker/ports/agent.js";
import { AgentOnHost, agentSkip, startAgent } from "../helpers/agent.js";
import { rejectsWith } from "../helpers/errors.js";

const log = pino({ level: process.env.PCR_TEST_LOG ?? "silent" });
const MiB = 1024 * 1024;

describe("files and processes with the real agent", { skip: agentSkip, concurrency: false }, () => {
  let host: AgentOnHost;
  let dir: string;
  let channel: AgentChannel;

  before(async () => {
    host = await AgentOnHost.start("pcr-agent-files-", log);
    ({ dir, channel } = host);
  });
  after(() => host.stop());

  async function readWhole(path: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    for (let offset = 0; ; ) {
      const chunk = await channel.readFile(path, offset, AGENT_CHUNK_BYTES);
      parts.push(Buffer.from(chunk.data));
      offset += chunk.data.length;
      if (chunk.eof) return Buffer.concat(parts);
    }
  }

  /** A stream's bytes from `from` to its end (the process must end). */
  async function readToEnd(pid: number, stream: OutputStream, from = 0): Promise<{ text: string; start: number; end: number }> {
    const parts: Buffer[] = [];
    let start: number | undefined;
    for (let offset = from; ; ) {
      const out = await channel.readProcess(pid, stream, offset, AGENT_CHUNK_BYTES, 5000);
      start ??= out.offset;
      assert.equal(out.offset, offset, "no bytes dropped after the first read");
      parts.push(Buffer.from(out.data));
      offset = out.nextOffset;
      if (out.eof) return { text: Buffer.concat(parts).toString(), start, end: offset };
    }
  }

  /** Reads a stream (long polls) until its text so far matches; answers the text and the next offset. */
  async function readUntil(pid: number, stream: OutputStream, pattern: RegExp, from = 0): Promise<{ text: string; next: number }> {
    let text = "";
    for (let offset = from; ; ) {
      const out = await channel.readProcess(pid, stream, offset, AGENT_CHUNK_BYTES, 5000);
      text += Buffer.from(out.data).toString();
      offset = out.nextOffset;
      if (pattern.test(text)) return { text, next: offset };
      assert.ok(!out.eof, `the stream ended without ${pattern}: ${JSON.stringify(text)}`);
    }
  }

  async function waitExit(pid: number) {
    const status = await channel.waitProcess(pid, 10_000);
    assert.equal(status.running, false, `process ${pid} still running`);
    return status;
  }

  test("a file written in chunks (truncating the old one first) reads back equal", async () => {
    const path = join(dir, "chunks.bin");
    await writeFile(path, Buffer.alloc(MiB, 0x78)); // longer than the new content: truncate must cut it
    const data = randomBytes(2 * AGENT_CHUNK_BYTES + 12_345);
    let size = 0;
    for (let offset = 0; offset < data.length; offset += AGENT_CHUNK_BYTES) {
      const chunk = data.subarray(offset, offset + AGENT_CHUNK_BYTES);
      ({ size } = await channel.writeFile({ path, offset, data: chunk, truncate: offset === 0 }));
      assert.equal(size, offset + chunk.length);
    }
    assert.equal(size, data.length);
    assert.ok((await readWhole(path)).equals(data));
  });

  test("a created file has exactly its mode (not the umask's), an existing one keeps its own; parents are made", async () => {
    const path = join(dir, "a", "b", "c", "made.sh");
    assert.equal((await channel.writeFile({ path, offset: 0, data: Buffer.from("#!/bin/sh\n"), mode: 0o777 })).size, 10);
    assert.equal((await channel.stat(path)).mode, 0o777);
    await channel.writeFile({ path, offset: 10, data: Buffer.from("true\n"), mode: 0o600 });
    const stat = await channel.stat(path);
    assert.deepEqual([stat.name, stat.type, stat.size, stat.mode], ["made.sh", "file", 15, 0o777]);
    assert.ok(Math.abs(stat.mtimeMs - Date.now()) < 60_000);
    const parent = await channel.stat(join(dir, "a", "b"));
    assert.deepEqual([parent.type, parent.mode & 0o700], ["dir", 0o700]); // 0o755 less the umask
    assert.equal((await channel.writeFile({ path: join(dir, "default"), offset: 0, data: Buffer.from("x") })).size, 1);
    assert.equal((await channel.stat(join(dir, "default"))).mode, 0o644);
  });

  test("reading at or past the end answers eof and no bytes", async () => {
    const path = join(dir, "short.txt");
    await writeFile(path, "0123456789");
    const middle = await channel.readFile(path, 4, 3);
    assert.deepEqual([Buffer.from(middle.data).toString(), middle.size, middle.eof], ["456", 10, false]);
    const tail = await channel.readFile(path, 8, 100);
    assert.deepEqual([Buffer.from(tail.data).toString(), tail.eof], ["89", true]);
    for (const offset of [10, 1000]) {
      const past = await channel.readFile(path, offset, 100);
      assert.deepEqual([past.data.length, past.size, past.eof], [0, 10, true]);
    }
  });

  test("stat: a missing path is NOT_FOUND, a symlink is not followed", async () => {
    await rejectsWith(channel.stat(join(dir, "missing")), "NOT_FOUND", /no such file/);
    await rejectsWith(channel.readFile(join(dir, "missing"), 0, 10), "NOT_FOUND", /no such file/);
    await symlink("/etc", join(dir, "link"));
    const link = await channel.stat(join(dir, "link"));
    assert.deepEqual([link.name, link.type, link.size], ["link", "symlink", 4]);
  });

  test("a listing pages by offset: sorted, each page within its bound, truncated until the last", async () => {
    const many = join(dir, "many");
    mkdirSync(many);
    const names = Array.from({ length: 5000 }, (_, index) => `f${String(index).padStart(4, "0")}`);
    for (const name of names) closeSync(openSync(join(many, name), "w"));
    const seen: string[] = [];
    let pages = 0;
    for (let offset = 0; ; pages++) {
      const page = await channel.list(many, offset);
      assert.ok(JSON.stringify(page).length <= 200 * 1024, "a page fits its bound");
      assert.ok(page.entries.length > 0 && page.entries.length <= 4096);
      seen.push(...page.entries.map((entry) => entry.name));
      offset += page.entries.length;
      if (!page.truncated) break;
    }
    assert.ok(pages >= 1, "more than one page");
    assert.deepEqual(seen, names);
    const last = await channel.list(many, 4999);
    assert.deepEqual([last.entries.length, last.entries[0]?.type, last.truncated], [1, "file", false]);
    assert.deepEqual(await channel.list(many, 6000), { entries: [], truncated: false });
  });

  test("a listing of a file, a read of a directory and a relative path are INVALID_ARGUMENT", async () => {
    await writeFile(join(dir, "plain"), "x");
    await rejectsWith(channel.list(join(dir, "plain"), 0), "INVALID_ARGUMENT", /not a directory/);
    await rejectsWith(channel.readFile(dir, 0, 10), "INVALID_ARGUMENT", /dir, not a regular file/);
    await rejectsWith(channel.stat("etc/passwd"), "INVALID_ARGUMENT", /not absolute/);
    await rejectsWith(channel.writeFile({ path: dir, offset: 0, data: Buffer.from("x") }), "INVALID_ARGUMENT", /is a directory/);
    await rejectsWith(channel.readFile(join(dir, "plain"), 0, AGENT_CHUNK_BYTES + 1), "INVALID_ARGUMENT", /length/);
  });

  test("stdout and stderr by offset; a read waits for bytes that come later (long poll)", async () => {
    const script = 'echo first; read line; echo "got $line"; echo oops >&2';
    const { pid } = await channel.startProcess({ argv: ["/bin/sh", "-c", script], cwd: dir });
    const first = await channel.readProcess(pid, "stdout", 0, 1024, 5000);
    assert.deepEqual([Buffer.from(first.data).toString(), first.offset, first.nextOffset, first.eof], ["first\n", 0, 6, false]);
    // Nothing past offset 6 until stdin gives the shell a line: the read, sent first, waits for it.
    const waiting = channel.readProcess(pid, "stdout", 6, 1024, 10_000);
    // The agent takes frames in order: once this answers, the read is in.
    assert.equal((await channel.waitProcess(pid, 0)).running, true);
    await channel.writeProcess(pid, Buffer.from("hello\n"), false);
    const out = await waiting;
    assert.deepEqual([Buffer.from(out.data).toString(), out.offset], ["got hello\n", 6]);
    assert.equal((await readToEnd(pid, "stderr")).text, "oops\n");
    assert.deepEqual(await readToEnd(pid, "stdout", 16), { text: "", start: 16, end: 16 });
    assert.deepEqual(await waitExit(pid), { pid, running: false, exitCode: 0, signal: 0 });
    // The first bytes are still there to read again.
    assert.equal((await readToEnd(pid, "stdout")).text, "first\ngot hello\n");
  });

  test("stdin written, then closed, reaches cat; later writes fail FAILED_PRECONDITION", async () => {
    const { pid } = await channel.startProcess({ argv: ["cat"] });
    await channel.writeProcess(pid, Buffer.from("abc"), false);
    await channel.writeProcess(pid, Buffer.from("def"), true);
    // cat may have exited already: either way nothing more goes in.
    await rejectsWith(channel.writeProcess(pid, Buffer.from("more"), false), "FAILED_PRECONDITION", /stdin is closed|has exited/);
    assert.equal((await readToEnd(pid, "stdout")).text, "abcdef");
    assert.equal((await waitExit(pid)).exitCode, 0);
    await rejectsWith(channel.writeProcess(pid, Buffer.from("late"), false), "FAILED_PRECONDITION", /exited/);
  });

  test("a short wait answers running; a signal ends sleep and the wait reports it", async () => {
    const { pid } = await channel.startProcess({ argv: ["sleep", "30"] });
    const started = Date.now();
    assert.deepEqual(await channel.waitProcess(pid, 100), { pid, running: true, exitCode: -1, signal: 0 });
    assert.ok(Date.now() - started >= 90, "the wait lasted its waitMs");
    await channel.signalProcess(pid, 15);
    assert.deepEqual(await channel.waitProcess(pid, 5000), { pid, running: false, exitCode: -1, signal: 15 });
    const out = await channel.readProcess(pid, "stdout", 0, 1024, 5000);
    assert.deepEqual([out.data.length, out.eof], [0, true]);
    await channel.signalProcess(pid, 9); // its group is gone: nothing to do, not an error
  });

  test("more than 1 MiB of output: an early offset answers from the oldest byte kept", async () => {
    const { pid } = await channel.startProcess({ argv: ["seq", "1", "400000"] });
    const expected = Buffer.from(`${Array.from({ length: 400_000 }, (_, index) => index + 1).join("\n")}\n`);
    // A read at the end answers once the stream has ended: then every byte is in.
    assert.equal((await channel.readProcess(pid, "stdout", expected.length, 1000, 10_000)).eof, true);
    await waitExit(pid);
    const early = await channel.readProcess(pid, "stdout", 0, 1000, 0);
    assert.equal(early.offset, expected.length - MiB, "the answer starts at the oldest byte kept");
    assert.ok(Buffer.from(early.data).equals(expected.subarray(early.offset, early.offset + 1000)));
    const rest = await readToEnd(pid, "stdout", early.offset);
    assert.equal(rest.end, expected.length);
    assert.equal(rest.text, expected.subarray(early.offset).toString());
  });

  test("a terminal: stty size shows the start size, then the size after a resize", async () => {
    const script = "stty size; read line; stty size; echo to-stderr >&2";
    const { pid } = await channel.startProcess({ argv: ["/bin/sh", "-c", script], tty: { rows: 24, cols: 80 } });
    const before = await readUntil(pid, "stdout", /24 80\r\n/);
    await channel.resizeProcess(pid, 40, 132);
    await channel.writeProcess(pid, Buffer.from("go\n"), false);
    const after = await readToEnd(pid, "stdout", before.next);
    assert.match(after.text, /40 132\r\n/);
    assert.match(after.text, /to-stderr/, "stderr goes to the terminal too");
    assert.deepEqual(await readToEnd(pid, "stderr"), { text: "", start: 0, end: 0 });
    assert.equal((await waitExit(pid)).exitCode, 0);
    const { pid: plain } = await channel.startProcess({ argv: ["true"] });
    await rejectsWith(channel.resizeProcess(plain, 10, 10), "INVALID_ARGUMENT", /no terminal/);
    await waitExit(plain);
  });

  test("pids the agent did not start are NOT_FOUND, whatever the call", async () => {
    for (const pid of [1, process.pid, 2_000_000_000]) {
      await rejectsWith(channel.readProcess(pid, "stdout", 0, 10, 0), "NOT_FOUND", /no process/);
      await rejectsWith(channel.writeProcess(pid, Buffer.from("x"), false), "NOT_FOUND", /no process/);
      await rejectsWith(channel.signalProcess(pid, 9), "NOT_FOUND", /no process/);
      await rejectsWith(channel.waitProcess(pid, 0), "NOT_FOUND", /no process/);
      await rejectsWith(channel.resizeProcess(pid, 10, 10), "NOT_FOUND", /no process/);
    }
    await rejectsWith(channel.startProcess({ argv: ["/no/such/binary"] }), "NOT_FOUND", /no such file/);
  });

  test("128 running processes fill the table: the 129th start is RESOURCE_EXHAUSTED", async () => {
    // Every earlier process has exited: exited ones make room (oldest first).
    const pids: number[] = [];
    for (let batch = 0; batch < 4; batch++) {
      const started = await Promise.all(Array.from({ length: 32 }, () => channel.startProcess({ argv: ["sleep", "60"] })));
      pids.push(...started.map((answer) => answer.pid));
    }
    try {
      await rejectsWith(channel.startProcess({ argv: ["sleep", "60"] }), "RESOURCE_EXHAUSTED", /128 processes are running/);
    } finally {
      await Promise.all(pids.map((pid) => channel.signalProcess(pid, 9)));
      // Only the 64 latest exits stay in the table: an older one may be gone (NOT_FOUND) already.
      const statuses = await Promise.all(pids.map((pid) => channel.waitProcess(pid, 10_000).catch((err: Error) => err)));
      for (const status of statuses) {
        if (status instanceof Error) assert.match(status.message, /no process/);
        else assert.deepEqual([status.running, status.signal], [false, 9]);
      }
    }
    // Exited, they make room again.
    const { pid } = await channel.startProcess({ argv: ["true"] });
    assert.equal((await waitExit(pid)).exitCode, 0);
  });
});

/** The agent connected straight to a socket the test holds: raw frames in, frames out. */
describe("the agent facing a hostile worker", { skip: agentSkip }, () => {
  let dir: string;
  let agent: ChildProcess;
  let socket: Socket;
  const frames: AgentFrame[] = [];
  let arrived: () => void = () => undefined;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "pcr-agent-raw-"));
    const path = join(dir, "worker.sock");
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(path, resolve));
    const accepted = new Promise<Socket>((resolve) => server.once("connection", resolve));
    agent = startAgent(path);
    socket = await accepted;
    server.close();
    const decoder = new FrameDecoder();
    socket.on("data", (chunk: Buffer) => {
      frames.push(...decoder.push(chunk));
      arrived();
    });
    assert.equal((await answerOn(0)).type, FrameType.hello);
  });
  after(async () => {
    socket?.destroy();
    agent?.kill("SIGKILL");
    await rm(dir, { recursive: true, force: true });
  });

  /** The next frame on `stream` (each request gets exactly one). */
  async function answerOn(stream: number, timeoutMs = 5000): Promise<AgentFrame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = frames.findIndex((frame) => frame.stream === stream);
      if (index >= 0) return frames.splice(index, 1)[0]!;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no answer on stream ${stream} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        arrived = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  function send(type: number, stream: number, payload: Buffer | string): void {
    socket.write(encodeFrame({ type, stream, payload: Buffer.from(payload) }));
  }

  async function expectError(stream: number, code: string, pattern: RegExp): Promise<void> {
    const frame = await answerOn(stream);
    assert.equal(frame.type, FrameType.error, `stream ${stream}: ${frame.payload.toString()}`);
    const error = JSON.parse(frame.payload.toString()) as { message: string; code?: string };
    assert.equal(error.code, code, `stream ${stream}: ${error.message}`);
    assert.match(error.message, pattern);
  }

  test("bad JSON, wrong types, out-of-range numbers and unknown types are errors; the agent serves on", async () => {
    const cases: Array<[number, Buffer | string, string, RegExp]> = [
      [FrameType.processStart, "{not json", "INVALID_ARGUMENT", /bad request/],
      [FrameType.processStart, '{"argv": []}', "INVALID_ARGUMENT", /argv is empty/],
      [FrameType.processStart, '{"argv": ["sh"], "tty": {"rows": 0, "cols": 80}}', "INVALID_ARGUMENT", /rows/],
      [FrameType.fileRead, '{"path": 5}', "INVALID_ARGUMENT", /bad request/],
      [FrameType.fileRead, '{"path": "/etc/hostname", "offset": 1e300, "length": 1}', "INVALID_ARGUMENT", /bad request/],
      [FrameType.fileRead, '{"path": "/etc/hostname", "offset": -1, "length": 1}', "INVALID_ARGUMENT", /offset/],
      [FrameType.fileRead, '{"path": "/etc/hostname", "offset": 0.5, "length": 1}', "INVALID_ARGUMENT", /bad request/],
      [FrameType.stat, "null", "INVALID_ARGUMENT", /not absolute/],
      [FrameType.stat, "", "INVALID_ARGUMENT", /bad request/],
      [FrameType.list, '{"path": "/", "offset": 1e20}', "INVALID_ARGUMENT", /bad request/],
      [FrameType.fileWrite, "ab", "INVALID_ARGUMENT", /shorter than its length/],
      [FrameType.fileWrite, Buffer.from([0, 0, 1, 0, 0x7b]), "INVALID_ARGUMENT", /overruns/],
      [FrameType.fileWrite, encodeMixed({ path: "/tmp/x", offset: 0, mode: 0o17777 }, Buffer.alloc(0)), "INVALID_ARGUMENT", /mode/],
      [FrameType.processWrite, encodeMixed({ pid: "1" }, Buffer.alloc(0)), "INVALID_ARGUMENT", /bad request/],
      // pid -1 must never become kill(1, ...): the table answers first.
      [FrameType.processSignal, '{"pid": -1, "signal": 9}', "NOT_FOUND", /no process/],
      [FrameType.processSignal, '{"pid": 0, "signal": 9}', "NOT_FOUND", /no process/],
      [FrameType.processSignal, '{"pid": 1, "signal": 0}', "INVALID_ARGUMENT", /signal/],
      [FrameType.processRead, '{"pid": 1, "stream": "stdout", "offset": 0, "maxBytes": 10, "waitMs": -5}', "INVALID_ARGUMENT", /waitMs/],
      [FrameType.processRead, '{"pid": 1, "stream": "stdout", "offset": 0, "maxBytes": 1e9, "waitMs": 0}', "INVALID_ARGUMENT", /maxBytes/],
      [FrameType.processResize, '{"pid": 1, "rows": 70000, "cols": 1}', "INVALID_ARGUMENT", /rows/],
      [FrameType.processStatus, "{}", "INVALID_ARGUMENT", /unknown frame type 23/],
      [99, "{}", "INVALID_ARGUMENT", /unknown frame type 99/],
    ];
    for (const [index, [type, payload]] of cases.entries()) send(type, 100 + index, payload);
    for (const [index, [, , code, pattern]] of cases.entries()) await expectError(100 + index, code, pattern);
    send(FrameType.stat, 200, JSON.stringify({ path: "/" }));
    const stat = await answerOn(200);
    assert.equal(stat.type, FrameType.statResult);
    assert.equal(JSON.parse(stat.payload.toString()).type, "dir");
    assert.equal(frames.length, 0, "exactly one answer each");
  });

  test("long polls count against the bound on requests in flight, and a cancel ends one at once", async () => {
    send(FrameType.processStart, 300, JSON.stringify({ argv: ["sleep", "60"] }));
    const started = await answerOn(300);
    assert.equal(started.type, FrameType.processStarted, started.payload.toString());
    const { pid } = JSON.parse(started.payload.toString()) as { pid: number };
    const read = JSON.stringify({ pid, stream: "stdout", offset: 0, maxBytes: 100, waitMs: 60_000 });
    for (let stream = 1000; stream < 1128; stream++) send(FrameType.processRead, stream, read);
    send(FrameType.processWait, 1128, JSON.stringify({ pid, waitMs: 60_000 }));
    await expectError(1128, "RESOURCE_EXHAUSTED", /128 requests are in flight/);
    const cancelled = Date.now();
    for (let stream = 1000; stream < 1128; stream++) send(FrameType.cancel, stream, "");
    for (let stream = 1000; stream < 1128; stream++) assert.equal((await answerOn(stream)).type, FrameType.processOutput);
    assert.ok(Date.now() - cancelled < 2000, "the cancels ended the waits");
    send(FrameType.processSignal, 301, JSON.stringify({ pid, signal: 9 }));
    assert.equal((await answerOn(301)).type, FrameType.ok);
    send(FrameType.processWait, 302, JSON.stringify({ pid, waitMs: 5000 }));
    const status = JSON.parse((await answerOn(302)).payload.toString());
    assert.deepEqual(status, { pid, running: false, exitCode: -1, signal: 9 });
  });
});
