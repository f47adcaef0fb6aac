// Typed client of Cloud Hypervisor's REST API (vmm/src/api/openapi/cloud-hypervisor.yaml) over its
// unix socket. Only the calls the backend makes; each is listed in CH_API_CALLS so the contract
// test can check it against the OpenAPI file. Responses are validated with zod at this edge.
import { Agent, type Dispatcher, request } from "undici";
import { z } from "zod";

/** Every endpoint the worker calls: method, path, and whether it carries a JSON body. */
export const CH_API_CALLS = {
  ping: { method: "GET", path: "/vmm.ping", body: false },
  shutdownVmm: { method: "PUT", path: "/vmm.shutdown", body: false },
  createVm: { method: "PUT", path: "/vm.create", body: true },
  bootVm: { method: "PUT", path: "/vm.boot", body: false },
  info: { method: "GET", path: "/vm.info", body: false },
  counters: { method: "GET", path: "/vm.counters", body: false },
  pause: { method: "PUT", path: "/vm.pause", body: false },
  resume: { method: "PUT", path: "/vm.resume", body: false },
  powerButton: { method: "PUT", path: "/vm.power-button", body: false },
  reboot: { method: "PUT", path: "/vm.reboot", body: false },
  shutdownVm: { method: "PUT", path: "/vm.shutdown", body: false },
  deleteVm: { method: "PUT", path: "/vm.delete", body: false },
  snapshot: { method: "PUT", path: "/vm.snapshot", body: true },
  restore: { method: "PUT", path: "/vm.restore", body: true },
} as const;
export type ChApiCall = keyof typeof CH_API_CALLS;

export const API_PREFIX = "/api/v1";

// Response schemas: only what we read is required; CH may add fields (not strict on purpose).
export const vmmPingResponseSchema = z.object({
  version: z.string(),
  build_version: z.string().optional(),
  pid: z.number().int().optional(),
  features: z.array(z.string()).optional(),
});
export type VmmPingResponse = z.infer<typeof vmmPingResponseSchema>;

export const CH_VM_STATES = ["Created", "Running", "Shutdown", "Paused", "BreakPoint"] as const;
export type ChVmState = (typeof CH_VM_STATES)[number];

export const vmInfoResponseSchema = z.object({
  // The echo of our own VmConfig: we do not rely on its content beyond it being an object.
  config: z.record(z.string(), z.unknown()),
  state: z.enum(CH_VM_STATES),
  memory_actual_size: z.number().int().optional(),
  device_tree: z.record(z.string(), z.unknown()).optional(),
});
export type VmInfoResponse = z.infer<typeof vmInfoResponseSchema>;

/** Per device id, counter name to value, e.g. {"disk0": {"read_bytes": 512n, ...}}. */
export type VmCountersResponse = Record<string, Record<string, bigint>>;

