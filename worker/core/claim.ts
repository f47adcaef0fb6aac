// Pooled VMs (pools.ts): launched for nobody, then claimed by a create. A pooled VM boots (or is
// restored from its pool's snapshot) with a parked TAP, no address, no hostname and no secrets;
// its claim applies all of them through the guest agent, so a pooled guest never saw a tenant.
import { randomBytes } from "node:crypto";
import type { Logger } from "pino";
import { asWorkerError, failedPrecondition } from "./errors.js";
import {
  cageFor,
  closeBootFiles,
  creatingRecord,
  launchSpec,
  prepareBoot,
  register,
  type CreateDeps,
  type CreateRequest,
} from "./create.js";
import { writeInPieces } from "./files.js";
import { Plan } from "./plan.js";
import { specHash, type ValidSpec } from "./spec.js";
import type { ManagedVm } from "./vm.js";
import type { AgentConnection, VmmHandle, VmRecord } from "../ports/index.js";

/** A VM running (or paused) for nobody: its record is `creating`, so a restart removes it. */
export interface UnclaimedVm {
  id: string;
  record: VmRecord;
  handle: VmmHandle;
  agent: AgentConnection;
}

/** Where a claimed guest finds its secrets: the same path as a booted guest's share. */
export const GUEST_SECRETS_DIR = "/run/secrets";
/** The claim step whose failure means the pool's snapshot did not load. */
export const RESTORE_STEP = "restore snapshot";
/** How long a claim waits for the guest agent's answer to its personalisation. */
const PERSONALIZE_MS = 10_000;

/**
 * Launches a VM of the pool's machine `spec` for nobody: booted, or resumed from `restoreFrom`.
 * Resolves once the VMM runs; the agent's hello is the caller's to wait for. Undone on failure.
 */
export async function launchUnclaimed(
  deps: CreateDeps,
  id: string,
  pool: { name: string; spec: ValidSpec },
  log: Logger,
  restoreFrom?: string,
): Promise<UnclaimedVm> {
  const { backend, network, records, vmContext } = deps;
  const { agents } = vmContext;
  if (!backend.capabilities.agent || !agents)
    throw failedPrecondition(`pools need a guest agent channel, which ${backend.name} lacks here`);
  const { spec } = pool;
  const plan = new Plan((step, err) => log.error({ step, err: asWorkerError(err).message }, "undo failed"));
  const { bootFiles, vmDir } = await prepareBoot(plan, deps, id, spec, log);
  const record = creatingRecord(backend, id, spec, Date.now(), {
    pool: pool.name,
    agentSocket: `${vmDir}/agent.sock`,
    agentTransport: backend.capabilities.agent,
  });
  await plan.step("save state", () => records.save(record));
  const parked = network
    ? await plan.step(
        "park network",
        () => network.park(id),
        () => network.unpark(id),
      )
    : undefined;
  const cage = await cageFor(plan, deps, id, spec, vmDir, log);
  record.cage = cage && { uid: cage.uid };
  const handle = await plan.step(
    restoreFrom ? "restore vmm" : "start vmm",
    () =>
      backend.launch({
        ...launchSpec(deps, id, vmDir, spec, bootFiles),
        // No pcr.ip and no pcr.hostname: the claim gives both, through the agent.
        cmdline: [spec.cmdline, ...backend.extraCmdline()].filter(Boolean).join(" "),
        net: parked,
        agentSocket: record.agentSocket,
        restoreFrom,
        cage,
      }),
    async (started) => void (await started.kill()),
  );
  await closeBootFiles(bootFiles);
  if (cage) await plan.step("seal vm directory", () => deps.vmContext.cage!.seal(id));
  record.vmm = handle.record;
  await plan.step("save state", () => records.save(record));
  await plan.step("wait for vmm running", () => handle.waitRunning(deps.bootTimeoutMs));
  const agent = agents.connect(id, record.agentSocket!, backend.capabilities.agent);
  return { id, record, handle, agent };
}

