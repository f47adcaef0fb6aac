// The GuestAgentPort: one AgentChannel per VM.
import type { Logger } from "pino";
import { AGENT_VSOCK_PORT } from "../ports/agent.js";
import type { AgentConnection, AgentTransport, GuestAgentPort } from "../ports/index.js";
import { AgentChannel } from "./channel.js";

export function createGuestAgents(options: { logger: Logger }): GuestAgentPort {
  return {
    connect(vmId: string, socketPath: string, transport: AgentTransport): AgentConnection {
      const channel = new AgentChannel({
        socketPath,
        vsockPort: transport === "vsock" ? AGENT_VSOCK_PORT : undefined,
        log: options.logger.child({ component: "agent", vmId }),
      });
      channel.start();
      return channel;
    },
  };
}
