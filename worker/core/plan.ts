// A create is a sequence of named steps; each registers its undo. A failure at any step
// runs the undos of the earlier ones in reverse order, and the error names the step.
import { asWorkerError, WorkerError } from "./errors.js";

type Undo = () => Promise<void>;

export class Plan {
  private readonly undos: { step: string; undo: Undo }[] = [];
  /** Milliseconds each finished step took, for the log line that ends a create. */
  readonly stepMs: Record<string, number> = {};

  constructor(
    private readonly onUndoError: (step: string, err: unknown) => void,
    /** Once aborted, the next step does not start: everything done so far is undone. */
    private readonly signal?: AbortSignal,
  ) {}

  /** Runs `action`; on success registers `undo` (if any) and returns the action's result. */
  async step<T>(name: string, action: () => Promise<T>, undo?: (result: T) => Promise<void>): Promise<T> {
    let result: T;
    const started = performance.now();
    try {
      if (this.signal?.aborted) throw new WorkerError("DEADLINE_EXCEEDED", "the call's deadline passed");
      result = await action();
      this.stepMs[name] = Math.round((this.stepMs[name] ?? 0) + performance.now() - started);
    } catch (err) {
      const cause = asWorkerError(err);
      await this.rollback();
      throw new WorkerError(cause.code, `${name}: ${cause.message}`, { cause: err });
    }
    if (undo) this.undos.push({ step: name, undo: () => undo(result) });
    return result;
  }

  /** Undoes every completed step, newest first; undo errors are reported, never thrown. */
  async rollback(): Promise<void> {
    while (this.undos.length > 0) {
      const { step, undo } = this.undos.pop()!;
      try {
        await undo();
      } catch (err) {
        this.onUndoError(step, err);
      }
    }
  }
}
