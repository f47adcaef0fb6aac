// The fleet behind one WorkerApi (docs/fleet.md): creates placed on a host and made exactly once
// through intents in KV pcr_intents and the hosts' per-key dedup; every per-VM call routed to the
// VM's host; listVms gathered from every host; events read from the stream PCR_EVENTS. Stateless:
// what it keeps (FleetDirectory, reservations) is rebuilt from NATS or expires on its own.
import { createHash, randomUUID } from "node:crypto";
import type { NatsConnection } from "@nats-io/transport-node";
import type { KV, KvEntry } from "@nats-io/kv";
import type { Logger } from "pino";
import { z } from "zod";
import type { CallerInfo, CreateVmOptions, FaultInput, FileWriteInput, OutputStream, VmSpecInput, VmView, WorkerApi } from "../core/api.js";
import { zeroCounters } from "../core/api.js";
import { asWorkerError, internal, invalidArgument, notFound, unavailable } from "../core/errors.js";
import { checkSameRequest, idempotencyRecord, requestPrint } from "../core/idempotency.js";
import { canonicalSpec } from "../core/spec.js";
import { WorkerClient } from "../rpc/worker-client.js";
import type { FleetDirectory } from "./directory.js";
import type { FleetEvents } from "./events.js";
import { type VmLocation, encodeVmLocation, vmLocationOf } from "./records.js";
import { hostCallSubject, natsWorkerCaller } from "./nats-rpc.js";
import { type PlacementRequest, placeVm, reserve } from "./placement.js";

export interface GatewayOptions {
  nc: NatsConnection;
  directory: FleetDirectory;
  buckets: { vms: KV; intents: KV };
  events: FleetEvents;
  logger: Logger;
  /** Per-VM calls (exec, waits, creates that wait for the agent) may take this long. */
  callTimeoutMs?: number;
  /** A host that does not answer a listVms within this is reported from pcr_vms instead. */
  listTimeoutMs?: number;
}

/** How NATS answers for some seconds while a node is gone or a stream's leader is being elected. */
const TRANSIENT = /jetstream is not enabled|no responders|timeout|timed out|\b503\b|disconnect|connection (closed|draining)|leader/i;

/** Runs a KV operation, again and again through a NATS failover, for up to `budgetMs`; then UNAVAILABLE. */
async function patiently<T>(what: string, op: () => Promise<T>, budgetMs = 15_000): Promise<T> {
  const deadline = Date.now() + budgetMs;
  for (let waitMs = 50; ; waitMs = Math.min(waitMs * 2, 1_000)) {
    try {
      return await op();
    } catch (err) {
      const message = (err as Error).message;
      if (!TRANSIENT.test(message) || Date.now() + waitMs > deadline) throw unavailable(`${what}: ${message}`);
      await new Promise((resolve) => setTimeout(resolve, waitMs));
    }
  }
}

/** Codes after which the host certainly made no VM: the intent is dropped and the key may be used again. */
const DEFINITE_REFUSALS = new Set(["INVALID_ARGUMENT", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "NOT_FOUND", "ALREADY_EXISTS"]);

/**
 * What an intent keeps of its request, so that a key reused for another request is refused, not
 * answered: as a worker keeps it (core/idempotency.ts), the secrets only as a salted HMAC.
 */
const printSchema = z.object({
  /** requestPrint(...).requestHash (core/idempotency.ts): everything but the secrets and waitReadyMs. */
  requestHash: z.string().regex(/^[0-9a-f]{64}$/),
  secretsSalt: z.string().regex(/^[0-9a-f]{32}$/),
  secretsHash: z.string().regex(/^[0-9a-f]{64}$/),
});
type RequestPrint = z.infer<typeof printSchema>;
const intentSchema = printSchema.extend({
  state: z.enum(["placed", "created"]),
  hostId: z.string().max(64),
  vmId: z.string().max(64).optional(),
  atMs: z.number().int(),
});
type Intent = z.infer<typeof intentSchema>;
const encodeIntent = (intent: Intent) => new TextEncoder().encode(JSON.stringify(intent));

/** An intent read back from NATS; INTERNAL when it is not one (intents are only gateways' to write). */
function parseIntent(value: Uint8Array, key: string): Intent {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(value));
  } catch {
    parsed = undefined;
  }
  const intent = intentSchema.safeParse(parsed);
  if (!intent.success) throw internal(`the intent of idempotency key ${JSON.stringify(key)} in NATS is unreadable`);
  return intent.data;
}

