// "Not there" is an answer when reading a path that may be absent (a VM directory removed meanwhile,
// a file not written yet); any other error (EACCES, EIO, ENOSPC, …) is a failure and propagates.
const MISSING = new Set(["ENOENT", "ENOTDIR"]);

export function ifMissing<T, F>(operation: Promise<T>, fallback: F): Promise<T | F> {
  return operation.catch((err: NodeJS.ErrnoException) => {
    if (MISSING.has(err.code ?? "")) return fallback;
    throw err;
  });
}
