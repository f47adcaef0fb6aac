#!/usr/bin/env node
// pcr-worker-test: a thin client of the Worker RPC. Exit codes: 0 ok, 1 error from the worker, 2 usage error.
// Start-up matters (scripts call it in loops): this file loads only the argument parser; the RPC
// client and the command handlers are imported once a command is known to run (bench/cli).
import { FAULT_KINDS } from "../worker/core/api.js";
import { type CommandSpec, helpText, type OptionSpec, parse, UsageError } from "./args.js";
import { printable } from "./terminal.js";

const DEFAULT_WORKER = "/run/procurator/worker.sock";
const SCRIPT = "pcr-worker-test";

const globalOptions = (): Record<string, OptionSpec> => ({
  worker: {
    type: "string",
    default: process.env.PCR_WORKER ?? DEFAULT_WORKER,
    describe: "Worker address: a unix socket path or tcp://host:port (env: PCR_WORKER)",
  },
  "tls-cert": {
    type: "string",
    default: process.env.PCR_TLS_CERT,
    describe: "Client certificate (PEM) for a tcp:// worker with mutual TLS (env: PCR_TLS_CERT)",
  },
  "tls-key": { type: "string", default: process.env.PCR_TLS_KEY, describe: "Its key (PEM) (env: PCR_TLS_KEY)" },
  "tls-ca": {
    type: "string",
    default: process.env.PCR_TLS_CA,
    describe: "CA (PEM) the worker's certificate must chain to (env: PCR_TLS_CA)",
  },
});

