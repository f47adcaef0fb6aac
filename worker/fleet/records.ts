// What a fleet member publishes besides its HostInfo: where each VM is (KV pcr_vms, key = VM id)
// and its lifecycle events (stream PCR_EVENTS). Gateways read both, so both are hostile bytes to
// them until parsed here: bounded sizes, charsets and ranges, INVALID_ARGUMENT otherwise.
import { z } from "zod";
import type { VmEvent, VmStatus, VmView } from "../core/api.js";
import { VM_STATUSES } from "../core/api.js";
import { invalidArgument } from "../core/errors.js";
import { MAX_IDEMPOTENCY_KEY_BYTES } from "../core/idempotency.js";
import { HOST_ID } from "./host-info.js";

export const MAX_VM_LOCATION_BYTES = 4096;
export const MAX_FLEET_EVENT_BYTES = 8192;

/** A VM id doubles as its KV key. */
const VM_ID = /^[A-Za-z0-9_-]{1,128}$/;
/** A bigint as JSON holds it exactly: decimal digits. */
const decimal = z.string().regex(/^\d{1,20}$/, "must be a decimal integer");

// Not strict: a newer worker may add fields; an older gateway drops them.
export const vmLocationSchema = z.object({
  hostId: z.string().regex(HOST_ID),
  /** What a gateway answers for a VM whose host is lost (with status `lost`), and routes by. */
  view: z.object({
    id: z.string().regex(VM_ID),
    hostname: z.string().max(253),
    cpu: z.number().int().nonnegative().max(1_000_000),
    memoryBytes: decimal,
    group: z.string().max(63),
    ip: z.string().max(64),
    mac: z.string().max(32),
    backend: z.string().regex(/^[a-z0-9][a-z0-9-]{0,31}$/),
    createdAtMs: decimal,
    specHash: z.string().max(128),
    /** Its create's idempotency key, as core/idempotency.ts allows one; absent from older workers' entries. */
    idempotencyKey: z
      .string()
      .max(MAX_IDEMPOTENCY_KEY_BYTES)
      .regex(/^[\x20-\x7e]*$/, "must be printable ASCII")
      .optional(),
  }),
});
export type VmLocation = z.infer<typeof vmLocationSchema>;

export const fleetEventSchema = z.object({
  hostId: z.string().regex(HOST_ID),
  vmId: z.string().regex(VM_ID),
  status: z.enum(VM_STATUSES as [VmStatus, ...VmStatus[]]),
  atMs: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  reason: z.string().max(4096),
  /** The event's sequence on its host, since the worker process started. */
  hostSeq: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
});
export type FleetEvent = z.infer<typeof fleetEventSchema>;

export function vmLocationOf(hostId: string, view: VmView): VmLocation {
  return {
    hostId,
    view: {
      id: view.id,
      hostname: view.hostname,
      cpu: view.cpu,
      memoryBytes: view.memoryBytes.toString(),
      group: view.group ?? "",
      ip: view.ip,
      mac: view.mac,
      backend: view.backend,
      createdAtMs: view.createdAtMs.toString(),
      specHash: view.specHash,
      ...(view.idempotencyKey ? { idempotencyKey: view.idempotencyKey } : {}),
    },
  };
}

export function fleetEventOf(hostId: string, event: VmEvent): FleetEvent {
  // Reasons are text for people; cut rather than refuse a long one.
  const reason = event.reason.length > 4096 ? event.reason.slice(0, 4096) : event.reason;
  return { hostId, vmId: event.vmId, status: event.status, atMs: Number(event.atMs), reason, hostSeq: Number(event.seq) };
}

export const encodeVmLocation = (location: VmLocation) => encode(vmLocationSchema, location, "vm location", MAX_VM_LOCATION_BYTES);
export const parseVmLocation = (bytes: Uint8Array) => parse(vmLocationSchema, bytes, "vm location", MAX_VM_LOCATION_BYTES);
export const encodeFleetEvent = (event: FleetEvent) => encode(fleetEventSchema, event, "fleet event", MAX_FLEET_EVENT_BYTES);
export const parseFleetEvent = (bytes: Uint8Array) => parse(fleetEventSchema, bytes, "fleet event", MAX_FLEET_EVENT_BYTES);

function encode<T>(schema: z.ZodType<T>, value: T, what: string, max: number): Uint8Array {
  const bytes = new TextEncoder().encode(JSON.stringify(valid(schema, value, what)));
  if (bytes.length > max) throw invalidArgument(`${what} of ${bytes.length} bytes exceeds ${max}`);
  return bytes;
}

function parse<T>(schema: z.ZodType<T>, bytes: Uint8Array, what: string, max: number): T {
  if (bytes.length > max) throw invalidArgument(`${what} of ${bytes.length} bytes exceeds ${max}`);
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw invalidArgument(`${what} is not UTF-8 JSON: ${(err as Error).message}`);
  }
  return valid(schema, raw, what);
}

function valid<T>(schema: z.ZodType<T>, raw: unknown, what: string): T {
  const parsed = schema.safeParse(raw);
  if (parsed.success) return parsed.data;
  const problems = parsed.error.issues.slice(0, 5).map((issue) => `${issue.path.map(String).join(".") || what}: ${issue.message}`);
  throw invalidArgument(`bad ${what}: ${problems.join("; ")}`);
}