/** Integers as parseCounters marks them; anything else (a string, a fraction) is not a counter. */
const countersTextSchema = z.record(z.string(), z.record(z.string(), z.string().regex(/^#\d+$/, "a non-negative integer")));

/**
 * vm.counters with its integers exact. Every counter is a u64 (a map of Wrapping<u64> in Cloud
 * Hypervisor), and a disk's latency minima start at u64::MAX (virtio-devices/src/block.rs): a
 * double cannot hold them, so each integer is read from the text as a bigint.
 */
export function parseCounters(text: string): VmCountersResponse {
  // Mark every integer in value position before JSON.parse sees it.
  const quoted = text.replace(/(:\s*)(\d+)(\s*[,}])/g, '$1"#$2"$3');
  let json: unknown;
  try {
    json = JSON.parse(quoted);
  } catch {
    throw new ChApiError("counters", 200, `response is not JSON: ${text.slice(0, 200)}`);
  }
  const parsed = countersTextSchema.safeParse(json);
  if (!parsed.success) throw new ChApiError("counters", 200, `unexpected response: ${parsed.error.message}`);
  const out: VmCountersResponse = {};
  for (const [device, values] of Object.entries(parsed.data)) {
    out[device] = {};
    for (const [name, value] of Object.entries(values)) out[device][name] = BigInt(value.slice(1));
  }
  return out;
}

/**
 * A non-2xx answer. Cloud Hypervisor's body is a JSON array of the error chain's messages, top to
 * root (vmm/src/api/http/mod.rs, error_response): `chain` joins them all, so nothing of the
 * cause is lost; a body of another shape is kept as text.
 */
export class ChApiError extends Error {
  readonly chain: string;

  constructor(
    readonly call: string,
    readonly status: number,
    readonly body: string,
  ) {
    const chain = errorChain(body);
    super(`cloud-hypervisor ${call} failed with HTTP ${status}${chain ? `: ${chain}` : ""}`);
    this.name = "ChApiError";
    this.chain = chain;
  }
}

function errorChain(body: string): string {
  try {
    const messages = JSON.parse(body) as unknown;
    if (Array.isArray(messages) && messages.every((message) => typeof message === "string")) return messages.join(": ");
  } catch {
    // not JSON: as it is
  }
  return body;
}

/** No answer: socket missing, refused, or timed out. */
export class ChConnectionError extends Error {
  constructor(
    readonly call: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`cloud-hypervisor ${call}: ${message}`, options);
    this.name = "ChConnectionError";
  }
}

export class ChApiClient {
  private readonly agent: Agent;

  constructor(
    readonly socketPath: string,
    private readonly defaultTimeoutMs = 10_000,
  ) {
    this.agent = new Agent({ connect: { socketPath }, pipelining: 0 });
  }

  ping(timeoutMs?: number): Promise<VmmPingResponse> {
    return this.call("ping", undefined, timeoutMs).then((body) => parseResponse("ping", vmmPingResponseSchema, body));
  }
  /** PUT /vm.create with the full VmConfig (see buildVmConfig). */
  async createVm(config: object, timeoutMs?: number): Promise<void> {
    await this.call("createVm", config, timeoutMs);
  }
  async bootVm(timeoutMs?: number): Promise<void> {
    await this.call("bootVm", undefined, timeoutMs);
  }
  info(timeoutMs?: number): Promise<VmInfoResponse> {
    return this.call("info", undefined, timeoutMs).then((body) => parseResponse("info", vmInfoResponseSchema, body));
  }
  counters(timeoutMs?: number): Promise<VmCountersResponse> {
    return this.call("counters", undefined, timeoutMs).then(parseCounters);
  }
  async pause(): Promise<void> {
    await this.call("pause");
  }
  async resume(): Promise<void> {
    await this.call("resume");
  }
  async powerButton(): Promise<void> {
    await this.call("powerButton");
  }
  /** Answers once the new VM booted (vm_reboot runs inside the request). */
  async reboot(timeoutMs?: number): Promise<void> {
    await this.call("reboot", undefined, timeoutMs);
  }
  async shutdownVm(timeoutMs?: number): Promise<void> {
    await this.call("shutdownVm", undefined, timeoutMs);
  }
  async deleteVm(timeoutMs?: number): Promise<void> {
    await this.call("deleteVm", undefined, timeoutMs);
  }
  /** PUT /vm.snapshot (VmSnapshotConfig): the paused VM's config.json, state.json and memory into an existing directory. */
  async snapshot(body: { destination_url: string }, timeoutMs?: number): Promise<void> {
    await this.call("snapshot", body, timeoutMs);
  }
  /** PUT /vm.restore (RestoreConfig): a VMM with no VM takes the one saved in source_url's directory. */
  async restore(body: { source_url: string; prefault?: boolean; resume?: boolean }, timeoutMs?: number): Promise<void> {
    await this.call("restore", body, timeoutMs);
  }
  async shutdownVmm(timeoutMs?: number): Promise<void> {
    await this.call("shutdownVmm", undefined, timeoutMs);
  }

  async close(): Promise<void> {
    await this.agent.destroy().catch(() => undefined); // closing idle sockets to a VMM that may be gone
  }

  /** One request; returns the response text ("" for 204). */
  private async call(name: ChApiCall, body?: object, timeoutMs = this.defaultTimeoutMs): Promise<string> {
    const { method, path } = CH_API_CALLS[name];
    let response: Dispatcher.ResponseData;
    try {
      response = await request(`http://localhost${API_PREFIX}${path}`, {
        method,
        dispatcher: this.agent,
        headers: body ? { "content-type": "application/json" } : {},
        body: body ? JSON.stringify(body) : undefined,
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      const reason = (err as Error).name === "TimeoutError" ? `no answer within ${timeoutMs} ms` : (err as Error).message;
      throw new ChConnectionError(path, reason, { cause: err });
    }
    const text = await response.body.text();
    if (response.statusCode < 200 || response.statusCode >= 300) {
      throw new ChApiError(path, response.statusCode, text.trim().slice(0, 2000));
    }
    return text;
  }
}

/** Parses a JSON response body with its schema; a mismatch is a protocol error worth reporting. */
export function parseResponse<T>(call: string, schema: z.ZodType<T>, text: string): T {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ChApiError(call, 200, `response is not JSON: ${text.slice(0, 200)}`);
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw new ChApiError(call, 200, `unexpected response: ${parsed.error.message}`);
  return parsed.data;
}