export const COMMANDS: CommandSpec[] = [
  {
    name: "create-vm",
    positionals: [],
    describe: "Create and boot a VM; prints its id",
    options: {
      "spec-json": { type: "string", describe: "Spec as printed by `nix eval --json .#vmSpec`" },
      "spec-file": { type: "string", describe: "File holding such a spec" },
      kernel: { type: "string", describe: "/nix/store path of a vmlinux or bzImage" },
      initrd: { type: "string" },
      disk: { type: "string", describe: "/nix/store path of the root disk image (read-only)" },
      cmdline: { type: "string" },
      cpu: { type: "number" },
      memory: { type: "string", describe: "e.g. 512M, 2G or bytes" },
      hostname: { type: "string" },
      allow: { type: "string", array: true, describe: "Allowed egress domain, IP or CIDR (repeatable)" },
      group: { type: "string", describe: "Group to join: members reach each other and resolve each other's names" },
      secret: { type: "string", array: true, describe: "NAME=@FILE or NAME=env:VAR (repeatable)" },
      "secrets-dir": { type: "string", describe: "Every file in DIR becomes a secret" },
      ttl: { type: "number", describe: "Destroy the VM after this many seconds" },
      "wait-ready": { type: "boolean", describe: "Answer once the guest agent says hello (a VM that never does is deleted)" },
      "wait-ready-ms": { type: "number", describe: "How long --wait-ready waits (default 120000)" },
      "idempotency-key": {
        type: "string",
        describe: "Retrying with the same key answers the VM the first try made, never a second one",
      },
      "on-host": { type: "string", describe: "Fleet: place the VM on this host id (a single worker ignores it)" },
      label: { type: "string", array: true, describe: "Fleet: place the VM on a host with label KEY=VALUE (repeatable)" },
    },
  },
  { name: "delete-vm", positionals: ["id"], describe: "Stop a VM and free everything it holds", options: {} },
  {
    name: "list-vms",
    positionals: [],
    describe: "List VMs",
    options: { json: { type: "boolean", describe: "One JSON array instead of a table" } },
  },
  { name: "get-vm", positionals: ["id"], describe: "Show one VM as JSON", options: {} },
  {
    name: "logs",
    positionals: ["id"],
    describe: "Print the serial console",
    options: {
      follow: { alias: "f", type: "boolean", describe: "Keep printing until the VM stops" },
      offset: { type: "number", default: 0, describe: "Start at this byte offset" },
      raw: { type: "boolean", describe: "Print the guest's bytes as they are, terminal escapes included" },
    },
  },
  {
    name: "events",
    positionals: [],
    describe: "Print lifecycle events as JSON lines",
    options: { since: { type: "number", default: 1 }, follow: { alias: "f", type: "boolean" } },
  },
  {
    name: "inject-fault",
    positionals: ["id"],
    describe: "Break a VM from outside; prints the fault id (see docs/faults.md)",
    options: {
      kind: { choices: FAULT_KINDS, required: true },
      "duration-ms": { type: "number", describe: "Clear the fault by itself after this long" },
      cidr: {
        type: "string",
        array: true,
        describe: "partition, loss: only traffic to/from this CIDR; delay: only from it (repeatable; none: all)",
      },
      direction: {
        choices: ["both", "outbound", "inbound"],
        describe: "partition: drop both ways (default), or only what it sends or receives",
      },
      percent: { type: "number", describe: "loss: drop probability; cpuThrottle: % of one CPU; diskErrors: % of 4 KiB blocks" },
      ms: { type: "number", describe: "delay: milliseconds" },
      "jitter-ms": { type: "number", describe: "delay: jitter" },
      kbit: { type: "number", describe: "bandwidth: kbit/s" },
      op: { choices: ["read", "write", "readWrite"], describe: "diskErrors: which requests fail (default readWrite)" },
      errno: { type: "number", describe: "diskErrors: errno to return (default 5, EIO)" },
      "after-ops": { type: "number", describe: "diskErrors: start failing after this many more operations" },
      pid: { type: "number", describe: "killProcess, freezeProcess: the guest process" },
      name: { type: "string", describe: "killProcess, freezeProcess: every guest process of this comm or argv[0] base name" },
      signal: { type: "string", describe: "killProcess: number or name (default KILL)" },
      "delta-ms": { type: "number", describe: "clockShift, clockStrobe: the step of the guest's clock (negative: back)" },
      "period-ms": { type: "number", describe: "clockStrobe: step there and back every this long" },
      dir: { type: "string", describe: "fillDisk: a directory in the guest whose filesystem is filled" },
    },
  },
  { name: "clear-fault", positionals: ["id", "fault"], describe: "Undo an active fault", options: {} },
  { name: "list-faults", positionals: ["id"], describe: "List a VM's active faults", options: { json: { type: "boolean" } } },
  {
    name: "exec",
    positionals: ["id"],
    rest: "argv",
    describe: "Run a command in the VM's guest agent; prints its output, exits with its code (128+N for signal N)",
    options: {
      "timeout-ms": { type: "number", describe: "Kill the command (and what it started) after this long" },
      env: { type: "string", array: true, describe: "NAME=value in the command's environment (repeatable)" },
      cwd: { type: "string", describe: "Absolute directory to run it in" },
      interactive: { alias: "i", type: "boolean", describe: "Send this command's stdin (at most 128 KiB) to it" },
      tty: { alias: "t", type: "boolean", describe: "Run it on a terminal joined to this one (raw keys, window size)" },
    },
  },
  {
    name: "cp",
    positionals: ["src", "dst"],
    describe: "Copy a file into or out of a VM: one side is <id>:<path>; - is stdin or stdout",
    options: {},
  },
];

export async function main(argv: string[]): Promise<number> {
  try {
    const global = globalOptions();
    const parsed = parse(argv, global, COMMANDS);
    if (parsed.kind === "help") {
      console.log(helpText(SCRIPT, global, COMMANDS, parsed.command));
      return 0;
    }
    const { handlers, loadClientTls } = await import("./commands.js");
    loadClientTls(parsed.values);
    const code = await handlers[parsed.command.name]!(parsed.values, parsed.positionals, parsed.rest);
    return typeof code === "number" ? code : 0;
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`${SCRIPT}: ${err.message}`);
      return 2;
    }
    const { WorkerError } = await import("../worker/core/errors.js");
    if (err instanceof WorkerError) {
      console.error(printable(err.reason)); // a failure may quote the guest's console
      return 1;
    }
    console.error(`${SCRIPT}: ${(err as Error).message ?? String(err)}`);
    return 1;
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