/** An intent this gateway holds: its KV key and revision (for compare-and-set), and its request's print. */
interface IntentRef {
  key: string;
  revision: number;
  print: RequestPrint;
}

/** A placement made but not yet in the host's heartbeat: counted as used, so hosts are not overfilled. */
interface Reservation {
  request: PlacementRequest;
  /** Gateway time the create was answered; undefined while it runs. */
  doneAtMs?: number;
}

export class FleetGateway implements WorkerApi {
  private readonly clients = new Map<string, { call: WorkerClient; list: WorkerClient }>();
  private readonly reservations = new Map<string, Set<Reservation>>();
  /** VMs this gateway made whose intent and location are still being written. */
  private readonly recording = new Map<string, Promise<unknown>>();
  private readonly callTimeoutMs: number;
  private readonly listTimeoutMs: number;

  constructor(private readonly options: GatewayOptions) {
    this.callTimeoutMs = options.callTimeoutMs ?? 300_000;
    this.listTimeoutMs = options.listTimeoutMs ?? 5_000;
    // A heartbeat stored after a create was answered counts that VM itself.
    options.directory.onHeartbeat((hostId) => {
      const heardAtMs = options.directory.host(hostId)?.heardAtMs ?? 0;
      for (const reservation of this.reservations.get(hostId) ?? []) {
        if (reservation.doneAtMs !== undefined && heardAtMs > reservation.doneAtMs) this.reservations.get(hostId)!.delete(reservation);
      }
    });
  }

  private client(hostId: string, kind: "call" | "list" = "call"): WorkerClient {
    let pair = this.clients.get(hostId);
    if (!pair) {
      const subject = hostCallSubject(hostId);
      const caller = (timeoutMs: number) => new WorkerClient(natsWorkerCaller(this.options.nc, subject, { timeoutMs, host: hostId }));
      pair = { call: caller(this.callTimeoutMs), list: caller(this.listTimeoutMs) };
      this.clients.set(hostId, pair);
    }
    return pair[kind];
  }

  /** The live host a VM is on; NOT_FOUND for a VM the fleet does not know, UNAVAILABLE when its host is lost. */
  private async hostOf(id: string): Promise<WorkerClient> {
    const location = await this.locate(id);
    if (this.options.directory.isLost(location.hostId)) {
      throw unavailable(`${id}'s host ${location.hostId} is lost (no heartbeat within ${this.options.directory.lostAfterMs} ms)`);
    }
    return this.client(location.hostId);
  }

  private async locate(id: string): Promise<VmLocation> {
    // Ids are also KV keys: anything else cannot name a VM, and must not reach NATS as a key.
    if (!/^vm-[0-9a-f]{1,32}$/.test(id)) throw notFound(`no VM ${JSON.stringify(id.slice(0, 80))} in the fleet`);
    const location =
      (await this.options.directory.locate(id).catch((err: Error) => {
        throw unavailable(`cannot reach the fleet's VM directory: ${err.message}`);
      })) ?? (await this.ask(id));
    if (!location) throw notFound(`no VM ${id} in the fleet`);
    return location;
  }

  /** A VM pcr_vms does not have yet (made a moment ago through another gateway): asked of every live host. */
  private async ask(id: string): Promise<VmLocation | undefined> {
    const { directory } = this.options;
    const live = directory.hosts().filter(({ info }) => !directory.isLost(info.hostId));
    const answers = await Promise.all(
      live.map(({ info }) =>
        this.client(info.hostId, "list")
          .getVm(id)
          .then((view) => vmLocationOf(info.hostId, view))
          .catch(() => undefined),
      ),
    );
    const location = answers.find((answer) => answer !== undefined);
    if (location) directory.remember(location);
    return location;
  }

  // --- creating ------------------------------------------------------------------------------

