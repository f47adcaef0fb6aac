// The RPC front door against hostile clients: slow and huge frames, connection floods, idle
// hoarding. Each attack runs against a server in a child process (its RSS is its own).
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, describe, test } from "node:test";
import { DEFAULT_MAX_MESSAGE_BYTES } from "../../worker/rpc/limits.js";
import { connectWorker } from "../../worker/rpc/worker-client.js";
import { waitFor } from "../helpers/vm.js";

const MIB = 1024 * 1024;

interface Served {
  child: ChildProcess;
  socketPath: string;
  dir: string;
  /** The TCP port, when served with `tcp`. */
  tcpPort?: number;
  rss(): number;
  stop(): void;
}

const servers: Served[] = [];
after(() => {
  for (const server of servers) server.stop();
});

async function serve(options: { limits?: object; admission?: object; tcp?: string } = {}): Promise<Served> {
  const dir = mkdtempSync(join(tmpdir(), "pcr-front-"));
  chmodSync(dir, 0o755);
  const socketPath = join(dir, "worker.sock");
  const here = fileURLToPath(import.meta.url);
  const script = join(here, "..", here.endsWith(".ts") ? "serve-fake.ts" : "serve-fake.js");
  const execArgv = process.execArgv.filter((arg) => !arg.startsWith("--test"));
  const child = spawn(process.execPath, [...execArgv, script, socketPath, "10", ...(options.tcp ? [options.tcp] : [])], {
    stdio: ["ignore", "pipe", "inherit"],
    env: {
      ...process.env,
      LOG_LEVEL: "error",
      ...(options.limits ? { PCR_TEST_LIMITS: JSON.stringify(options.limits) } : {}),
      ...(options.admission ? { PCR_TEST_ADMISSION: JSON.stringify(options.admission) } : {}),
    },
  });
  let tcpPort: number | undefined;
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (chunk: Buffer) => {
      const ready = /ready(?: tcp (\d+))?/.exec(chunk.toString());
      if (!ready) return;
      tcpPort = ready[1] ? Number(ready[1]) : undefined;
      resolve();
    });
    child.once("exit", (code) => reject(new Error(`server exited with ${code}`)));
  });
  chmodSync(socketPath, 0o777);
  const served: Served = {
    child,
    socketPath,
    dir,
    tcpPort,
    rss: () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"))![1]) * 1024,
    stop: () => {
      child.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
  servers.push(served);
  return served;
}

interface RawConnection {
  socket: net.Socket;
  received: () => Buffer;
  closed: Promise<void>;
}

/** A raw connection that records what the server sent and when it closed; retried while the accept queue is full. */
async function rawConnect(path: string | net.NetConnectOpts): Promise<RawConnection> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await rawConnectOnce(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EAGAIN" || attempt >= 50) throw err;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

function rawConnectOnce(path: string | net.NetConnectOpts): Promise<RawConnection> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = typeof path === "string" ? net.connect(path) : net.connect(path);
    const closed = new Promise<void>((done) => socket.once("close", () => done()));
    socket.on("data", (chunk) => chunks.push(chunk));
    socket.once("connect", () => resolve({ socket, received: () => Buffer.concat(chunks), closed }));
    socket.once("error", reject);
    socket.on("error", () => undefined);
  });
}

/** A one-segment frame header declaring `bytes` of message (header included). */
function header(bytes: number): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32LE(0, 0);
  head.writeUInt32LE((bytes - 8) / 8, 4);
  return head;
}

async function served1s(path: string): Promise<number> {
  const started = performance.now();
  const client = await connectWorker(path);
  try {
    await client.listVms();
  } finally {
    client.close();
  }
  return performance.now() - started;
}

