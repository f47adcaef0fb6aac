// Idempotent creates (docs/fleet.md, "exactly-once effect"): a create may carry a key, and a second
// create with the key of a VM this worker has (or is making) answers that VM instead of making
// another. What a key was used for is remembered as the spec's hash and a salted hash of the
// secrets, so a different request under the same key is told apart without keeping any secret.
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { SecretInput } from "./api.js";
import { invalidArgument } from "./errors.js";

export const MAX_IDEMPOTENCY_KEY_BYTES = 128;

/** What a VM's record keeps of its create's key (ports/records.ts). */
export interface IdempotencyRecord {
  key: string;
  /** Random per create: equal secrets of two VMs do not show as equal hashes on disk. */
  secretsSalt: string;
  /** HMAC-SHA256 under the salt of the secrets, by name: never the values themselves. */
  secretsHash: string;
}

/** The key, or undefined for none (""); INVALID_ARGUMENT unless 1-128 bytes of printable ASCII. */
export function validateIdempotencyKey(key: string | undefined): string | undefined {
  if (key === undefined || key === "") return undefined;
  if (key.length > MAX_IDEMPOTENCY_KEY_BYTES || !/^[\x20-\x7e]+$/.test(key)) {
    throw invalidArgument(`idempotencyKey must be 1-${MAX_IDEMPOTENCY_KEY_BYTES} bytes of printable ASCII`);
  }
  return key;
}

/** The record of a new create under `key`. */
export function idempotencyRecord(key: string, secrets: readonly SecretInput[]): IdempotencyRecord {
  const secretsSalt = randomBytes(16).toString("hex");
  return { key, secretsSalt, secretsHash: secretsHash(secretsSalt, secrets) };
}

/**
 * Throws INVALID_ARGUMENT unless a create of `specHash` with `secrets` is the one `earlier` was
 * made for (same spec, same secrets in any order).
 */
export function checkSameRequest(
  earlier: { specHash: string; idempotency: IdempotencyRecord },
  specHash: string,
  secrets: readonly SecretInput[],
): void {
  const { key, secretsSalt, secretsHash: expected } = earlier.idempotency;
  const actual = secretsHash(secretsSalt, secrets);
  const sameSecrets = actual.length === expected.length && timingSafeEqual(Buffer.from(actual), Buffer.from(expected));
  if (earlier.specHash !== specHash || !sameSecrets) {
    throw invalidArgument(`idempotency key ${JSON.stringify(key)} was used for a different request (another spec or other secrets)`);
  }
}

function secretsHash(salt: string, secrets: readonly SecretInput[]): string {
  const mac = createHmac("sha256", Buffer.from(salt, "hex"));
  // Length-prefixed, so that no two different lists of secrets feed the same bytes.
  for (const { name, value } of [...secrets].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(Buffer.byteLength(name), 0);
    head.writeUInt32BE(value.byteLength, 4);
    mac.update(head).update(name).update(value);
  }
  return mac.digest("hex");
}
