// The guest agent port: a channel per VM to the agent inside it (worker/agent/, agent/).
import type { AgentTransport } from "./vmm.js";

export type { AgentTransport };

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

// --- files: each call moves at most one agent frame's worth (AGENT_CHUNK_BYTES) -----------------

/** The most file bytes one agent call carries (a frame is 256 KiB; this leaves room for its header). */
export const AGENT_CHUNK_BYTES = 192 * 1024;

export interface FileWrite {
  path: string;
  /** Where in the file the bytes go. */
  offset: number;
  data: Uint8Array;
  /** Permission bits for a file this call creates (default 0o644); an existing file keeps its own. */
  mode?: number;
  /** Cut the file to `offset` first (the first chunk of a whole-file write). */
  truncate?: boolean;
}

export type FileType = "file" | "dir" | "symlink" | "other";

export interface FileStat {
  /** The entry's own name (its last path element). */
  name: string;
  type: FileType;
  size: number;
  /** Permission bits (mode & 0o7777). */
  mode: number;
  mtimeMs: number;
}

export interface FileChunk {
  data: Uint8Array;
  /** The file's size when read. */
  size: number;
  /** The chunk ends at the end of the file. */
  eof: boolean;
}

export interface DirListing {
  /** Sorted by name, starting at the requested index. */
  entries: FileStat[];
  /** More entries follow: ask again from offset + entries.length. */
  truncated: boolean;
}

// --- long-running processes: started, then read, written, signalled and waited on by pid --------

export interface ProcessStart {
  argv: string[];
  env?: string[];
  cwd?: string;
  /** A terminal: stdin, stdout and stderr are one pty of this size (stderr stays empty). */
  tty?: { rows: number; cols: number };
}

export type OutputStream = "stdout" | "stderr";

export interface ProcessOutput {
  data: Uint8Array;
  /** Where `data` starts: later than asked when the agent's buffer (1 MiB a stream) dropped older bytes. */
  offset: number;
  nextOffset: number;
  /** The stream is closed and everything up to nextOffset has been read. */
  eof: boolean;
}

export interface ProcessStatus {
  pid: number;
  running: boolean;
  /** -1 when a signal ended it (or while running). */
  exitCode: number;
  signal: number;
}

// --- in-guest faults -------------------------------------------------------------------------

export type GuestFault =
  /** Signal every process matching pid or name (comm, or argv[0]'s base name); not the agent or init. */
  | { kind: "kill"; pid?: number; name?: string; signal: number }
  | { kind: "freeze"; pid?: number; name?: string }
  | { kind: "thaw"; pids: number[] }
  /** Steps the guest's realtime clock by deltaMs (negative: back). */
  | { kind: "clockShift"; deltaMs: number }
  /** Steps the clock +deltaMs and back every periodMs until stopped; stopping leaves it where it began. */
  | { kind: "clockStrobe"; id: string; deltaMs: number; periodMs: number }
  | { kind: "clockStrobeStop"; id: string }
  /** Writes a file in dir until the filesystem is full (ENOSPC). */
  | { kind: "fillDisk"; id: string; dir: string }
  | { kind: "unfillDisk"; id: string; dir: string }
  /** Undoes every fault the agent still holds (after a worker restart, which forgot them). */
  | { kind: "reset" };

export interface GuestFaultResult {
  /** The processes a kill or freeze reached. */
  pids: number[];
  /** The bytes a fillDisk wrote. */
  bytes: number;
}

/** What makes a pooled VM one tenant's (agent/personalize.go): identity, randomness, clock, network. */
export interface Personalization {
  hostname: string;
  /** Credited to the guest kernel's input pool, which then reseeds: clones of one snapshot diverge. */
  seed: Uint8Array;
  /** 32 lower-case hex digits, written to /etc/machine-id. */
  machineId: string;
  /** The host's clock: a restored guest wakes with its snapshot's. */
  nowMs: number;
  /** The network, all or none: "10.0.0.5/24", gateway, DNS server, MAC. */
  address?: string;
  gateway?: string;
  dns?: string;
  mac?: string;
  /** Without an address: only bring the NIC up (a pool warms a guest so, before pausing it). */
  linkUp?: boolean;
}

export type AgentState = "connecting" | "ready" | "broken" | "closed";

export interface AgentConnection {
  readonly state: AgentState;
  /** Why the channel is broken, when it is. */
  readonly brokenReason?: string;
  /** When the first hello came (epoch ms). */
  readonly readyAtMs?: number;
  /** Resolves at the agent's hello; rejects UNAVAILABLE after timeoutMs or when the channel breaks. */
  whenReady(timeoutMs: number): Promise<unknown>;
  exec(request: ExecRequest): Promise<ExecResult>;

  /** Creates missing parent directories. Answers the file's size after the write. */
  writeFile(request: FileWrite): Promise<{ size: number }>;
  /** At most AGENT_CHUNK_BYTES from offset. */
  readFile(path: string, offset: number, length: number): Promise<FileChunk>;
  /** Does not follow a final symlink. NOT_FOUND when nothing is there. */
  stat(path: string): Promise<FileStat>;
  list(path: string, offset: number): Promise<DirListing>;

  startProcess(request: ProcessStart): Promise<{ pid: number }>;
  /** Waits up to waitMs for bytes past offset (or the stream's end) before answering. */
  readProcess(pid: number, stream: OutputStream, offset: number, maxBytes: number, waitMs: number): Promise<ProcessOutput>;
  /** Writes to the process's stdin; `close` closes it after the bytes. */
  writeProcess(pid: number, data: Uint8Array, close: boolean): Promise<void>;
  /** Sent to the process's group. */
  signalProcess(pid: number, signal: number): Promise<void>;
  /** Waits up to waitMs for the process to end; answers its status either way. */
  waitProcess(pid: number, waitMs: number): Promise<ProcessStatus>;
  resizeProcess(pid: number, rows: number, cols: number): Promise<void>;

  /** Past timeoutMs (plus the channel's grace) the request is cancelled: DEADLINE_EXCEEDED. */
  fault(fault: GuestFault, timeoutMs: number): Promise<GuestFaultResult>;
  /** Makes a pooled VM its tenant's; answers the network interface it configured ("" without a network). */
  personalize(request: Personalization, timeoutMs: number): Promise<{ interface: string }>;
  close(): void;
}

export interface GuestAgentPort {
  /** Starts connecting at once, and again whenever the channel drops, until closed. */
  connect(vmId: string, socketPath: string, transport: AgentTransport): AgentConnection;
}

/** The vsock port pcr-agent listens on where the channel is a vsock (Cloud Hypervisor). */
export const AGENT_VSOCK_PORT = 1024;