const within = <T>(promise: Promise<T>, ms: number, what: string) =>
  Promise.race([promise, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} not within ${ms} ms`)), ms))]);

describe("rpc front door", () => {
  test("12 connections each declaring a 64 MiB message are cut at the header: nothing is buffered", async () => {
    const server = await serve();
    const before = server.rss();
    const peers = await Promise.all(Array.from({ length: 12 }, () => rawConnect(server.socketPath)));
    for (const peer of peers) peer.socket.write(Buffer.concat([header(64 * MIB), Buffer.alloc(64 * 1024)]));
    await within(Promise.all(peers.map((peer) => peer.closed)), 5000, "the server closing them");
    assert.match(peers[0]!.received().toString("latin1"), /message larger than 8388608 bytes/);
    assert.ok(server.rss() - before < 50 * MIB, `rss grew by ${(server.rss() - before) / MIB} MiB`);
  });

  const budgetTitle =
    "12 connections each sending all but 8 bytes of the largest allowed message: " +
    "the shared budget holds, RSS stays under 300 MiB and comes back after they close";
  test(budgetTitle, async (t) => {
    const server = await serve();
    const before = server.rss();
    const body = Buffer.alloc(DEFAULT_MAX_MESSAGE_BYTES - 8 - 8, 0x41);
    const peers = await Promise.all(Array.from({ length: 12 }, () => rawConnect(server.socketPath)));
    await Promise.all(
      peers.map(
        (peer) =>
          new Promise<void>((resolve) => peer.socket.write(Buffer.concat([header(DEFAULT_MAX_MESSAGE_BYTES), body]), () => resolve())),
      ),
    );
    // 64 MiB holds 8 of these: the other 4 are cut once the server has read their bytes.
    const cut = () => peers.filter((peer) => peer.received().toString("latin1").includes("incomplete messages already")).length;
    let peak = server.rss();
    await waitFor(
      "4 connections cut by the budget",
      20_000,
      async () => {
        peak = Math.max(peak, server.rss());
        return cut() >= 4 ? true : undefined;
      },
      50,
    );
    const refused = cut();
    assert.ok(refused >= 4, `${refused} of 12 connections were cut by the budget`);
    assert.ok(peak < 300 * MIB, `rss ${Math.round(peak / MIB)} MiB while attacked`);
    assert.ok((await served1s(server.socketPath)) < 1000, "another client is still served");
    for (const peer of peers) peer.socket.destroy();
    // Memory goes back to the system once the connections are gone (allow for lazy collection).
    let end = server.rss();
    for (let i = 0; i < 50 && end - before > 50 * MIB; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      end = server.rss();
    }
    const mib = (bytes: number) => `${Math.round(bytes / MIB)} MiB`;
    t.diagnostic(`rss: ${mib(before)} before, ${mib(peak)} under attack, ${mib(end)} after; ${refused}/12 cut by the budget`);
    assert.ok(end - before < 50 * MIB, `rss after close is ${Math.round((end - before) / MIB)} MiB above where it was`);
  });

  test("a message that never completes is cut after the frame deadline; a slow but whole one is not", async () => {
    const server = await serve({ limits: { frameTimeoutMs: 300 } });
    const stalled = await rawConnect(server.socketPath);
    stalled.socket.write(header(1024));
    await within(stalled.closed, 3000, "the stalled connection closing");
    assert.match(stalled.received().toString("latin1"), /not completed within 300 ms/);
    assert.ok((await served1s(server.socketPath)) < 1000);
  });

  test("idle connections are closed after the idle timeout; busy ones are kept", async () => {
    // Idle after 600 ms; the busy connection calls every 50 ms, a twelfth of that.
    const server = await serve({ admission: { idleTimeoutMs: 600 } });
    const idle = await rawConnect(server.socketPath);
    const busy = await connectWorker(server.socketPath);
    let idleClosed = false;
    void idle.closed.then(() => (idleClosed = true));
    const started = Date.now();
    while (!idleClosed && Date.now() - started < 10_000) {
      await busy.listVms();
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.ok(idleClosed, "the idle connection was closed");
    assert.ok(Date.now() - started >= 550, "not before its idle timeout");
    assert.equal((await busy.listVms()).length, 10, "the busy connection still works");
    busy.close();
  });

  test("past the connection cap, a new connection is answered with the reason and closed; the others keep working", async () => {
    const server = await serve({ admission: { maxConnections: 20 } });
    const held = await Promise.all(Array.from({ length: 20 }, () => rawConnect(server.socketPath)));
    const extra = await rawConnect(server.socketPath);
    await within(extra.closed, 3000, "the extra connection closing");
    assert.match(extra.received().toString("latin1"), /RESOURCE_EXHAUSTED: the worker serves at most 20 connections at once/);
    const leaving = held.pop()!;
    leaving.socket.destroy();
    await leaving.closed;
    // Room again once the server has seen it go (its close is processed asynchronously).
    await waitFor(
      "a new connection served after one left",
      5_000,
      () =>
        served1s(server.socketPath).then(
          () => true,
          () => undefined,
        ),
      50,
    );
    for (const peer of held) peer.socket.destroy();
  });

  test("one user may not take every connection: its extra one is refused, root's are not", {
    skip: process.getuid?.() !== 0 ? "needs root to become uid 65534" : false,
  }, async () => {
    const server = await serve({ admission: { maxConnectionsPerPeer: 3 } });
    // uid 65534 opens four connections; waits (up to 10 s) for the server's word on the fourth,
    // then prints, for each, what the server said.
    const script = [
      "use Socket; use POSIX; use IO::Select;",
      "POSIX::setgid(65534); POSIX::setuid(65534) or die $!;",
      "my @s; for my $i (1..4) {",
      "  socket($s[$i], PF_UNIX, SOCK_STREAM, 0) or die $!; connect($s[$i], pack_sockaddr_un($ARGV[0])) or die $!;",
      "}",
      "IO::Select->new($s[4])->can_read(10);",
      "for my $i (1..4) { my $sel = IO::Select->new($s[$i]); my $got = ''; if ($sel->can_read(0)) { sysread($s[$i], $got, 4096); }",
      '  print "$i:" . ($got =~ /(RESOURCE_EXHAUSTED[^\\x00]*connections at once from one uid)/ ? $1 : "open") . "\\n"; }',
    ].join(" ");
    const perl = spawn("perl", ["-e", script, server.socketPath], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    perl.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
    await new Promise((resolve) => perl.once("exit", resolve));
    assert.deepEqual(out.trim().split("\n"), [
      "1:open",
      "2:open",
      "3:open",
      "4:RESOURCE_EXHAUSTED: at most 3 connections at once from one uid",
    ]);
    const root = await Promise.all(Array.from({ length: 5 }, () => rawConnect(server.socketPath)));
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.ok(
      root.every((peer) => peer.received().length === 0 && !peer.socket.destroyed),
      "root is not capped per user",
    );
    for (const peer of root) peer.socket.destroy();
  });

  test("over TCP one address may not take every connection: its extra one is refused, another address's are not", async () => {
    const server = await serve({ admission: { maxConnectionsPerPeer: 3 }, tcp: "127.0.0.1:0" });
    const from = (localAddress: string) => rawConnect({ host: "127.0.0.1", port: server.tcpPort!, localAddress });
    const held = await Promise.all(Array.from({ length: 3 }, () => from("127.0.0.1")));
    const extra = await from("127.0.0.1");
    await within(extra.closed, 3000, "the extra connection closing");
    assert.match(extra.received().toString("latin1"), /RESOURCE_EXHAUSTED: at most 3 connections at once from one address/);
    // Another loopback address is another peer: all three of its connections are kept.
    const other = await Promise.all(Array.from({ length: 3 }, () => from("127.0.0.2")));
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.ok(
      other.every((peer) => peer.received().length === 0 && !peer.socket.destroyed),
      "another address is not capped by the first one's connections",
    );
    assert.ok(
      held.every((peer) => !peer.socket.destroyed),
      "the first address keeps its three",
    );
    for (const peer of [...held, ...other]) peer.socket.destroy();
  });

  test("a new client is served within 1 s beside 5,000 idle connections", async (t) => {
    const server = await serve();
    const idle: net.Socket[] = [];
    for (let batch = 0; batch < 50; batch++) {
      idle.push(...(await Promise.all(Array.from({ length: 100 }, () => rawConnect(server.socketPath)))).map((peer) => peer.socket));
    }
    const ms = await served1s(server.socketPath);
    t.diagnostic(`listVms on a new connection beside ${idle.length} idle ones: ${ms.toFixed(1)} ms`);
    assert.ok(ms < 1000, `${ms} ms`);
    for (const socket of idle) socket.destroy();
  });
});
