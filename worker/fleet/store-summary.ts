// What a host's Nix store holds, as a worker publishes it in the fleet registry: a Bloom filter of
// store path hashes (the 32-character base32 part of /nix/store/<hash>-<name>).
//
// Why a Bloom filter and not the list of hashes: a VM's closure is hundreds to thousands of paths and
// every heartbeat of every host carries the summary through the KV bucket to every gateway. The filter
// is the same few KiB however much the host holds (8 KiB: ~0.07% false positives at 4096 paths), and
// its only error is the harmless one: it never says "absent" of a path the host holds, and a false
// "present" costs one `nix copy` the placement hoped to spare. Locality is a preference, never a
// correctness question, so an approximate answer is the right trade.
import { createHash } from "node:crypto";
import { z } from "zod";
import { invalidArgument } from "../core/errors.js";

const STORE_HASH = /^\/nix\/store\/([0-9a-df-np-sv-z]{32})-/;
/** The filter's size in bytes: a power of two, so an index is a mask. */
export const SUMMARY_BYTES = { default: 8192, min: 64, max: 16384 } as const;
const DEFAULT_HASHES = 7;
const MAX_HASHES = 16;

export const storeSummarySchema = z.object({
  /** The filter's bits, base64. */
  bloom: z
    .string()
    .max(Math.ceil(SUMMARY_BYTES.max / 3) * 4)
    .regex(/^[A-Za-z0-9+/]*={0,2}$/, "must be base64")
    .refine((text) => isFilterSize(Buffer.from(text, "base64").length), "must decode to a power of two of 64..16384 bytes"),
  /** Bit indexes per path. */
  hashes: z.number().int().min(1).max(MAX_HASHES),
  /** Paths added: with the size, how saturated (and so how trustworthy) the filter is. */
  count: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
});
export type StoreSummary = z.infer<typeof storeSummarySchema>;

function isFilterSize(bytes: number): boolean {
  return bytes >= SUMMARY_BYTES.min && bytes <= SUMMARY_BYTES.max && (bytes & (bytes - 1)) === 0;
}

/** The hash part of a store path ("/nix/store/<hash>-linux/bzImage" -> "<hash>"); INVALID_ARGUMENT otherwise. */
export function storePathHash(path: string): string {
  const match = STORE_HASH.exec(path);
  if (!match) throw invalidArgument(`${JSON.stringify(path.slice(0, 200))} is not a path inside /nix/store`);
  return match[1]!;
}

/**
 * The bit indexes of a store hash (double hashing over SHA-256, Kirsch-Mitzenmacher): hashed again
 * rather than read from the store hash, so that neither a hostile spec nor a hostile host can aim paths
 * at chosen bits without also breaking SHA-256.
 */
function bitIndexes(storeHash: string, hashes: number, bits: number): number[] {
  const digest = createHash("sha256").update(storeHash).digest();
  const h1 = digest.readUInt32BE(0);
  const h2 = digest.readUInt32BE(4) | 1; // odd: with a power-of-two size, the k indexes never collapse to one
  return Array.from({ length: hashes }, (_, i) => (h1 + Math.imul(i, h2)) & (bits - 1));
}

/** A summary of these store paths (any path inside the store: only its hash counts, duplicates once). */
export function summarizeStore(paths: Iterable<string>, options: { bytes?: number; hashes?: number } = {}): StoreSummary {
  const bytes = options.bytes ?? SUMMARY_BYTES.default;
  const hashes = options.hashes ?? DEFAULT_HASHES;
  if (!isFilterSize(bytes)) throw invalidArgument(`a store summary of ${bytes} bytes is not a power of two of 64..16384`);
  if (!Number.isInteger(hashes) || hashes < 1 || hashes > MAX_HASHES) throw invalidArgument(`hashes ${hashes} out of 1..${MAX_HASHES}`);
  return withPaths({ bloom: Buffer.alloc(bytes).toString("base64"), hashes, count: 0 }, paths);
}

/** A copy of the summary with these store paths added too (a VM about to be placed on the host). */
export function withPaths(summary: StoreSummary, paths: Iterable<string>): StoreSummary {
  const filter = Buffer.from(summary.bloom, "base64");
  const bits = filter.length * 8;
  let count = summary.count;
  for (const storeHash of new Set(Array.from(paths, storePathHash))) {
    for (const index of bitIndexes(storeHash, summary.hashes, bits)) filter[index >> 3]! |= 1 << (index & 7);
    count++;
  }
  return { bloom: filter.toString("base64"), hashes: summary.hashes, count };
}

/** Each summary's decoded test: a gateway asks on every placement, a summary changes with each heartbeat. */
const decoded = new WeakMap<StoreSummary, (storeHash: string) => boolean>();

/**
 * A membership test of one summary, decoded once: `has(storeHash)` is true for every hash added
 * and, rarely, for one that was not (a false positive, see above); never false for one added.
 */
export function storeMembership(summary: StoreSummary): (storeHash: string) => boolean {
  const known = decoded.get(summary);
  if (known) return known;
  const filter = Buffer.from(summary.bloom, "base64");
  const bits = filter.length * 8;
  const has = (storeHash: string) =>
    bitIndexes(storeHash, summary.hashes, bits).every((index) => (filter[index >> 3]! & (1 << (index & 7))) !== 0);
  decoded.set(summary, has);
  return has;
}
