// Waiting for a line a child process prints on stdout as it starts ("listening on", "joined fleet").
import type { ResultPromise } from "execa";

/**
 * Resolves with everything printed so far once stdout includes `marker`; rejects when `timeoutMs`
 * passes or the child exits first, with its logs (`logs()`, its stderr) in the message.
 */
export function waitForOutput(child: ResultPromise, marker: string, what: string, timeoutMs: number, logs: () => string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`${what} did not print "${marker}" in ${timeoutMs} ms; logs:\n${logs()}`)), timeoutMs);
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes(marker)) {
        clearTimeout(timer);
        resolve(out);
      }
    });
    void child.then((result) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${result.exitCode ?? result.signal}) before "${marker}"; logs:\n${logs()}`));
    });
  });
}
