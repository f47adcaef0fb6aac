// The create plan: every check before the first side effect, then the steps that make a VM — each
// with its undo, so that a failure anywhere leaves nothing behind (plan.ts).
import { randomBytes } from "node:crypto";
import type { Logger } from "pino";
import type { CreateVmOptions, SecretInput, VmSpecInput } from "./api.js";
import { asWorkerError, failedPrecondition, invalidArgument } from "./errors.js";
import { idempotencyRecord, type NewIdempotencyRecord, requestPrint, validateIdempotencyKey } from "./idempotency.js";
import { Plan } from "./plan.js";
import type { VmRegistry } from "./registry.js";
import { validateSecrets } from "./secrets.js";
import { specHash, storePathRoot, validateSpec, type SpecLimits, type ValidSpec } from "./spec.js";
import { ManagedVm, type VmContext } from "./vm.js";
import type {
  BootFile,
  CageSpec,
  NetworkPort,
  RecordRepo,
  SecretsPort,
  StorePort,
  VmLaunchSpec,
  VmmBackend,
  VmRecord,
} from "../ports/index.js";

export interface CreateLimits extends SpecLimits {
  maxTtlSeconds: number;
}

/** What the plan works with. */
export interface CreateDeps {
  backend: VmmBackend;
  network?: NetworkPort;
  store: StorePort;
  secrets: SecretsPort;
  records: RecordRepo;
  /** Where the VMM writes the console. */
  consolePath(id: string): string;
  registry: VmRegistry;
  vmContext: VmContext;
  bootTimeoutMs: number;
  storeFetched?(result: { bytes: number; seconds: number; paths: number }): void;
}

/** A create that passed every check. */
export interface CreateRequest {
  spec: ValidSpec;
  secrets: SecretInput[];
  ttlSeconds: number;
  waitReadyMs: number;
  /** The create's idempotency key and what it was used for; absent: none. */
  idempotency?: NewIdempotencyRecord;
}

/** A new VM id: 64 random bits, unique across a fleet in practice (docs/fleet.md). */
export function newVmId(): string {
  return `vm-${randomBytes(8).toString("hex")}`;
}

/** The longest a create may wait for the guest agent's hello. */
export const MAX_WAIT_READY_MS = 10 * 60_000;

/** Refuses, before anything is done, a create that cannot succeed here. */
export function checkCreate(
  input: VmSpecInput,
  options: CreateVmOptions,
  backend: VmmBackend,
  network: NetworkPort | undefined,
  limits: CreateLimits,
  hasAgents = true,
): CreateRequest {
  const spec = validateSpec(input, limits);
  if (spec.dataDiskBytes && !backend.capabilities.dataDisk) {
    throw failedPrecondition(`dataDiskBytes: the ${backend.name} backend cannot serve a data disk on this worker`);
  }
  if (spec.allowedDomains.length > 0 && !network) {
    throw invalidArgument("allowedDomains given, but networking is disabled on this worker");
  }
  if (spec.group && !network) throw failedPrecondition("group given, but networking is disabled on this worker");
  network?.validateAllowedDomains(spec.allowedDomains);
  const secrets = options.secrets ?? [];
  validateSecrets(secrets);
  const ttlSeconds = options.ttlSeconds ?? 0;
  if (ttlSeconds > limits.maxTtlSeconds) {
    throw invalidArgument(`ttlSeconds ${ttlSeconds} is above the maximum ${limits.maxTtlSeconds}`);
  }
  const waitReadyMs = options.waitReadyMs ?? 0;
  if (!Number.isInteger(waitReadyMs) || waitReadyMs < 0 || waitReadyMs > MAX_WAIT_READY_MS) {
    throw invalidArgument(`waitReadyMs ${waitReadyMs} is outside 0..${MAX_WAIT_READY_MS}`);
  }
  if (waitReadyMs > 0 && (!backend.capabilities.agent || !hasAgents)) {
    throw failedPrecondition(`waitReadyMs: the ${backend.name} backend on this worker has no guest agent channel to wait for`);
  }
  const key = validateIdempotencyKey(options.idempotencyKey);
  // options.placement is a fleet gateway's to honour: one worker has no other host to choose. It
  // still counts in the request's print, as at a gateway: one key, one request, wherever it lands.
  const idempotency = key ? idempotencyRecord(key, requestPrint(spec, { ttlSeconds, placement: options.placement }), secrets) : undefined;
  return { spec, secrets, ttlSeconds, waitReadyMs, ...(idempotency ? { idempotency } : {}) };
}