/** Ends a VM nobody claimed: its VMM, channel, TAP, record and directory. */
export async function discardUnclaimed(deps: CreateDeps, vm: UnclaimedVm): Promise<void> {
  vm.agent.close();
  await vm.handle.kill();
  await deps.vmContext.cage?.release(vm.id);
  await deps.network?.unpark(vm.id);
  await deps.records.remove(vm.id);
}

/** Where a claim's VM comes from: a pooled VM ready now, or its pool's snapshot to restore. */
export type ClaimSource =
  /** A hot VM: always paused while pooled. */
  | { kind: "pool"; pool: string; vm: UnclaimedVm }
  | {
      kind: "snapshot";
      pool: { name: string; spec: ValidSpec };
      path: string;
      /** Throws when the file is no longer the one saved (replaced, rewritten, removed). */
      check(): Promise<void>;
    };

/**
 * Makes VM `id` from `source` for `request`: the create's record, then network, identity and
 * secrets, each undone on failure (the VM with them: a half-claimed VM is never kept or reused).
 */
export async function runClaim(
  deps: CreateDeps,
  id: string,
  { spec, secrets, ttlSeconds, idempotency }: CreateRequest,
  source: ClaimSource,
  createEnded: Promise<unknown>,
  log: Logger,
  readyTimeoutMs: number,
  signal?: AbortSignal,
): Promise<ManagedVm> {
  const { network } = deps;
  const plan = new Plan((step, err) => log.error({ step, err: asWorkerError(err).message }, "undo failed"), signal);
  const started = Date.now();
  const unclaimed =
    source.kind === "pool"
      ? await plan.step(
          "take pooled vm",
          async () => source.vm,
          (vm) => discardUnclaimed(deps, vm),
        )
      : await plan.step(
          RESTORE_STEP,
          async () => {
            await source.check();
            return launchUnclaimed(deps, id, source.pool, log, source.path);
          },
          (vm) => discardUnclaimed(deps, vm),
        );
  const { record, handle, agent } = unclaimed;
  Object.assign(record, {
    spec,
    specHash: specHash(spec),
    createdAtMs: started,
    expiresAtMs: ttlSeconds > 0 ? started + ttlSeconds * 1000 : undefined,
    secretNames: secrets.map((secret) => secret.name),
    pool: source.kind === "pool" ? source.pool : source.pool.name,
    origin: source.kind,
    idempotency,
  } satisfies Partial<VmRecord>);
  const vm = await register(plan, deps, record, createEnded);
  if (source.kind === "pool") await plan.step("resume", () => handle.resume());
  if (network) {
    record.net = await plan.step(
      "attach network",
      () =>
        network.attach(id, spec.allowedDomains, spec.group ? { group: spec.group, hostname: spec.hostname } : undefined, {
          parked: true,
        }),
      () => network.detach(id),
    );
  }
  await plan.step("wait for agent", () => agent.whenReady(readyTimeoutMs));
  const net = record.net;
  await plan.step("personalize", () =>
    agent.personalize(
      {
        hostname: spec.hostname,
        seed: randomBytes(64),
        machineId: randomBytes(16).toString("hex"),
        nowMs: Date.now(),
        ...(net ? { address: `${net.ip}/${net.prefixLength}`, gateway: net.gateway, dns: net.dns, mac: net.mac } : {}),
      },
      PERSONALIZE_MS,
    ),
  );
  if (secrets.length > 0) {
    await plan.step("deliver secrets", async () => {
      for (const secret of secrets) {
        await writeInPieces(agent, {
          path: `${GUEST_SECRETS_DIR}/${secret.name}`,
          offset: 0,
          data: secret.value,
          mode: 0o400,
          truncate: true,
        });
      }
    });
  }
  await plan.step("save state", async () => {
    record.runningSinceMs = Date.now();
    await vm.transition("running", "", { save: "once" });
  });
  vm.own(handle, agent);
  log.info({ ms: Date.now() - started, stepMs: plan.stepMs, pool: record.pool, origin: source.kind }, "vm claimed");
  return vm;
}
