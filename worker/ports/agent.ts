// The guest agent port: a channel per VM to the agent inside it (worker/agent/, agent/).

export interface ExecRequest {
  argv: string[];
  /** KEY=VALUE entries; empty: a minimal PATH and HOME. */
  env?: string[];
  cwd?: string;
  stdin?: Uint8Array;
  /** The agent kills the command (its whole process group) after this long; 0 or absent: never. */
  timeoutMs?: number;
}

export interface ExecResult {
  /** -1 when a signal ended the command. */
  exitCode: number;
  /** The signal that ended it; 0 if none. */
  signal: number;
  timedOut: boolean;
  stdout: Uint8Array;
  stderr: Uint8Array;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  durationMs: number;
}

export type AgentState = "connecting" | "ready" | "broken" | "closed";

export interface AgentConnection {
  readonly state: AgentState;
  /** Why the channel is broken, when it is. */
  readonly brokenReason?: string;
  /** When the first hello came (epoch ms). */
  readonly readyAtMs?: number;
  exec(request: ExecRequest): Promise<ExecResult>;
  close(): void;
}

export interface GuestAgentPort {
  /** Starts connecting at once, and again whenever the channel drops, until closed. */
  connect(vmId: string, socketPath: string): AgentConnection;
}
