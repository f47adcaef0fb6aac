// What each CLI command does, once its arguments are parsed. Loaded only for a command that
// runs (not for --help or a usage error), with the RPC client; create-vm loads the spec
// parsing (cli/spec-input.ts) on its own.
import { readFileSync } from "node:fs";
import type { ConsoleChunk, SecretInput, VmView } from "../worker/core/api.js";
import { WorkerError } from "../worker/core/errors.js";
import type { ClientTls } from "../worker/rpc/client.js";
import { connectWorker, type WorkerClient } from "../worker/rpc/worker-client.js";
import { UsageError, type Values } from "./args.js";
import { faultFromFlags, formatFaultTable } from "./fault-input.js";
import { formatVmTable, vmToJson } from "./format.js";
import { PrintableStream } from "./terminal.js";

/** Mutual TLS for tcp:// workers, from --tls-cert/--tls-key/--tls-ca (read before any command runs). */
let clientTls: ClientTls | undefined;

export function loadClientTls(args: Values): void {
  const paths = [args["tls-cert"], args["tls-key"], args["tls-ca"]] as Array<string | undefined>;
  if (paths.every((path) => !path)) return;
  if (!paths.every(Boolean)) throw new UsageError("mutual TLS needs all of --tls-cert, --tls-key and --tls-ca");
  try {
    clientTls = { cert: readFileSync(paths[0]!), key: readFileSync(paths[1]!), ca: readFileSync(paths[2]!) };
  } catch (err) {
    throw new UsageError(`cannot read a TLS file: ${(err as Error).message}`);
  }
}

async function withClient<T>(address: string, run: (client: WorkerClient) => Promise<T>): Promise<T> {
  const client = await connectWorker(address, { tls: clientTls });
  try {
    return await run(client);
  } finally {
    client.close();
  }
}

/** Local validation errors carry a code too, but they are usage errors: nothing reached the worker. */
function local<T>(build: () => T): T {
  try {
    return build();
  } catch (err) {
    throw new UsageError(err instanceof WorkerError ? err.reason : (err as Error).message);
  }
}

const EXEC_STDIN_MAX = 128 * 1024;

