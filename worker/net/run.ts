// Runs the network tools (ip, nft, sysctl, conntrack), optionally inside a network namespace so
// that tests and benchmarks never touch the host's networking. node:child_process directly, not
// execa: a create spawns a few of these, and execa's extra work costs ~2 ms per process here.
import { spawn } from "node:child_process";

export interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs a command with optional stdin; never throws for a non-zero exit. */
export type Runner = (command: string, args: string[], input?: string) => Promise<RunResult>;

export function createRunner(options: { netns?: string } = {}): Runner {
  return (command, args, input) => {
    const [file, argv] = options.netns ? ["ip", ["netns", "exec", options.netns, command, ...args]] : [command, args];
    const child = spawn(file, argv, { stdio: ["pipe", "pipe", "pipe"] });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on("data", (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));
    // A tool that exits before reading all of its input is answered by its exit code, not EPIPE.
    child.stdin.on("error", () => undefined);
    child.stdin.end(input ?? "");
    return new Promise<RunResult>((resolve) => {
      // A missing binary (ENOENT) is a failed run like any other: exit code -1 and the reason.
      child.once("error", (err) => resolve({ exitCode: -1, stdout: "", stderr: `${command}: ${err.message}` }));
      child.once("close", (code) =>
        resolve({ exitCode: code ?? -1, stdout: Buffer.concat(stdout).toString(), stderr: Buffer.concat(stderr).toString() }),
      );
    });
  };
}
