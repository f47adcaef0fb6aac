// Where a program is on PATH, for suites that skip (naming it) when a tool is missing.
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";

/** The executable's path on PATH, or undefined. */
export function onPath(binary: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    try {
      accessSync(join(dir, binary), constants.X_OK);
      return join(dir, binary);
    } catch {
      /* not here */
    }
  }
  return undefined;
}
