// Runs the network tools (ip, nft, sysctl), optionally inside a network namespace so that tests
// and benchmarks never touch the host's networking.
import { execa } from "execa";

export interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs a command with optional stdin; never throws for a non-zero exit. */
export type Runner = (command: string, args: string[], input?: string) => Promise<RunResult>;

export function createRunner(options: { netns?: string } = {}): Runner {
  return async (command, args, input) => {
    const [file, argv] = options.netns ? ["ip", ["netns", "exec", options.netns, command, ...args]] : [command, args];
    const result = await execa(file, argv, { reject: false, input: input ?? "", stripFinalNewline: false });
    return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
  };
}