  async createVm(spec: VmSpecInput, options: CreateVmOptions, _caller?: CallerInfo): Promise<string> {
    const request = placementRequest(spec, options);
    if (!options.idempotencyKey) {
      // Only the client can retry through another gateway, and only with a key it knows: without
      // one no intent is kept. The host still gets a key, so this gateway's own retry elsewhere
      // (a host that answered nobody, or was full) never makes two VMs.
      const withKey = { ...options, idempotencyKey: `gateway-${randomUUID()}` };
      return this.placeAndSend(spec, withKey, request, async () => undefined);
    }
    const key = options.idempotencyKey;
    const intentKey = createHash("sha256").update(key).digest("hex");
    // The worker's own definition of "the same request" (core/idempotency.ts), so that a key means
    // one request at a gateway and at a host alike.
    const requestedPrint = requestPrint(canonicalSpec(spec), options);
    const secrets = options.secrets ?? [];
    const { intents } = this.options.buckets;
    const excluded = new Set<string>();
    for (let attempt = 0; attempt < 8; attempt++) {
      // Write-ahead: the intent names the host before the host is asked, so that a retry from
      // any gateway follows it there. A new key has none: create it, and read only when it exists.
      let entry: KvEntry | null = null;
      try {
        return await this.placeAndSend(
          spec,
          options,
          request,
          async (hostId) => {
            const { requestHash, secretsSalt, secretsHash } = idempotencyRecord(key, requestedPrint, secrets);
            const print = { requestHash, secretsSalt, secretsHash };
            const placed = encodeIntent({ ...print, state: "placed", hostId, atMs: Date.now() });
            const revision = await patiently("cannot record the create's intent", () => intents.create(intentKey, placed));
            return { key: intentKey, revision, print };
          },
          excluded,
        );
      } catch (err) {
        const refusedPlacement = placementRefusals.has(err as object);
        // Another gateway has it, or our own create landed before a failover lost its answer; or no
        // host has room now, yet a repeat of a request already placed must follow its intent.
        if (!refusedPlacement && !/wrong last sequence|key exists/i.test((err as Error).message)) throw err;
        entry = await patiently("cannot read the create's intent", () => intents.get(intentKey));
        if (refusedPlacement && entry?.operation !== "PUT") throw err;
      }
      if (entry?.operation !== "PUT") continue; // gone meanwhile: place again
      const intent = parseIntent(entry.value, key);
      checkSameRequest({ idempotency: { key, ...intent } }, requestedPrint, secrets);
      if (intent.state === "created" && intent.vmId) return intent.vmId;
      // Placed by an earlier try or another gateway: ask that host again, which answers the one VM.
      const ref = { key: intentKey, revision: entry.revision, print: printSchema.parse(intent) };
      const answer = await this.send(intent.hostId, spec, options, request, ref);
      if (answer !== "elsewhere") return answer;
      excluded.add(intent.hostId);
    }
    throw unavailable(`could not place the VM after 8 attempts (idempotency key ${JSON.stringify(key)})`);
  }

  /** Places, records the intent (if any), sends; again elsewhere while a host turns out full or gone. */
  private async placeAndSend(
    spec: VmSpecInput,
    options: CreateVmOptions,
    request: PlacementRequest,
    recordIntent: (hostId: string) => Promise<IntentRef | undefined>,
    excluded = new Set<string>(),
  ): Promise<string> {
    for (let attempt = 0; attempt < 8; attempt++) {
      const hosts = this.options.directory.placementHosts().filter((host) => !excluded.has(host.hostId));
      const withReservations = hosts.map((host) =>
        reserve(
          host,
          Array.from(this.reservations.get(host.hostId) ?? [], (held) => held.request),
        ),
      );
      let hostId: string;
      try {
        ({ hostId } = placeVm(request, withReservations, Date.now(), { lostAfterMs: this.options.directory.lostAfterMs }));
      } catch (err) {
        placementRefusals.add(err as object);
        throw err;
      }
      const intent = await recordIntent(hostId);
      const answer = await this.send(hostId, spec, options, request, intent);
      if (answer !== "elsewhere") return answer;
      excluded.add(hostId);
    }
    throw unavailable(`could not place the VM after 8 attempts (idempotency key ${JSON.stringify(options.idempotencyKey)})`);
  }