/**
 * Makes VM `id` and returns it running. Operations on the VM that arrive meanwhile (a delete, a
 * fault) wait for `createEnded`, which the caller resolves once this has ended either way.
 */
export async function runCreate(
  deps: CreateDeps,
  id: string,
  { spec, secrets, ttlSeconds, idempotency }: CreateRequest,
  createEnded: Promise<unknown>,
  log: Logger,
  signal?: AbortSignal,
): Promise<ManagedVm> {
  const { backend, network, records } = deps;
  const plan = new Plan((step, err) => log.error({ step, err: asWorkerError(err).message }, "undo failed"), signal);
  const started = Date.now();

  const { bootFiles, vmDir } = await prepareBoot(plan, deps, id, spec, log);
  const record = creatingRecord(backend, id, spec, started, {
    expiresAtMs: ttlSeconds > 0 ? started + ttlSeconds * 1000 : undefined,
    secretNames: secrets.map((secret) => secret.name),
    idempotency,
  });
  const vm = await register(plan, deps, record, createEnded);

  const secretsDir = secrets.length
    ? await plan.step(
        "write secrets",
        () => deps.secrets.write(id, secrets),
        () => deps.secrets.wipe(id),
      )
    : undefined;
  if (network) {
    record.net = await plan.step(
      "attach network",
      () => network.attach(id, spec.allowedDomains, spec.group ? { group: spec.group, hostname: spec.hostname } : undefined),
      () => network.detach(id),
    );
  }
  const cmdline = [
    spec.cmdline,
    `pcr.hostname=${spec.hostname}`,
    ...(record.net && network ? network.guestCmdline(record.net) : []),
    ...(secretsDir ? [`pcr.share=${backend.shareKind}`] : []),
    ...backend.extraCmdline(),
  ]
    .filter(Boolean)
    .join(" ");
  if (backend.capabilities.agent && deps.vmContext.agents) {
    record.agentSocket = `${vmDir}/agent.sock`;
    record.agentTransport = backend.capabilities.agent;
  }
  const cage = await cageFor(plan, deps, id, spec, vmDir, log, secretsDir);
  record.cage = cage && { uid: cage.uid };
  const handle = await plan.step(
    "start vmm",
    () =>
      backend.launch({
        ...launchSpec(deps, id, vmDir, spec, bootFiles),
        cmdline,
        net: record.net ? { tap: record.net.tap, mac: record.net.mac } : undefined,
        share: secretsDir ? { tag: "secrets", hostDir: secretsDir } : undefined,
        dataDisk: spec.dataDiskBytes ? { path: `${vmDir}/data.img`, bytes: spec.dataDiskBytes } : undefined,
        agentSocket: record.agentSocket,
        cage,
      }),
    async (started) => {
      await started.kill();
    },
  );
  await closeBootFiles(bootFiles); // the VMM holds its own copies
  if (cage) await plan.step("seal vm directory", () => deps.vmContext.cage!.seal(id));
  record.vmm = handle.record;
  await plan.step("save state", () => records.save(record));
  await plan.step("wait for vmm running", () => handle.waitRunning(deps.bootTimeoutMs));

  await plan.step("save state", async () => {
    record.runningSinceMs = Date.now();
    await vm.transition("running", "", { save: "once" });
  });
  vm.own(handle);
  log.info(
    { ms: Date.now() - started, stepMs: plan.stepMs, backend: backend.name, cpu: spec.cpu, memoryBytes: spec.memoryBytes },
    "vm running",
  );
  return vm;
}

/**
 * The first steps of every VM's making (a create's, a pooled VM's): its store paths fetched, its
 * boot files opened (handed to the VMM as descriptors: what was checked is what it boots), its
 * directory made.
 */
