// Append-only audit log of every mutating call, one JSON object per line.
import { createWriteStream, mkdirSync, type WriteStream } from "node:fs";
import { dirname } from "node:path";

export interface AuditEntry {
  time: string;
  caller: string;
  requestId: string;
  method: string;
  vmId?: string;
  code: string;
  durationMs: number;
  /** injectFault: the fault kind and its parameters; injectFault and clearFault: the fault id. */
  fault?: string;
  faultSpec?: unknown;
  faultId?: string;
}

export class AuditLog {
  private readonly stream: WriteStream;

  constructor(path: string) {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    this.stream = createWriteStream(path, { flags: "a", mode: 0o600 });
  }

  write(entry: AuditEntry): void {
    this.stream.write(`${JSON.stringify(entry)}\n`);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.stream.end(resolve));
  }
}