async function readStdin(max: number): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > max) throw new UsageError(`stdin holds more than ${max} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Console bytes to stdout: as they are with --raw, else with control characters made visible. */
function consoleWriter(raw: boolean): { write(bytes: Uint8Array): void; end(): void } {
  if (raw) return { write: (bytes) => process.stdout.write(bytes), end: () => undefined };
  const stream = new PrintableStream();
  return { write: (bytes) => process.stdout.write(stream.write(bytes)), end: () => process.stdout.write(stream.end()) };
}

async function followLogs(client: WorkerClient, id: string, follow: boolean, from: bigint, raw: boolean): Promise<void> {
  const out = consoleWriter(raw);
  try {
    await copyConsole(client, id, follow, from, out);
  } finally {
    out.end();
  }
}

async function copyConsole(
  client: WorkerClient,
  id: string,
  follow: boolean,
  from: bigint,
  out: { write(bytes: Uint8Array): void },
): Promise<void> {
  let offset = from;
  for (;;) {
    let chunk: ConsoleChunk;
    try {
      chunk = await client.read(id, offset, 256 * 1024);
    } catch (err) {
      // The VM was deleted while we followed it: that is the natural end of the stream.
      if (follow && err instanceof WorkerError && err.code === "NOT_FOUND" && offset > from) return;
      throw err;
    }
    if (chunk.data.length > 0) {
      out.write(chunk.data);
      offset = chunk.nextOffset;
      continue;
    }
    if (!follow) return;
    const vm = await client.getVm(id).catch(() => undefined);
    // Only a final status ends the stream: a `lost` VM (a fleet gateway's word) may return with its host.
    if (!vm || vm.status === "stopped" || vm.status === "failed") {
      const last = await client.read(id, offset, 256 * 1024).catch(() => undefined);
      if (last?.data.length) out.write(last.data);
      return;
    }
    await sleep(150);
  }
}

/** Resolves to the exit code when it is not 0, as a number (exec passes the command's on). */
type Handler = (args: Values, positional: Record<string, string>, rest: string[]) => Promise<unknown>;
const str = (value: unknown) => value as string | undefined;
const num = (value: unknown) => value as number | undefined;
const list = (value: unknown) => value as string[] | undefined;

export const handlers: Record<string, Handler> = {
  "create-vm": async (args) => {
    const { placementFromFlags, secretFromFlag, secretsFromDir, specFromFlags } = await import("./spec-input.js");
    const spec = local(() =>
      specFromFlags({
        specJson: str(args["spec-json"]),
        specFile: str(args["spec-file"]),
        kernel: str(args.kernel),
        initrd: str(args.initrd),
        disk: str(args.disk),
        cmdline: str(args.cmdline),
        cpu: num(args.cpu),
        memory: str(args.memory),
        hostname: str(args.hostname),
        allow: list(args.allow),
        group: str(args.group),
      }),
    );
    const secrets: SecretInput[] = local(() => [
      ...(args["secrets-dir"] ? secretsFromDir(str(args["secrets-dir"])!) : []),
      ...(list(args.secret) ?? []).map((flag) => secretFromFlag(flag)),
    ]);
    const waitReadyMs = args["wait-ready"] ? (num(args["wait-ready-ms"]) ?? 120_000) : 0;
    const placement = local(() => placementFromFlags(str(args["on-host"]), list(args.label)));
    const idempotencyKey = str(args["idempotency-key"]);
    const id = await withClient(str(args.worker)!, (client) =>
      client.createVm(spec, { secrets, ttlSeconds: num(args.ttl) ?? 0, waitReadyMs, idempotencyKey, placement }),
    );
    console.log(id);
  },
  "delete-vm": async (args, { id }) => {
    await withClient(str(args.worker)!, (client) => client.deleteVm(id!));
  },
  "list-vms": async (args) => {
    const vms: VmView[] = await withClient(str(args.worker)!, (client) => client.listVms());
    console.log(args.json ? JSON.stringify(vms.map(vmToJson), null, 2) : formatVmTable(vms));
  },
  "get-vm": async (args, { id }) => {
    const vm = await withClient(str(args.worker)!, (client) => client.getVm(id!));
    console.log(JSON.stringify(vmToJson(vm), null, 2));
  },
  logs: async (args, { id }) => {
    await withClient(str(args.worker)!, (client) =>
      followLogs(client, id!, Boolean(args.follow), BigInt(num(args.offset)!), Boolean(args.raw)),
    );
  },
  events: async (args) => {
    await withClient(str(args.worker)!, async (client) => {
      let since = BigInt(num(args.since)!);
      do {
        const { events, nextSeq } = await client.events(since, 500, args.follow ? 10_000 : 0);
        for (const event of events) {
          console.log(JSON.stringify({ ...event, seq: Number(event.seq), atMs: Number(event.atMs) }));
        }
        since = nextSeq;
      } while (args.follow);
    });
  },
  "inject-fault": async (args, { id }) => {
    const fault = local(() =>
      faultFromFlags({
        kind: str(args.kind)!,
        durationMs: num(args["duration-ms"]),
        cidrs: list(args.cidr),
        direction: str(args.direction),
        percent: num(args.percent),
        ms: num(args.ms),
        jitterMs: num(args["jitter-ms"]),
        kbit: num(args.kbit),
        op: str(args.op),
        errno: num(args.errno),
        afterOps: num(args["after-ops"]),
        pid: num(args.pid),
        name: str(args.name),
        signal: str(args.signal),
        deltaMs: num(args["delta-ms"]),
        periodMs: num(args["period-ms"]),
        dir: str(args.dir),
      }),
    );
    console.log(await withClient(str(args.worker)!, (client) => client.injectFault(id!, fault)));
  },
  "clear-fault": async (args, { id, fault }) => {
    await withClient(str(args.worker)!, (client) => client.clearFault(id!, fault!));
  },
  exec: async (args, { id }, argv) => {
    const env = list(args.env) ?? [];
    const cwd = str(args.cwd) ?? "";
    if (args.tty) {
      const { attachTerminal } = await import("./attach.js");
      return withClient(str(args.worker)!, (client) => attachTerminal(client, id!, { argv, env, cwd }));
    }
    const stdin = args.interactive ? await readStdin(EXEC_STDIN_MAX) : undefined;
    const result = await withClient(str(args.worker)!, (client) =>
      client.exec(id!, { argv, env, cwd, stdin, timeoutMs: num(args["timeout-ms"]) ?? 0 }),
    );
    process.stdout.write(result.stdout);
    process.stderr.write(result.stderr);
    if (result.stdoutTruncated || result.stderrTruncated) console.error("pcr-worker-test: output cut at 64 KiB per stream");
    if (result.timedOut) console.error("pcr-worker-test: killed after --timeout-ms");
    return result.signal ? 128 + result.signal : result.exitCode;
  },
  cp: async (args, { src, dst }) => {
    const { download, parseCopy, upload } = await import("./copy.js");
    const copy = parseCopy(src!, dst!);
    await withClient(str(args.worker)!, (client) =>
      copy.upload ? upload(client, copy.local, copy.guest) : download(client, copy.guest, copy.local),
    );
  },
  "list-faults": async (args, { id }) => {
    const faults = await withClient(str(args.worker)!, (client) => client.listFaults(id!));
    console.log(
      args.json
        ? JSON.stringify(
            faults.map((f) => ({ ...f, injectedAtMs: Number(f.injectedAtMs), expiresAtMs: Number(f.expiresAtMs) })),
            null,
            2,
          )
        : formatFaultTable(faults),
    );
  },
};
