// Stable error codes: every RPC exception reason is "<CODE>: <message>".
export const ERROR_CODES = [
  "INVALID_ARGUMENT",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "UNAVAILABLE",
  "DEADLINE_EXCEEDED",
  "INTERNAL",
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export class WorkerError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "WorkerError";
  }

  /** The wire form: "CODE: message". */
  get reason(): string {
    return `${this.code}: ${this.message}`;
  }

  /** Parses "CODE: message" back; unknown shapes become INTERNAL with the whole text. */
  static fromReason(reason: string): WorkerError {
    const match = /^([A-Z_]+): ([\s\S]*)$/.exec(reason);
    if (match && (ERROR_CODES as readonly string[]).includes(match[1]!)) {
      return new WorkerError(match[1] as ErrorCode, match[2]!);
    }
    return new WorkerError("INTERNAL", reason);
  }
}

export const invalidArgument = (message: string) => new WorkerError("INVALID_ARGUMENT", message);
export const notFound = (message: string) => new WorkerError("NOT_FOUND", message);
export const alreadyExists = (message: string) => new WorkerError("ALREADY_EXISTS", message);
export const failedPrecondition = (message: string) => new WorkerError("FAILED_PRECONDITION", message);
export const resourceExhausted = (message: string) => new WorkerError("RESOURCE_EXHAUSTED", message);
export const unavailable = (message: string) => new WorkerError("UNAVAILABLE", message);
export const internal = (message: string, cause?: unknown) => new WorkerError("INTERNAL", message, { cause });

/** Any thrown value as a WorkerError; foreign errors become INTERNAL. */
export function asWorkerError(err: unknown): WorkerError {
  if (err instanceof WorkerError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return internal(message, err);
}