  /** Sends the create to its host; "elsewhere" when that host refused for room and the intent is gone. */
  private async send(
    hostId: string,
    spec: VmSpecInput,
    options: CreateVmOptions,
    request: PlacementRequest,
    intent: IntentRef | undefined,
  ): Promise<string | "elsewhere"> {
    const key = options.idempotencyKey!;
    const { intents, vms } = this.options.buckets;
    const dropIntent = async () => {
      if (!intent) return;
      await patiently("cannot drop the intent", () => intents.delete(intent.key, { previousSeq: intent.revision })).catch(() => undefined);
    };
    if (this.options.directory.isLost(hostId)) {
      throw unavailable(
        `this create went to host ${hostId}, which is lost: it may have made the VM; retry with idempotency key ${JSON.stringify(key)}`,
      );
    }
    const reservation: Reservation = { request };
    const held = this.reservations.get(hostId) ?? new Set();
    this.reservations.set(hostId, held.add(reservation));
    let id: string;
    try {
      id = await this.client(hostId).createVm(spec, options);
      reservation.doneAtMs = Date.now();
    } catch (err) {
      held.delete(reservation);
      const error = asWorkerError(err);
      // No responder: NATS delivered the request to nobody, so nothing was made (a host just killed).
      const undelivered = error.code === "UNAVAILABLE" && /no responder/.test(error.message);
      if (undelivered) {
        await dropIntent();
        if (!request.constraints?.hostId) return "elsewhere";
        throw error;
      }
      if (!DEFINITE_REFUSALS.has(error.code)) {
        throw unavailable(
          `host ${hostId} did not answer the create (${error.message}); it may have made the VM: ` +
            `retry with idempotency key ${JSON.stringify(key)}`,
        );
      }
      await dropIntent();
      // Full after all (its heartbeat was behind): place again elsewhere.
      if (error.code === "RESOURCE_EXHAUSTED" && !request.constraints?.hostId) return "elsewhere";
      throw error;
    }
    const backend = this.options.directory.host(hostId)?.info.backend ?? "unknown";
    const location: VmLocation = { hostId, view: shortView(id, spec, backend, key) };
    // Answered before these land: this gateway routes by its own cache at once, others find the VM
    // on its host should they ask before pcr_vms has it. Should they fail, the intent stays `placed`
    // and a retry asks the host, which answers this VM again.
    this.options.directory.remember(location);
    // Begun once the answer is on its way (setImmediate runs after the reply's write): the records
    // are not the caller's to wait for.
    const recorded = new Promise((resolve) => setImmediate(resolve))
      .then(() => {
        const created = intent && encodeIntent({ ...intent.print, state: "created", hostId, vmId: id, atMs: Date.now() });
        return Promise.all([
          created && patiently("intent", () => intents.update(intent!.key, created, intent!.revision)),
          patiently("location", () => vms.put(id, encodeVmLocation(location))),
        ]);
      })
      .catch((err: Error) => this.options.logger.warn({ vmId: id, hostId, err: err.message }, "cannot record a created VM in NATS"))
      .finally(() => this.recording.delete(id));
    this.recording.set(id, recorded);
    return id;
  }

  // --- the whole fleet -----------------------------------------------------------------------

  async listVms(_caller?: CallerInfo): Promise<VmView[]> {
    const { directory } = this.options;
    const lists = await Promise.all(
      directory.hosts().map(async ({ info }) => {
        if (directory.isLost(info.hostId)) return directory.vmsOn(info.hostId).map((l) => lostView(l, `host ${info.hostId} is lost`));
        try {
          return onHost(info.hostId, await this.client(info.hostId, "list").listVms());
        } catch (err) {
          const why = `host ${info.hostId} did not answer: ${asWorkerError(err).message}`;
          return directory.vmsOn(info.hostId).map((l) => lostView(l, why));
        }
      }),
    );
    return lists.flat();
  }

  async getVm(id: string, _caller?: CallerInfo): Promise<VmView> {
    const location = await this.locate(id);
    if (this.options.directory.isLost(location.hostId)) return lostView(location, `host ${location.hostId} is lost`);
    try {
      return onHost(location.hostId, [await this.client(location.hostId).getVm(id)])[0]!;
    } catch (err) {
      // Not yet declared lost, but not answering (killed, cut off): as listVms, report what is known.
      const error = asWorkerError(err);
      if (error.code !== "UNAVAILABLE" && error.code !== "DEADLINE_EXCEEDED") throw error;
      return lostView(location, `host ${location.hostId} did not answer: ${error.message}`);
    }
  }

  async deleteVm(id: string, _caller?: CallerInfo): Promise<void> {
    await (await this.hostOf(id)).deleteVm(id);
    await this.recording.get(id); // else its location could land after the delete below
    this.options.directory.forget(id);
    await this.options.buckets.vms.delete(id).catch(() => undefined); // the host removes it too
  }

  events(sinceSeq: bigint, maxEvents: number, waitMs: number, _caller?: CallerInfo) {
    return this.options.events.read(sinceSeq, maxEvents, waitMs);
  }

  // --- one VM, on its host ------------------------------------------------------------------