export async function prepareBoot(
  plan: Plan,
  deps: CreateDeps,
  id: string,
  spec: ValidSpec,
  log: Logger,
): Promise<{ bootFiles: BootFiles; vmDir: string }> {
  const { store, records } = deps;
  const fetched = await plan.step("fetch store paths", () =>
    store.ensurePaths(unique([spec.kernel, spec.initrd, spec.image].filter(Boolean).map(storePathRoot))),
  );
  if (fetched.fetched.length > 0) {
    log.info({ paths: fetched.fetched, bytes: fetched.bytes, seconds: fetched.seconds }, "fetched store paths");
    deps.storeFetched?.({ bytes: fetched.bytes, seconds: fetched.seconds, paths: fetched.fetched.length });
  }
  const bootFiles = await plan.step(
    "check boot files",
    () => openBootFiles(store, spec),
    (files) => closeBootFiles(files),
  );
  const vmDir = await plan.step(
    "create vm directory",
    () => records.createDir(id),
    () => records.remove(id),
  );
  return { bootFiles, vmDir };
}

/**
 * The VMM's cage: a uid of its own, its cgroup, its directories handed over (undone with the plan).
 * Without a cage port (--no-cage) every create says so in the log.
 */
export async function cageFor(
  plan: Plan,
  deps: CreateDeps,
  id: string,
  spec: ValidSpec,
  vmDir: string,
  log: Logger,
  shared?: string,
): Promise<CageSpec | undefined> {
  const { cage } = deps.vmContext;
  if (!cage) {
    log.warn({ vmId: id }, "vmm runs uncaged (--no-cage): as root, seeing the host's files, without seccomp or limits");
    return undefined;
  }
  const storePaths = unique([spec.kernel, spec.initrd, spec.image].filter(Boolean).map(storePathRoot));
  return plan.step(
    "cage vmm",
    () => cage.prepare(id, { memoryBytes: spec.memoryBytes, vmDir, shared, storePaths }),
    () => cage.release(id),
  );
}

/** A new VM's record, `creating`. */
export function creatingRecord(backend: VmmBackend, id: string, spec: ValidSpec, createdAtMs: number, more: Partial<VmRecord>): VmRecord {
  return {
    id,
    spec,
    specHash: specHash(spec),
    backend: backend.name,
    status: "creating",
    failure: "",
    createdAtMs,
    secretNames: [],
    ...more,
  };
}

/** What every launch of `spec` shares; the caller adds its cmdline and devices. */
export function launchSpec(
  deps: CreateDeps,
  id: string,
  vmDir: string,
  spec: ValidSpec,
  bootFiles: BootFiles,
): Omit<VmLaunchSpec, "cmdline"> {
  return {
    id,
    vmDir,
    kernel: spec.kernel,
    initrd: spec.initrd || undefined,
    image: spec.image || undefined,
    cpu: spec.cpu,
    memoryBytes: spec.memoryBytes,
    consolePath: deps.consolePath(id),
    bootFds: { kernel: bootFiles.kernel.fd, initrd: bootFiles.initrd?.fd, image: bootFiles.image?.fd },
  };
}

/** Saves the record and makes the VM known: its `creating` event. Undone: forgotten, `failed`. */
export async function register(plan: Plan, deps: CreateDeps, record: VmRecord, createEnded: Promise<unknown>): Promise<ManagedVm> {
  const vm = ManagedVm.creating(record, deps.vmContext, createEnded);
  await plan.step("save state", () => deps.records.save(record));
  await plan.step(
    "register",
    async () => {
      deps.registry.add(vm);
      await vm.transition("creating", "", { save: "none" }); // saved by the step before
    },
    async () => {
      deps.registry.remove(record.id);
      // Its record and directory go with the undos of the steps before.
      await vm.transition("failed", "create rolled back", { save: "none" });
    },
  );
  return vm;
}

interface BootFiles {
  kernel: BootFile;
  initrd?: BootFile;
  image?: BootFile;
}

export async function openBootFiles(store: StorePort, spec: ValidSpec): Promise<BootFiles> {
  const files: BootFiles = { kernel: await store.openBootFile("kernel", spec.kernel) };
  try {
    if (spec.initrd) files.initrd = await store.openBootFile("initrd", spec.initrd);
    if (spec.image) files.image = await store.openBootFile("image", spec.image);
  } catch (err) {
    await closeBootFiles(files);
    throw err;
  }
  return files;
}

export async function closeBootFiles(files: BootFiles): Promise<void> {
  await Promise.all([files.kernel.close(), files.initrd?.close(), files.image?.close()]);
}

function unique<T>(values: T[]): T[] {
  return [...new Set(values)];
}
