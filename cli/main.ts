#!/usr/bin/env node
// pcr-worker-test: a thin client of the Worker RPC. Exit codes: 0 ok, 1 error from the worker, 2 usage error.
import { readFileSync } from "node:fs";
import yargs, { type Argv } from "yargs";
import { hideBin } from "yargs/helpers";
import type { SecretInput, VmView } from "../worker/core/api.js";
import { WorkerError } from "../worker/core/errors.js";
import type { ClientTls } from "../worker/rpc/client.js";
import { connectWorker, type WorkerClient } from "../worker/rpc/worker-client.js";
import { FAULT_KIND_NAMES, faultFromFlags, formatFaultTable } from "./fault-input.js";
import { formatVmTable, vmToJson } from "./format.js";
import { secretFromFlag, secretsFromDir, specFromFlags } from "./spec-input.js";
import { printable, PrintableStream } from "./terminal.js";

const DEFAULT_WORKER = "/run/procurator/worker.sock";

/** Errors found before anything was sent: exit code 2. */
class UsageError extends Error {}

/** Mutual TLS for tcp:// workers, from --tls-cert/--tls-key/--tls-ca (read before any command runs). */
let clientTls: ClientTls | undefined;

function loadClientTls(args: { "tls-cert"?: string; "tls-key"?: string; "tls-ca"?: string }): ClientTls | undefined {
  const paths = [args["tls-cert"], args["tls-key"], args["tls-ca"]];
  if (paths.every((path) => !path)) return undefined;
  if (!paths.every(Boolean)) throw new UsageError("mutual TLS needs all of --tls-cert, --tls-key and --tls-ca");
  try {
    return { cert: readFileSync(paths[0]!), key: readFileSync(paths[1]!), ca: readFileSync(paths[2]!) };
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

async function copyConsole(client: WorkerClient, id: string, follow: boolean, from: bigint, out: { write(bytes: Uint8Array): void }): Promise<void> {
  let offset = from;
  for (;;) {
    let chunk;
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
    if (!vm || vm.status === "stopped" || vm.status === "failed") {
      const last = await client.read(id, offset, 256 * 1024).catch(() => undefined);
      if (last?.data.length) out.write(last.data);
      return;
    }
    await sleep(150);
  }
}

export function buildCli(argv: string[]): Argv {
  return yargs(argv)
    .scriptName("pcr-worker-test")
    .usage("$0 <command> [options]")
    .option("worker", {
      type: "string",
      default: process.env.PCR_WORKER ?? DEFAULT_WORKER,
      describe: "Worker address: a unix socket path or tcp://host:port (env: PCR_WORKER)",
    })
    .option("tls-cert", { type: "string", default: process.env.PCR_TLS_CERT, describe: "Client certificate (PEM) for a tcp:// worker with mutual TLS (env: PCR_TLS_CERT)" })
    .option("tls-key", { type: "string", default: process.env.PCR_TLS_KEY, describe: "Its key (PEM) (env: PCR_TLS_KEY)" })
    .option("tls-ca", { type: "string", default: process.env.PCR_TLS_CA, describe: "CA (PEM) the worker's certificate must chain to (env: PCR_TLS_CA)" })
    .middleware((args) => {
      clientTls = loadClientTls(args);
    })
    .command(
      "create-vm",
      "Create and boot a VM; prints its id",
      (y) =>
        y
          .option("spec-json", { type: "string", describe: "Spec as printed by `nix eval --json .#vmSpec`" })
          .option("spec-file", { type: "string", describe: "File holding such a spec" })
          .option("kernel", { type: "string", describe: "/nix/store path of a vmlinux or bzImage" })
          .option("initrd", { type: "string" })
          .option("disk", { type: "string", describe: "/nix/store path of the root disk image (read-only)" })
          .option("cmdline", { type: "string" })
          .option("cpu", { type: "number" })
          .option("memory", { type: "string", describe: "e.g. 512M, 2G or bytes" })
          .option("hostname", { type: "string" })
          .option("allow", { type: "string", array: true, describe: "Allowed egress domain, IP or CIDR (repeatable)" })
          .option("secret", { type: "string", array: true, describe: "NAME=@FILE or NAME=env:VAR (repeatable)" })
          .option("secrets-dir", { type: "string", describe: "Every file in DIR becomes a secret" })
          .option("ttl", { type: "number", describe: "Destroy the VM after this many seconds" }),
      async (args) => {
        const spec = local(() => specFromFlags({ ...args, specJson: args["spec-json"], specFile: args["spec-file"] }));
        const secrets: SecretInput[] = local(() => [
          ...(args["secrets-dir"] ? secretsFromDir(args["secrets-dir"]) : []),
          ...(args.secret ?? []).map((flag) => secretFromFlag(flag)),
        ]);
        const id = await withClient(args.worker, (client) => client.createVm(spec, { secrets, ttlSeconds: args.ttl ?? 0 }));
        console.log(id);
      },
    )
    .command(
      "delete-vm <id>",
      "Stop a VM and free everything it holds",
      (y) => y.positional("id", { type: "string", demandOption: true }),
      async (args) => {
        await withClient(args.worker, (client) => client.deleteVm(args.id));
      },
    )
    .command(
      "list-vms",
      "List VMs",
      (y) => y.option("json", { type: "boolean", describe: "One JSON array instead of a table" }),
      async (args) => {
        const vms: VmView[] = await withClient(args.worker, (client) => client.listVms());
        console.log(args.json ? JSON.stringify(vms.map(vmToJson), null, 2) : formatVmTable(vms));
      },
    )
    .command(
      "get-vm <id>",
      "Show one VM as JSON",
      (y) => y.positional("id", { type: "string", demandOption: true }),
      async (args) => {
        const vm = await withClient(args.worker, (client) => client.getVm(args.id));
        console.log(JSON.stringify(vmToJson(vm), null, 2));
      },
    )
    .command(
      "logs <id>",
      "Print the serial console",
      (y) =>
        y
          .positional("id", { type: "string", demandOption: true })
          .option("follow", { alias: "f", type: "boolean", describe: "Keep printing until the VM stops" })
          .option("offset", { type: "number", default: 0, describe: "Start at this byte offset" })
          .option("raw", { type: "boolean", describe: "Print the guest's bytes as they are, terminal escapes included" }),
      async (args) => {
        await withClient(args.worker, (client) => followLogs(client, args.id, Boolean(args.follow), BigInt(args.offset), Boolean(args.raw)));
      },
    )
    .command(
      "events",
      "Print lifecycle events as JSON lines",
      (y) =>
        y
          .option("since", { type: "number", default: 1 })
          .option("follow", { alias: "f", type: "boolean" }),
      async (args) => {
        await withClient(args.worker, async (client) => {
          let since = BigInt(args.since);
          do {
            const { events, nextSeq } = await client.events(since, 500, args.follow ? 10_000 : 0);
            for (const event of events) {
              console.log(JSON.stringify({ ...event, seq: Number(event.seq), atMs: Number(event.atMs) }));
            }
            since = nextSeq;
          } while (args.follow);
        });
      },
    )
    .command(
      "inject-fault <id>",
      "Break a VM from outside; prints the fault id (see docs/faults.md)",
      (y) =>
        y
          .positional("id", { type: "string", demandOption: true })
          .option("kind", { choices: FAULT_KIND_NAMES, demandOption: true })
          .option("duration-ms", { type: "number", describe: "Clear the fault by itself after this long" })
          .option("cidr", { type: "string", array: true, describe: "partition: only traffic to/from this CIDR (repeatable; none: all)" })
          .option("percent", { type: "number", describe: "loss: drop probability; cpuThrottle: % of one CPU; diskErrors: % of 4 KiB blocks" })
          .option("ms", { type: "number", describe: "delay: milliseconds" })
          .option("jitter-ms", { type: "number", describe: "delay: jitter" })
          .option("kbit", { type: "number", describe: "bandwidth: kbit/s" })
          .option("op", { choices: ["read", "write", "readWrite"], describe: "diskErrors: which requests fail (default readWrite)" })
          .option("errno", { type: "number", describe: "diskErrors: errno to return (default 5, EIO)" })
          .option("after-ops", { type: "number", describe: "diskErrors: start failing after this many more operations" }),
      async (args) => {
        const fault = local(() =>
          faultFromFlags({
            kind: args.kind,
            durationMs: args["duration-ms"],
            cidrs: args.cidr,
            percent: args.percent,
            ms: args.ms,
            jitterMs: args["jitter-ms"],
            kbit: args.kbit,
            op: args.op,
            errno: args.errno,
            afterOps: args["after-ops"],
          }),
        );
        console.log(await withClient(args.worker, (client) => client.injectFault(args.id, fault)));
      },
    )
    .command(
      "clear-fault <id> <fault>",
      "Undo an active fault",
      (y) => y.positional("id", { type: "string", demandOption: true }).positional("fault", { type: "string", demandOption: true }),
      async (args) => {
        await withClient(args.worker, (client) => client.clearFault(args.id, args.fault));
      },
    )
    .command(
      "list-faults <id>",
      "List a VM's active faults",
      (y) => y.positional("id", { type: "string", demandOption: true }).option("json", { type: "boolean" }),
      async (args) => {
        const faults = await withClient(args.worker, (client) => client.listFaults(args.id));
        console.log(args.json ? JSON.stringify(faults.map((f) => ({ ...f, injectedAtMs: Number(f.injectedAtMs), expiresAtMs: Number(f.expiresAtMs) })), null, 2) : formatFaultTable(faults));
      },
    )
    .demandCommand(1, "give a command")
    .strict()
    .help()
    .version(false)
    .fail((message, err) => {
      throw err ?? new UsageError(message);
    });
}

export async function main(argv: string[]): Promise<number> {
  try {
    await buildCli(argv).parseAsync();
    return 0;
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`pcr-worker-test: ${err.message}`);
      return 2;
    }
    if (err instanceof WorkerError) {
      console.error(printable(err.reason)); // a failure may quote the guest's console
      return 1;
    }
    console.error(`pcr-worker-test: ${(err as Error).message ?? String(err)}`);
    return 1;
  }
}

main(hideBin(process.argv)).then((code) => {
  process.exitCode = code;
});
