// Secret names and sizes are checked before anything is written. Messages never carry values.
import type { SecretInput } from "./api.js";
import { invalidArgument } from "./errors.js";

export const SECRET_LIMITS = { maxCount: 64, maxValueBytes: 1024 * 1024, maxTotalBytes: 4 * 1024 * 1024 };

// A plain file name: no "/", no leading dot (so no "." or ".."), no control or shell-hostile characters.
const SECRET_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

export function validateSecrets(secrets: SecretInput[]): void {
  if (secrets.length > SECRET_LIMITS.maxCount) {
    throw invalidArgument(`too many secrets: ${secrets.length}, at most ${SECRET_LIMITS.maxCount}`);
  }
  const seen = new Set<string>();
  let total = 0;
  for (const { name, value } of secrets) {
    if (!SECRET_NAME.test(name)) {
      throw invalidArgument(
        `secret name ${JSON.stringify(name.slice(0, 64))} is not allowed (letters, digits, _ . -; no leading dot, at most 128)`,
      );
    }
    if (seen.has(name)) throw invalidArgument(`secret ${name} is given twice`);
    seen.add(name);
    if (value.byteLength > SECRET_LIMITS.maxValueBytes) {
      throw invalidArgument(`secret ${name} is larger than ${SECRET_LIMITS.maxValueBytes} bytes`);
    }
    total += value.byteLength;
  }
  if (total > SECRET_LIMITS.maxTotalBytes) {
    throw invalidArgument(`secrets total ${total} bytes, more than ${SECRET_LIMITS.maxTotalBytes}`);
  }
}
