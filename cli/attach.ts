// `exec -t`: a process in the guest on a pty, joined to this terminal. Keys go to it as they are
// typed (raw mode), its output comes back by long polls, a window size change resizes its pty;
// the exit code is the process's (128+N for signal N). The terminal is restored however it ends.
import type { WorkerClient } from "../worker/rpc/worker-client.js";

const POLL_MS = 10_000;
const READ_BYTES = 192 * 1024;

export interface AttachOptions {
  argv: string[];
  env: string[];
  cwd: string;
}

export async function attachTerminal(client: WorkerClient, id: string, options: AttachOptions): Promise<number> {
  const { stdin, stdout } = process;
  const size = () => ({ rows: stdout.rows || 24, cols: stdout.columns || 80 });
  const env = options.env.some((entry) => entry.startsWith("TERM="))
    ? options.env
    : [`TERM=${process.env.TERM ?? "xterm"}`, ...options.env];
  const pid = await client.startProcess(id, { argv: options.argv, env, cwd: options.cwd, tty: size() });

  // Keys are sent one write at a time, in order; a failed write ends the input side only.
  let writing: Promise<void> = Promise.resolve();
  const send = (data: Uint8Array, close: boolean) => {
    writing = writing.then(() => client.writeProcess(id, pid, data, close)).catch(() => undefined);
  };
  const onData = (chunk: Buffer) => send(chunk, false);
  const onEnd = () => send(new Uint8Array(), true);
  const onResize = () => {
    const { rows, cols } = size();
    client.resizeProcess(id, pid, rows, cols).catch(() => undefined);
  };
  const raw = stdin.isTTY === true;
  if (raw) stdin.setRawMode(true);
  stdin.on("data", onData);
  stdin.on("end", onEnd);
  stdout.on("resize", onResize);
  try {
    let offset = 0;
    for (;;) {
      const output = await client.readProcess(id, pid, "stdout", offset, READ_BYTES, POLL_MS);
      if (output.data.length > 0) stdout.write(output.data);
      offset = output.nextOffset;
      if (output.eof) break;
    }
    for (;;) {
      const status = await client.waitProcess(id, pid, POLL_MS);
      if (!status.running) return status.signal ? 128 + status.signal : status.exitCode;
    }
  } finally {
    stdin.off("data", onData);
    stdin.off("end", onEnd);
    stdout.off("resize", onResize);
    if (raw) stdin.setRawMode(false);
    stdin.pause();
  }
}
