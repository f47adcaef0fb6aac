// QMP client against a real QEMU (no guest needed: -M none) and, for framing edge cases QEMU
// never produces on demand, against a real unix-socket server that splits its lines.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { QmpClient, QmpConnectionError, QmpError, type QmpEvent } from "../../worker/vmm/qemu/qmp.js";

const dir = mkdtempSync(join(tmpdir(), "pcr-qmp-test-"));
after(() => rmSync(dir, { recursive: true, force: true }));

async function connectWithRetry(path: string, timeoutMs = 10000): Promise<QmpClient> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await QmpClient.connect(path, 2000);
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
}

function exitOf(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once("exit", () => resolve())));
}

describe("QMP client against QEMU -M none", () => {
  let qemu: ChildProcess;
  let qmp: QmpClient;
  const socketPath = join(dir, "none.sock");

  before(async () => {
    qemu = spawn(
      "qemu-system-x86_64",
      ["-M", "none", "-S", "-nodefaults", "-no-user-config", "-display", "none", "-qmp", `unix:${socketPath},server=on,wait=off`],
      {
        stdio: "ignore",
      },
    );
    qmp = await connectWithRetry(socketPath);
  });
  after(async () => {
    qemu.kill("SIGKILL");
    await exitOf(qemu);
  });

  test("negotiates and runs commands with replies matched by id", async () => {
    const [status, version] = await Promise.all([
      qmp.execute<{ status: string; running: boolean }>("query-status"),
      qmp.execute<{ qemu: { major: number } }>("query-version"),
    ]);
    assert.equal(status.status, "prelaunch");
    assert.equal(status.running, false);
    assert.ok(version.qemu.major >= 7);
  });

  test("QEMU errors reject with their class", async () => {
    await assert.rejects(qmp.execute("no-such-command"), (err: unknown) => err instanceof QmpError && err.errorClass === "CommandNotFound");
    // The connection stays usable after an error.
    assert.equal((await qmp.execute<{ status: string }>("query-status")).status, "prelaunch");
  });

  test("emits RESUME and STOP events for cont and stop", async () => {
    const seen: QmpEvent[] = [];
    const onEvent = (event: QmpEvent) => seen.push(event);
    qmp.on("event", onEvent);
    const resumed = qmp.waitEvent("RESUME", 5000);
    await qmp.execute("cont");
    assert.equal((await resumed).event, "RESUME");
    const stopped = qmp.waitEvent("STOP", 5000);
    await qmp.execute("stop");
    await stopped;
    qmp.off("event", onEvent);
    assert.deepEqual(
      seen.map((event) => event.event),
      ["RESUME", "STOP"],
    );
    assert.ok(seen[0]!.timestampUs > 1.6e15, "timestamps are microseconds since the epoch");
  });

  test("QEMU quitting rejects pending commands at once and resolves closed", async () => {
    const shutdown = qmp.waitEvent("SHUTDOWN", 5000);
    await qmp.execute("quit");
    await shutdown.catch(() => undefined); // QEMU may close before sending it
    await qmp.closed;
    assert.equal(qmp.isOpen, false);
    await assert.rejects(qmp.execute("query-status"), QmpConnectionError);
    await exitOf(qemu);
  });
});

describe("QMP client framing and failures (real unix socket, scripted server)", () => {
  test("handles greeting and replies split at odd places, several messages per chunk", async () => {
    const path = join(dir, "split.sock");
    const server = createServer((socket) => {
      const greeting = `${JSON.stringify({ QMP: { version: {}, capabilities: [] } })}\r\n`;
      socket.write(greeting.slice(0, 5));
      setTimeout(() => socket.write(greeting.slice(5)), 5);
      let buffer = "";
      socket.on("data", (chunk) => {
        buffer += chunk.toString();
        for (let newline = buffer.indexOf("\n"); newline >= 0; newline = buffer.indexOf("\n")) {
          const request = JSON.parse(buffer.slice(0, newline)) as { execute: string; id: string };
          buffer = buffer.slice(newline + 1);
          const event = JSON.stringify({ event: "STOP", data: {}, timestamp: { seconds: 1, microseconds: 2 } });
          const reply = JSON.stringify({ return: { echoed: request.execute }, id: request.id });
          const both = `${event}\n${reply}\n`;
          // Byte by byte for the first command, all at once afterwards.
          if (request.execute === "qmp_capabilities") {
            const dribble = (i: number) => {
              if (i >= both.length || socket.destroyed) return;
              socket.write(both[i]!);
              setTimeout(() => dribble(i + 1), 0);
            };
            dribble(0);
          } else socket.write(both);
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(path, resolve));
    try {
      const client = await QmpClient.connect(path, 5000);
      const events: QmpEvent[] = [];
      client.on("event", (event) => events.push(event));
      assert.deepEqual(await client.execute("query-x"), { echoed: "query-x" });
      assert.equal(events.length, 1);
      assert.equal(events[0]!.timestampUs, 1_000_002);
      await client.close();
    } finally {
      server.close();
    }
  });

  test("a command with no reply times out; the server closing rejects the rest at once", async () => {
    const path = join(dir, "silent.sock");
    const sockets: Socket[] = [];
    const server = createServer((socket) => {
      sockets.push(socket);
      socket.write(`${JSON.stringify({ QMP: {} })}\n`);
      socket.on("data", (chunk) => {
        for (const line of chunk.toString().split("\n").filter(Boolean)) {
          const request = JSON.parse(line) as { execute: string; id: string };
          if (request.execute === "qmp_capabilities") socket.write(`${JSON.stringify({ return: {}, id: request.id })}\n`);
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(path, resolve));
    try {
      const client = await QmpClient.connect(path, 5000);
      await assert.rejects(client.execute("slow", undefined, 50), /no reply within 50 ms/);
      const pending = client.execute("never", undefined, 60000);
      const started = Date.now();
      sockets[0]!.destroy();
      await assert.rejects(pending, QmpConnectionError);
      assert.ok(Date.now() - started < 1000, "rejected when the socket closed, not at its timeout");
    } finally {
      server.close();
    }
  });

  test("connecting to a missing socket fails with ENOENT", async () => {
    await assert.rejects(QmpClient.connect(join(dir, "missing.sock"), 1000), { code: "ENOENT" });
  });
});
