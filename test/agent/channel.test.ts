// The worker's agent channel against the real pcr-agent (agent/, built by scripts/setup), joined
// by a stand-in for QEMU's virtio-serial chardev (test/helpers/agent.ts).
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { AgentChannel } from "../../worker/agent/channel.js";
import { encodeFrame, FrameType } from "../../worker/agent/frame.js";
import { AgentOnHost, agentSkip, SerialStandIn } from "../helpers/agent.js";
import { rejectsWith } from "../helpers/errors.js";
import { waitFor } from "../helpers/vm.js";

const log = pino({ level: process.env.PCR_TEST_LOG ?? "silent" });

describe("agent channel with the real agent", { skip: agentSkip }, () => {
  let host: AgentOnHost;
  let channel: AgentChannel;

  before(async () => {
    host = await AgentOnHost.start("pcr-agent-", log);
    ({ channel } = host);
  });
  after(() => host.stop());

  test("hello: the agent's version, and the channel is ready", () => {
    assert.equal(channel.state, "ready");
    assert.equal(channel.hello?.protocol, 1);
    assert.match(channel.hello?.version ?? "", /^\d+\.\d+\.\d+$/);
  });

  test("exit codes, stdout and stderr", async () => {
    const ok = await channel.exec({ argv: ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"] });
    assert.equal(ok.exitCode, 3);
    assert.equal(ok.signal, 0);
    assert.equal(ok.stdout.toString(), "out\n");
    assert.equal(ok.stderr.toString(), "err\n");
  });

  test("stdin, env and cwd reach the command", async () => {
    const result = await channel.exec({
      argv: ["/bin/sh", "-c", 'cat; echo "$GREETING"; pwd'],
      env: ["GREETING=hello", "PATH=/bin:/usr/bin"],
      cwd: "/tmp",
      stdin: Buffer.from("from stdin\n"),
    });
    assert.equal(result.stdout.toString(), "from stdin\nhello\n/tmp\n");
  });

  test("a signal ends the command: the answer names it", async () => {
    const result = await channel.exec({ argv: ["/bin/sh", "-c", "kill -TERM $$"] });
    assert.equal(result.signal, 15);
    assert.equal(result.exitCode, -1);
  });

  test("a timeout kills the command and its children, and the answer says so", async () => {
    const started = Date.now();
    const result = await channel.exec({ argv: ["/bin/sh", "-c", "sleep 30 & wait"], timeoutMs: 300 });
    assert.equal(result.timedOut, true);
    assert.equal(result.signal, 9);
    assert.ok(Date.now() - started < 5000);
  });

  test("output beyond the bound is cut and flagged", async () => {
    const result = await channel.exec({ argv: ["/bin/sh", "-c", "head -c 200000 /dev/zero"] });
    assert.equal(result.stdout.length, 64 * 1024);
    assert.equal(result.stdoutTruncated, true);
  });

  test("a command that cannot start is an error, not an exit code", async () => {
    await assert.rejects(channel.exec({ argv: ["/no/such/binary"] }), /FAILED_PRECONDITION|no such file/i);
  });

  test("100 commands at once all answer, each its own", async () => {
    const results = await Promise.all(Array.from({ length: 100 }, (_, index) => channel.exec({ argv: ["/bin/echo", String(index)] })));
    assert.deepEqual(
      results.map((result) => result.stdout.toString().trim()),
      Array.from({ length: 100 }, (_, index) => String(index)),
    );
  });

  test("the agent killed: its requests fail UNAVAILABLE; a new agent serves again", async () => {
    const long = channel.exec({ argv: ["/bin/sleep", "30"], timeoutMs: 60_000 });
    await new Promise((resolve) => setTimeout(resolve, 200));
    host.restartAgent();
    await rejectsWith(long, "UNAVAILABLE", /the VM's agent restarted/);
    const after = await channel.exec({ argv: ["/bin/echo", "back"] });
    assert.equal(after.stdout.toString(), "back\n");
  });
});

describe("agent channel against a hostile guest", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "pcr-agent-hostile-"));
  });
  after(async () => rm(dir, { recursive: true, force: true }));

  /** A "guest" that answers the first hello request with noise and a hello, then does `after`. */
  async function hostile(name: string, after: (guest: Socket) => void): Promise<{ channel: AgentChannel; done(): void }> {
    const serial = new SerialStandIn(join(dir, `${name}-host.sock`), join(dir, `${name}-guest.sock`));
    await serial.listen();
    const guest = await new Promise<Socket>((resolve, reject) => {
      const socket = connect(serial.guestPath, () => resolve(socket));
      socket.once("error", reject);
    });
    const hello = Buffer.from(JSON.stringify({ protocol: 1, version: "6.6.6", uptimeMs: 1, pid: 1 }));
    guest.once("data", () => {
      guest.write(
        Buffer.concat([Buffer.from("noise before the hello"), encodeFrame({ type: FrameType.hello, stream: 0, payload: hello })]),
      );
      after(guest);
    });
    const channel = new AgentChannel({ socketPath: serial.hostPath, log, helloIntervalMs: 50 });
    channel.start();
    await channel.whenReady(5000);
    return {
      channel,
      done() {
        channel.close();
        guest.destroy();
        serial.close();
      },
    };
  }

  test("garbage after the hello: the channel is broken, says why, and refuses requests", async () => {
    const { channel, done } = await hostile("garbage", (guest) => setTimeout(() => guest.write("\x00garbage garbage garbage"), 100));
    await waitFor("the channel to break", 10_000, async () => (channel.state === "broken" ? true : undefined), 20);
    assert.match(channel.brokenReason ?? "", /magic/);
    await rejectsWith(channel.exec({ argv: ["true"] }), "UNAVAILABLE", /the VM's agent is broken: frame without the magic/);
    done();
  });

  test("a frame declaring more than the bound breaks the channel at its header, nothing buffered", async () => {
    const header = encodeFrame({ type: FrameType.exit, stream: 1, payload: Buffer.alloc(0) });
    header.writeUInt32BE(0xffff_ffff, 12);
    const { channel, done } = await hostile("huge", (guest) => setTimeout(() => guest.write(header), 100));
    await waitFor("the channel to break", 10_000, async () => (channel.state === "broken" ? true : undefined), 20);
    assert.match(channel.brokenReason ?? "", /at most/);
    done();
  });

  test("an answer that is not what the schema says fails its request and breaks the channel", async () => {
    let guestSocket: Socket | undefined;
    const { channel, done } = await hostile("schema", (guest) => (guestSocket = guest));
    const pending = channel.exec({ argv: ["true"] });
    const lie = Buffer.from(JSON.stringify({ exitCode: 1e9, signal: 0, timedOut: false, stdout: "", stderr: "" }));
    guestSocket?.write(encodeFrame({ type: FrameType.exit, stream: 1, payload: lie }));
    await rejectsWith(pending, "UNAVAILABLE", /does not match its schema/);
    assert.equal(channel.state, "broken");
    done();
  });

  test("answers for streams nobody asked on are ignored; the channel stays usable", async () => {
    let guestSocket: Socket | undefined;
    const { channel, done } = await hostile("unasked", (guest) => (guestSocket = guest));
    const answer = Buffer.from(
      JSON.stringify({
        exitCode: 0,
        signal: 0,
        timedOut: false,
        stdout: "",
        stderr: "",
        stdoutTruncated: false,
        stderrTruncated: false,
        durationMs: 1,
      }),
    );
    for (let stream = 1000; stream < 1100; stream++) guestSocket?.write(encodeFrame({ type: FrameType.exit, stream, payload: answer }));
    // An echo of the channel's own next request proves every answer before it was read.
    const echo = channel.exec({ argv: ["true"] });
    guestSocket?.write(encodeFrame({ type: FrameType.exit, stream: 1, payload: answer }));
    assert.equal((await echo).exitCode, 0);
    assert.equal(channel.state, "ready");
    assert.equal(channel.inFlight, 0);
    done();
  });

  test("requests beyond the in-flight bound are refused, not queued", async () => {
    const { channel, done } = await hostile("bound", () => undefined);
    const limited = channel as unknown as { options: { maxInFlight?: number } };
    limited.options.maxInFlight = 3;
    const silent = [1, 2, 3].map(() => channel.exec({ argv: ["sleep", "9"], timeoutMs: 60_000 }));
    await rejectsWith(channel.exec({ argv: ["true"] }), "RESOURCE_EXHAUSTED", /3 requests to the VM's agent are in flight/);
    done();
    for (const request of silent) await rejectsWith(request, "UNAVAILABLE", /closed/);
  });

  test("a request too large to frame is INVALID_ARGUMENT and holds no in-flight slot", async () => {
    const { channel, done } = await hostile("oversize", () => undefined);
    const limited = channel as unknown as { options: { maxInFlight?: number } };
    limited.options.maxInFlight = 2;
    // Control characters pass the core's byte bound but grow sixfold as JSON escapes.
    const escapes = "\u0001".repeat(100 * 1024);
    for (let attempt = 0; attempt < 5; attempt++) {
      await rejectsWith(channel.exec({ argv: ["echo", escapes] }), "INVALID_ARGUMENT", /bytes encoded/);
    }
    assert.equal(channel.inFlight, 0);
    assert.equal(channel.state, "ready");
    done();
  });

  test("a guest that never says hello: waiting for it ends at its timeout", async () => {
    const serial = new SerialStandIn(join(dir, "mute-host.sock"), join(dir, "mute-guest.sock"));
    await serial.listen();
    const channel = new AgentChannel({ socketPath: serial.hostPath, log, helloIntervalMs: 50 });
    channel.start();
    await rejectsWith(channel.whenReady(300), "UNAVAILABLE", /did not say hello within 300 ms/);
    assert.equal(channel.state, "connecting");
    channel.close();
    serial.close();
  });
});
