// The real pcr-agent (agent/, built by scripts/setup) on the host, for the channel's tests: it
// connects to a stand-in for QEMU's virtio-serial chardev instead of opening a port.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Logger } from "pino";
import { AgentChannel } from "../../worker/agent/channel.js";
import { REPO_ROOT } from "./repo.js";

/** PCR_TEST_AGENT picks another build (say, one with the race detector). */
export const AGENT = process.env.PCR_TEST_AGENT ?? join(REPO_ROOT, "agent", "build", "pcr-agent");
/** A skip reason when the agent is not built, for describe({ skip }). */
export const agentSkip: string | false = existsSync(AGENT)
  ? false
  : "agent/build/pcr-agent is not built (scripts/setup builds it with golang-go)";

/**
 * QEMU's side of the port: one host connection, one guest connection, bytes passed between. The
 * host side stays connected when the agent goes, and bytes sent while no agent listens are
 * dropped, as virtio-serial does.
 */
export class SerialStandIn {
  host?: Socket;
  guest?: Socket;
  private readonly servers: Server[] = [];

  constructor(
    readonly hostPath: string,
    readonly guestPath: string,
  ) {}

  async listen(): Promise<void> {
    const serve = async (path: string, take: (socket: Socket) => void) => void this.servers.push(await listenUnix(path, take));
    await serve(this.hostPath, (socket) => {
      this.host = socket;
      socket.on("data", (chunk) => this.guest?.write(chunk));
      socket.on("error", () => undefined);
    });
    await serve(this.guestPath, (socket) => {
      this.guest = socket;
      socket.on("data", (chunk) => this.host?.write(chunk));
      socket.on("error", () => undefined);
      socket.on("close", () => {
        if (this.guest === socket) this.guest = undefined;
      });
    });
  }

  close(): void {
    this.host?.destroy();
    this.guest?.destroy();
    for (const server of this.servers) server.close();
  }
}

/** A unix socket server on `path`, listening when it resolves. */
export function listenUnix(path: string, take: (socket: Socket) => void): Promise<Server> {
  return new Promise((resolve) => {
    const server = createServer(take);
    server.listen(path, () => resolve(server));
  });
}

/** Starts the agent, connecting to `guestPath` (a SerialStandIn's guest side). */
export function startAgent(guestPath: string): ChildProcess {
  return spawn(AGENT, ["-connect", guestPath], { stdio: ["ignore", "ignore", "pipe"] });
}

/** The real agent joined to an AgentChannel through a SerialStandIn, in a fresh directory. */
export class AgentOnHost {
  private constructor(
    readonly dir: string,
    readonly serial: SerialStandIn,
    public agent: ChildProcess,
    readonly channel: AgentChannel,
  ) {}

  static async start(prefix: string, log: Logger): Promise<AgentOnHost> {
    const dir = await mkdtemp(join(tmpdir(), prefix));
    const serial = new SerialStandIn(join(dir, "host.sock"), join(dir, "guest.sock"));
    await serial.listen();
    const channel = new AgentChannel({ socketPath: serial.hostPath, log, helloIntervalMs: 100 });
    channel.start();
    const agent = startAgent(serial.guestPath);
    await channel.whenReady(10_000);
    return new AgentOnHost(dir, serial, agent, channel);
  }

  /** Kills the agent and starts another on the same port (the channel stays). */
  restartAgent(): void {
    this.agent.kill("SIGKILL");
    this.agent = startAgent(this.serial.guestPath);
  }

  async stop(): Promise<void> {
    this.channel.close();
    this.agent.kill("SIGKILL");
    this.serial.close();
    await rm(this.dir, { recursive: true, force: true });
  }
}
