// The channel over a hybrid vsock proxy, as Cloud Hypervisor serves its vsock on the host: each
// connection says `CONNECT <port>\n`, is answered `OK <host port>\n` (or closed when nothing
// listens on that port in the guest), and frames follow. A stand-in plays the proxy in front of
// the real agent; Cloud Hypervisor itself cannot run on these hosts (no KVM).
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import type { Server, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { AgentChannel } from "../../worker/agent/channel.js";
import { AGENT_VSOCK_PORT } from "../../worker/ports/agent.js";
import { agentSkip, listenUnix, startAgent } from "../helpers/agent.js";
import { waitFor } from "../helpers/vm.js";

const log = pino({ level: process.env.PCR_TEST_LOG ?? "silent" });

/** The VMM's vsock proxy: a host side speaking CONNECT/OK, joined to the agent's connection. */
class VsockProxyStandIn {
  guest?: Socket;
  /** CONNECT lines received, in order. */
  readonly asked: string[] = [];
  /** What to answer a CONNECT: "ok" (if an agent is there), "close", or literal bytes. */
  answer: "ok" | "close" | Buffer = "ok";
  private readonly servers: Server[] = [];

  constructor(
    readonly hostPath: string,
    readonly guestPath: string,
  ) {}

  async listen(): Promise<void> {
    const serve = async (path: string, take: (socket: Socket) => void) => void this.servers.push(await listenUnix(path, take));
    await serve(this.guestPath, (socket) => {
      this.guest = socket;
      socket.on("error", () => undefined);
    });
    await serve(this.hostPath, (host) => {
      host.on("error", () => undefined);
      let line = "";
      const onLine = (chunk: Buffer) => {
        line += chunk.toString("latin1");
        if (!line.includes("\n")) return;
        host.off("data", onLine);
        this.asked.push(line.slice(0, line.indexOf("\n")));
        const guest = this.guest;
        if (this.answer === "close" || !guest) return void host.destroy();
        if (this.answer !== "ok") return void host.end(this.answer);
        // The answer and the agent's first bytes may come in one chunk: the channel must split them.
        guest.removeAllListeners("data");
        host.write("OK 1073741824\n");
        guest.on("data", (data) => host.write(data));
        host.on("data", (data) => guest.write(data));
      };
      host.on("data", onLine);
    });
  }

  close(): void {
    this.guest?.destroy();
    for (const server of this.servers) server.close();
  }
}

describe("the agent channel over a hybrid vsock (Cloud Hypervisor's)", { skip: agentSkip, concurrency: false }, () => {
  let dir: string;
  let proxy: VsockProxyStandIn;
  let agent: ChildProcess | undefined;
  const channels: AgentChannel[] = [];
  const channel = () => {
    const made = new AgentChannel({ socketPath: proxy.hostPath, log, helloIntervalMs: 100, vsockPort: AGENT_VSOCK_PORT });
    channels.push(made);
    made.start();
    return made;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "pcr-agent-vsock-"));
    proxy = new VsockProxyStandIn(join(dir, "host.sock"), join(dir, "guest.sock"));
    await proxy.listen();
  });
  after(async () => {
    for (const made of channels) made.close();
    agent?.kill("SIGKILL");
    proxy.close();
    await rm(dir, { recursive: true, force: true });
  });

  test("nothing listens in the guest yet: the proxy closes each CONNECT; the channel asks again until the agent is there", async () => {
    proxy.answer = "close";
    const waiting = channel();
    await waitFor("two refused CONNECTs", 10_000, async () => (proxy.asked.length >= 2 ? true : undefined));
    assert.ok(
      proxy.asked.every((line) => line === `CONNECT ${AGENT_VSOCK_PORT}`),
      proxy.asked.join(" | "),
    );
    assert.equal(waiting.state, "connecting", "refused is not broken");
    agent = startAgent(proxy.guestPath);
    await waitFor("the agent to connect to the proxy", 10_000, async () => (proxy.guest ? true : undefined));
    proxy.answer = "ok";
    await waiting.whenReady(10_000);
    const result = await waiting.exec({ argv: ["/bin/echo", "over vsock"] });
    assert.equal(Buffer.from(result.stdout).toString(), "over vsock\n");
    waiting.close();
  });

  test("an answer that is not `OK <port>` (or is too long) ends that connection only; the channel tries again", async () => {
    for (const answer of [Buffer.from("ERR no such port\n"), Buffer.alloc(200, 0x41)]) {
      proxy.answer = answer;
      const before = proxy.asked.length;
      const made = channel();
      await waitFor("a second CONNECT after the bad answer", 10_000, async () => (proxy.asked.length >= before + 2 ? true : undefined));
      assert.equal(made.state, "connecting");
      assert.equal(made.brokenReason, undefined);
      made.close();
    }
    proxy.answer = "ok";
  });
});
