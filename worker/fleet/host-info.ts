// A host as the fleet registry knows it: what a worker publishes in the JetStream KV bucket with every
// heartbeat, and what a gateway places VMs by. JSON on the wire; everything read from the bucket is
// hostile until parseHostInfo has bounded it (sizes, counts, charsets, integer ranges).
import { z } from "zod";
import { invalidArgument } from "../core/errors.js";
import { storeSummarySchema } from "./store-summary.js";

/** Largest encoded HostInfo read (the summary is at most ~22 KB of it); beyond, not even parsed. */
export const MAX_HOST_INFO_BYTES = 64 * 1024;
export const MAX_LABELS = 32;
export const MAX_GROUPS = 4096;

/** A host id: a token of NATS subjects (no dots) and a KV key; every reader of one checks it with this. */
export const HOST_ID = /^[A-Za-z0-9_-]{1,64}$/;
// Kubernetes-like: a key is a name, optionally prefixed ("zone", "example.com/gpu"); a value is short and plain.
export const LABEL_KEY = /^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$/;
export const LABEL_VALUE = /^[A-Za-z0-9._:/-]{0,128}$/;
// As core/spec.ts normalizes it: one lower-case host-name label.
const GROUP = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

// Bytes as JSON numbers: exact up to 2^53 (8 PiB), far beyond a host; anything else is refused.
const count = (max: number) => z.number().int().nonnegative().max(max);
const resources = z.object({
  vms: count(1_000_000),
  cpu: count(1_000_000),
  memoryBytes: count(Number.MAX_SAFE_INTEGER),
  diskBytes: count(Number.MAX_SAFE_INTEGER),
});
export type Resources = z.infer<typeof resources>;

export const labelsSchema = z
  .record(z.string().regex(LABEL_KEY, "label key must be a name (A-Z a-z 0-9 . _ / -), 1-63 characters"), z.string().regex(LABEL_VALUE))
  .refine((labels) => Object.keys(labels).length <= MAX_LABELS, `at most ${MAX_LABELS} labels`);

// Not strict: a newer worker may publish fields an older gateway does not know; they are dropped.
export const hostInfoSchema = z.object({
  hostId: z.string().regex(HOST_ID, "host id must be 1-64 of A-Z a-z 0-9 _ -"),
  /** The VMM backend ("qemu", "cloud-hypervisor"): a name, not a closed list, so new ones need no gateway release. */
  backend: z.string().regex(/^[a-z0-9][a-z0-9-]{0,31}$/),
  labels: labelsSchema,
  /** What the host offers in all. `used` may exceed it (limits lowered under running VMs): then it has no room. */
  capacity: resources,
  /** What its VMs (all not yet deleted) take. */
  used: resources,
  /** Groups with members on this host: a group's next member goes here. */
  groups: z.array(z.string().regex(GROUP)).max(MAX_GROUPS),
  /** The store paths it holds (its VMs' kernels, initrds, images and their closures). */
  store: storeSummarySchema,
  /** The worker's version. */
  version: z.string().regex(/^[A-Za-z0-9._+-]{1,64}$/),
  /** When the worker started, and when it sent this heartbeat (unix epoch milliseconds). */
  startedAtMs: count(Number.MAX_SAFE_INTEGER),
  seenAtMs: count(Number.MAX_SAFE_INTEGER),
});
export type HostInfo = z.infer<typeof hostInfoSchema>;

/** A HostInfo from the bucket's bytes; INVALID_ARGUMENT naming what is wrong with anything else. */
export function parseHostInfo(bytes: Uint8Array): HostInfo {
  if (bytes.length > MAX_HOST_INFO_BYTES) throw invalidArgument(`host info of ${bytes.length} bytes exceeds ${MAX_HOST_INFO_BYTES}`);
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw invalidArgument(`host info is not UTF-8 JSON: ${(err as Error).message}`);
  }
  return validHostInfo(raw);
}

/** The bytes a worker publishes; validated as a gateway will, so a worker never publishes what is refused. */
export function encodeHostInfo(info: HostInfo): Uint8Array {
  const bytes = new TextEncoder().encode(JSON.stringify(validHostInfo(info)));
  if (bytes.length > MAX_HOST_INFO_BYTES) throw invalidArgument(`host info of ${bytes.length} bytes exceeds ${MAX_HOST_INFO_BYTES}`);
  return bytes;
}

function validHostInfo(raw: unknown): HostInfo {
  const parsed = hostInfoSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.slice(0, 5).map((issue) => `${issue.path.map(String).join(".") || "host info"}: ${issue.message}`);
    throw invalidArgument(`bad host info: ${problems.join("; ")}`);
  }
  return parsed.data;
}
