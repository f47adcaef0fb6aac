// The GuestAgentPort: one AgentChannel per VM.
import type { Logger } from "pino";
import type { AgentConnection, GuestAgentPort } from "../ports/index.js";
import { AgentChannel } from "./channel.js";

export function createGuestAgents(options: { logger: Logger }): GuestAgentPort {
  return {
    connect(vmId: string, socketPath: string): AgentConnection {
      const channel = new AgentChannel({ socketPath, log: options.logger.child({ component: "agent", vmId }) });
      channel.start();
      return channel;
    },
  };
}
