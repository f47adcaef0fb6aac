// Idempotent creates (docs/fleet.md, "exactly-once effect"): a create may carry a key, and a second
// create with the key of a VM this worker has (or is making) answers that VM instead of making
// another. What a key was used for is remembered as the request's fingerprint and a salted hash of
// the secrets, so a different request under the same key is told apart without keeping any secret.
// A worker and a fleet gateway (its intents in pcr_intents) use this one definition.
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { CreateVmOptions, SecretInput } from "./api.js";
import { invalidArgument } from "./errors.js";
import { type ValidSpec, specHash } from "./spec.js";

export const MAX_IDEMPOTENCY_KEY_BYTES = 128;

/** What a VM's record keeps of its create's key (ports/records.ts). */
export interface IdempotencyRecord {
  key: string;
  /**
   * requestPrint(...).requestHash of the create. Absent in records of workers that predate it: those were
   * compared by their spec alone, and still are.
   */
  requestHash?: string;
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

/** What a create is, for comparing it with an earlier one under its key (secrets apart). */
export interface RequestPrint {
  /** specHash of the canonical spec. */
  specHash: string;
  /** sha256 of everything requestPrint counts but the secrets: the spec hash, ttl and placement. */
  requestHash: string;
}

/**
 * Which parts of a create make a repeat under its key "the same request". Everything that changes
 * the VM counts: the spec (canonical, as a worker keeps it, so "Web" and "web" are one hostname);
 * ttlSeconds (when it is deleted); placement (which hosts may hold it: a VM made under other
 * constraints may not meet these). The secrets count too, but are compared apart, salted
 * (secretsHash). waitReadyMs does not: it changes only how long the call waits for the guest
 * agent's hello, not the VM made, and a client retrying a create that timed out, with a longer
 * wait, must get its VM, not a refusal.
 */
export function requestPrint(spec: ValidSpec, options: Pick<CreateVmOptions, "ttlSeconds" | "placement">): RequestPrint {
  const hash = specHash(spec);
  const host = options.placement?.host ?? "";
  const labels = Object.entries(options.placement?.labels ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  // Versioned, so that a later change of the definition never equals an earlier hash by accident.
  const parts = JSON.stringify(["pcr-create/1", hash, options.ttlSeconds ?? 0, host, labels]);
  return { specHash: hash, requestHash: createHash("sha256").update(parts).digest("hex") };
}

/** A record made by this version: it has its request's fingerprint. */
export type NewIdempotencyRecord = IdempotencyRecord & { requestHash: string };

/** The record of a new create under `key`. */
export function idempotencyRecord(key: string, print: RequestPrint, secrets: readonly SecretInput[]): NewIdempotencyRecord {
  const secretsSalt = randomBytes(16).toString("hex");
  return { key, requestHash: print.requestHash, secretsSalt, secretsHash: secretsHash(secretsSalt, secrets) };
}

/**
 * Throws INVALID_ARGUMENT unless a create of `print` with `secrets` is the one `earlier` was made
 * for (requestPrint's parts equal, the same secrets in any order).
 */
export function checkSameRequest(
  earlier: { specHash?: string; idempotency: IdempotencyRecord },
  print: RequestPrint,
  secrets: readonly SecretInput[],
): void {
  const { key, requestHash, secretsSalt, secretsHash: expected } = earlier.idempotency;
  const actual = secretsHash(secretsSalt, secrets);
  const sameSecrets = actual.length === expected.length && timingSafeEqual(Buffer.from(actual), Buffer.from(expected));
  const sameRequest = requestHash !== undefined ? requestHash === print.requestHash : earlier.specHash === print.specHash;
  if (!sameRequest || !sameSecrets) {
    throw invalidArgument(
      `idempotency key ${JSON.stringify(key)} was used for a different request (another spec, ttl, placement or other secrets)`,
    );
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