  async read(id: string, offset: bigint, maxBytes: number) {
    return (await this.hostOf(id)).read(id, offset, maxBytes);
  }
  async injectFault(id: string, fault: FaultInput) {
    return (await this.hostOf(id)).injectFault(id, fault);
  }
  async clearFault(id: string, faultId: string) {
    return (await this.hostOf(id)).clearFault(id, faultId);
  }
  async listFaults(id: string) {
    return (await this.hostOf(id)).listFaults(id);
  }
  async exec(id: string, request: Parameters<WorkerApi["exec"]>[1]) {
    return (await this.hostOf(id)).exec(id, request);
  }
  async writeFile(id: string, write: FileWriteInput) {
    return (await this.hostOf(id)).writeFile(id, write);
  }
  async readFile(id: string, path: string, offset: number, maxBytes: number) {
    return (await this.hostOf(id)).readFile(id, path, offset, maxBytes);
  }
  async statFile(id: string, path: string) {
    return (await this.hostOf(id)).statFile(id, path);
  }
  async listDir(id: string, path: string, offset: number) {
    return (await this.hostOf(id)).listDir(id, path, offset);
  }
  async startProcess(id: string, request: Parameters<WorkerApi["startProcess"]>[1]) {
    return (await this.hostOf(id)).startProcess(id, request);
  }
  async readProcess(id: string, pid: number, stream: OutputStream, offset: number, maxBytes: number, waitMs: number) {
    return (await this.hostOf(id)).readProcess(id, pid, stream, offset, maxBytes, waitMs);
  }
  async writeProcess(id: string, pid: number, data: Uint8Array, closeStdin: boolean) {
    return (await this.hostOf(id)).writeProcess(id, pid, data, closeStdin);
  }
  async signalProcess(id: string, pid: number, signal: number) {
    return (await this.hostOf(id)).signalProcess(id, pid, signal);
  }
  async waitProcess(id: string, pid: number, waitMs: number) {
    return (await this.hostOf(id)).waitProcess(id, pid, waitMs);
  }
  async resizeProcess(id: string, pid: number, rows: number, cols: number) {
    return (await this.hostOf(id)).resizeProcess(id, pid, rows, cols);
  }

  close(): void {
    for (const { call, list } of this.clients.values()) {
      call.close();
      list.close();
    }
  }
}

/** Errors of placeVm itself (no host fits), not of a host: a keyed create then reads its intent. */
const placementRefusals = new WeakSet<object>();

/** What placement needs of a create; sizes that do not fit a safe integer are the request's fault. */
function placementRequest(spec: VmSpecInput, options: CreateVmOptions): PlacementRequest {
  const number = (value: bigint | undefined, what: string) => {
    const n = Number(value ?? 0n);
    if (!Number.isSafeInteger(n) || n < 0) throw invalidArgument(`${what} ${value} is out of range`);
    return n;
  };
  return {
    cpu: spec.cpu,
    memoryBytes: number(spec.memoryBytes, "memoryBytes"),
    diskBytes: number(spec.dataDiskBytes, "dataDiskBytes"),
    storePaths: [spec.kernel, spec.initrd, spec.image].filter((path) => path.startsWith("/nix/store/")),
    group: spec.group || undefined,
    constraints: options.placement && { hostId: options.placement.host || undefined, labels: options.placement.labels },
  };
}

/** Until the host's own entry replaces it: enough to route by and to list the VM should its host be lost. */
function shortView(id: string, spec: VmSpecInput, backend: string, idempotencyKey: string): VmLocation["view"] {
  return {
    idempotencyKey,
    id,
    hostname: spec.hostname,
    cpu: spec.cpu,
    memoryBytes: String(spec.memoryBytes),
    group: spec.group ?? "",
    ip: "",
    mac: "",
    backend,
    createdAtMs: String(Date.now()),
    specHash: "",
  };
}

/** A host's answer, each VM marked with the host that answered: the one asked, whatever it says itself. */
function onHost(hostId: string, views: VmView[]): VmView[] {
  for (const view of views) view.host = hostId;
  return views;
}

/** A VM on a host the gateway cannot hear: what pcr_vms last said of it, `lost`. */
function lostView(location: VmLocation, why: string): VmView {
  const { view } = location;
  return {
    id: view.id,
    hostname: view.hostname,
    status: "lost",
    failure: why,
    ip: view.ip,
    mac: view.mac,
    cpu: view.cpu,
    memoryBytes: BigInt(view.memoryBytes),
    specHash: view.specHash,
    createdAtMs: BigInt(view.createdAtMs),
    uptimeMs: 0n,
    counters: zeroCounters(),
    egressDrops: 0n,
    backend: view.backend,
    group: view.group,
    host: location.hostId,
    idempotencyKey: view.idempotencyKey ?? "",
  };
}
