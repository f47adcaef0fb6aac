// A long-lived `nft -j -i` or `ip -force -batch -` that takes one request at a time on stdin, so
// a request costs a write instead of a process: measured here, an nft transaction of one VM's
// rules 7 ms instead of 22, a TAP 0.5 ms instead of 9. Neither tool answers a request, so each
// one is followed by a sentinel line that always fails with a unique token: the request's error
// output is whatever stderr holds before the sentinel's error (both tools write errors in order,
// unbuffered). Stdout is drained and ignored; listings still run as processes of their own.
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";

export interface SessionDialect {
  command: string;
  args: string[];
  /** A unique name for the n-th sentinel. */
  token(n: number): string;
  /** A line that always fails, with `token` in its error output. */
  sentinel(token: string): string;
  /** The sentinel's error output in `stderr`: where it starts and ends, or undefined while incomplete. */
  sentinelSpan(stderr: string, token: string): { start: number; end: number } | undefined;
  /** Whether the request's error output means it failed. */
  failed(stderr: string): boolean;
}

/** nft's error for a command line: "Error: …", the line itself, a line of carets under the culprit. */
export const NFT_SESSION: SessionDialect = {
  command: "nft",
  args: ["-j", "-i"],
  token: (n) => `pcr_sentinel_${n}`,
  sentinel: (token) => `delete table inet ${token}`,
  sentinelSpan(stderr, token) {
    const line = stderr.indexOf(`\ndelete table inet ${token}\n`);
    if (line < 0) return undefined;
    // The newline that ends the line of carets under the sentinel line.
    const end = stderr.indexOf("\n", line + `\ndelete table inet ${token}\n`.length);
    return end < 0 ? undefined : { start: stderr.lastIndexOf("\n", line - 1) + 1, end: end + 1 };
  },
  failed: (stderr) => stderr.trim() !== "",
};

/** With -force, ip goes on after a failing line and follows its error with "Command failed -:<line>". */
export const IP_SESSION: SessionDialect = {
  command: "ip",
  args: ["-force", "-batch", "-"],
  // "~" is in no name the worker gives a link; at most 15 characters.
  token: (n) => `pcr~${n % 1e10}`,
  sentinel: (token) => `link show dev ${token}`,
  sentinelSpan(stderr, token) {
    const start = stderr.indexOf(`Device "${token}" does not exist.\n`);
    if (start < 0) return undefined;
    const end = stderr.indexOf("\n", stderr.indexOf("\n", start) + 1);
    return end < 0 ? undefined : { start, end: end + 1 };
  },
  failed: (stderr) => stderr.includes("Command failed"),
};

export interface SessionOptions {
  netns?: string;
  /** A request that has not ended after this long kills the process (the next one starts another). */
  timeoutMs?: number;
  /** Input after which the process is replaced: `nft -i` keeps every line in its history. */
  maxInputBytes?: number;
}

const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_MAX_INPUT_BYTES = 4 * 1024 * 1024;

interface Pending {
  token: string;
  resolve(stderr: string): void;
  reject(err: Error): void;
}

export class ToolSession {
  private child?: ChildProcessWithoutNullStreams;
  private stderr = "";
  private written = 0;
  private sequence = 0;
  private timer?: NodeJS.Timeout;
  private timedOut = false;
  private current?: Pending;
  private readonly queue: { lines: string[]; pending: Pending }[] = [];

  constructor(
    private readonly dialect: SessionDialect,
    private readonly options: SessionOptions = {},
  ) {}

  /** Runs the lines as one request; resolves with their error output, empty when there was none. */
  request(lines: string[]): Promise<{ failed: boolean; stderr: string }> {
    const bad = lines.find((line) => /[\n\r]/.test(line));
    if (bad !== undefined) return Promise.reject(new Error(`${this.dialect.command} session: a request line holds a line break`));
    return new Promise<string>((resolve, reject) => {
      const token = this.dialect.token(++this.sequence);
      this.queue.push({ lines, pending: { token, resolve, reject } });
      this.next();
    }).then((stderr) => ({ failed: this.dialect.failed(stderr), stderr }));
  }

  /** The running process's pid, if one runs. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Ends the process; a later request starts a new one. */
  close(): void {
    const child = this.child;
    this.child = undefined;
    child?.stdin.end();
    this.failAll(new Error(`${this.dialect.command} session closed`));
  }

  private next(): void {
    if (this.current || this.queue.length === 0) return;
    const { lines, pending } = this.queue.shift()!;
    let child: ChildProcessWithoutNullStreams;
    try {
      child = this.process();
    } catch (err) {
      pending.reject(err as Error);
      this.next();
      return;
    }
    this.current = pending;
    this.keepAlive(true);
    const text = `${[...lines, this.dialect.sentinel(pending.token)].join("\n")}\n`;
    this.written += Buffer.byteLength(text);
    child.stdin.write(text);
  }

  private process(): ChildProcessWithoutNullStreams {
    if (this.child) return this.child;
    const { command, args } = this.dialect;
    const [file, argv] = this.options.netns ? ["ip", ["netns", "exec", this.options.netns, command, ...args]] : [command, args];
    // HOME nowhere: `nft -i` would read and write a history file there.
    const child = spawn(file, argv, { stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, HOME: "/nonexistent" } });
    this.child = child;
    this.stderr = "";
    this.written = 0;
    this.timedOut = false;
    child.stdout.resume();
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk: string) => this.heard(child, chunk));
    child.stdin.on("error", () => undefined); // the exit below says what happened
    const gone = (reason: string) => {
      if (this.child !== child) return;
      this.child = undefined;
      this.failAll(new Error(`${command} session ended: ${reason}${this.stderr.trim() ? `: ${this.stderr.trim()}` : ""}`));
    };
    child.once("error", (err) => gone(err.message));
    child.once("exit", (code, signal) =>
      gone(
        this.timedOut
          ? `no answer within ${this.options.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`
          : signal
            ? `killed by ${signal}`
            : `exit ${code}`,
      ),
    );
    return child;
  }

  private heard(child: ChildProcessWithoutNullStreams, chunk: string): void {
    if (child !== this.child) return;
    this.stderr += chunk;
    const pending = this.current;
    if (!pending) return;
    const span = this.dialect.sentinelSpan(this.stderr, pending.token);
    if (!span) return;
    const own = this.stderr.slice(0, span.start);
    this.stderr = this.stderr.slice(span.end);
    this.current = undefined;
    clearTimeout(this.timer);
    if (this.written > (this.options.maxInputBytes ?? DEFAULT_MAX_INPUT_BYTES)) {
      this.child = undefined;
      child.stdin.end();
    }
    pending.resolve(own);
    if (this.queue.length === 0) this.keepAlive(false);
    this.next();
  }

  /** While a request runs, the process and its pipes keep Node alive; while idle, they do not. */
  private keepAlive(busy: boolean): void {
    const child = this.child;
    if (!child) return;
    for (const handle of [child, child.stdin, child.stdout, child.stderr] as { ref(): void; unref(): void }[]) {
      if (busy) handle.ref();
      else handle.unref();
    }
    clearTimeout(this.timer);
    if (busy) {
      const timeoutMs = this.options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
      this.timer = setTimeout(() => {
        this.timedOut = true;
        child.kill("SIGKILL");
      }, timeoutMs);
    }
  }

  private failAll(err: Error): void {
    clearTimeout(this.timer);
    const pending = [this.current, ...this.queue.map((entry) => entry.pending)].filter((entry) => entry !== undefined);
    this.current = undefined;
    this.queue.length = 0;
    for (const entry of pending) entry.reject(err);
  }
}
