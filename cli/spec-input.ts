// Turning CLI flags into a VmSpecInput and secrets. Secret values never come from argv itself.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import type { PlacementInput, SecretInput, VmSpecInput } from "../worker/core/api.js";
import { invalidArgument } from "../worker/core/errors.js";
import { MIB, parseVmSpecJson } from "./spec-json.js";

export interface SpecFlags {
  specJson?: string;
  specFile?: string;
  kernel?: string;
  initrd?: string;
  disk?: string;
  cmdline?: string;
  cpu?: number;
  memory?: string;
  hostname?: string;
  allow?: string[];
  group?: string;
}

const SIZE = /^(\d+)\s*([KMGT]i?B?|B)?$/i;
const UNIT: Record<string, number> = { B: 1, K: 1024, M: MIB, G: 1024 * MIB, T: 1024 * 1024 * MIB };

/** "512M", "2G", "268435456" -> bytes. */
export function parseSize(text: string): bigint {
  const match = SIZE.exec(text.trim());
  if (!match) throw invalidArgument(`memory ${JSON.stringify(text)} is not a size like 512M or 2G`);
  const unit = UNIT[(match[2] ?? "B")[0]!.toUpperCase()]!;
  return BigInt(match[1]!) * BigInt(unit);
}

export function specFromFlags(flags: SpecFlags): VmSpecInput {
  const sources = [flags.specJson !== undefined, flags.specFile !== undefined, flags.kernel !== undefined].filter(Boolean).length;
  if (sources !== 1) throw invalidArgument("give exactly one of --spec-json, --spec-file or --kernel");
  let spec: VmSpecInput;
  if (flags.specJson !== undefined) spec = parseVmSpecJson(flags.specJson);
  else if (flags.specFile !== undefined) spec = parseVmSpecJson(readText(flags.specFile, "spec file"));
  else {
    spec = {
      hostname: flags.hostname ?? "vm",
      kernel: flags.kernel!,
      initrd: flags.initrd ?? "",
      image: flags.disk ?? "",
      cmdline: flags.cmdline ?? "",
      cpu: flags.cpu ?? 1,
      memoryBytes: flags.memory !== undefined ? parseSize(flags.memory) : 256n * BigInt(MIB),
      allowedDomains: flags.allow ?? [],
      ...(flags.group !== undefined ? { group: flags.group } : {}),
    };
    return spec;
  }
  // Flags given beside a spec document override its fields.
  if (flags.hostname !== undefined) spec.hostname = flags.hostname;
  if (flags.cmdline !== undefined) spec.cmdline = flags.cmdline;
  if (flags.cpu !== undefined) spec.cpu = flags.cpu;
  if (flags.memory !== undefined) spec.memoryBytes = parseSize(flags.memory);
  if (flags.allow !== undefined) spec.allowedDomains = flags.allow;
  if (flags.group !== undefined) spec.group = flags.group;
  return spec;
}

/** `--secret NAME=@FILE` or `--secret NAME=env:VAR`; a literal value is refused. */
export function secretFromFlag(flag: string, env: NodeJS.ProcessEnv = process.env): SecretInput {
  const eq = flag.indexOf("=");
  if (eq <= 0) throw invalidArgument(`--secret ${JSON.stringify(flag.split("=")[0])}: expected NAME=@FILE or NAME=env:VAR`);
  const name = flag.slice(0, eq);
  const source = flag.slice(eq + 1);
  if (source.startsWith("@")) return { name, value: readFileSync(source.slice(1)) };
  if (source.startsWith("env:")) {
    const value = env[source.slice(4)];
    if (value === undefined) throw invalidArgument(`--secret ${name}: environment variable ${source.slice(4)} is not set`);
    return { name, value: Buffer.from(value) };
  }
  // Never echo the value: it may be a real secret typed by mistake.
  throw invalidArgument(`--secret ${name}: values are never taken from the command line; use ${name}=@FILE or ${name}=env:VAR`);
}

/** Every regular file of DIR becomes a secret named after the file. */
export function secretsFromDir(dir: string): SecretInput[] {
  return readdirSync(dir)
    .filter((name) => statSync(join(dir, name)).isFile())
    .sort()
    .map((name) => ({ name, value: readFileSync(join(dir, name)) }));
}

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw invalidArgument(`cannot read ${what} ${path}: ${(err as Error).message}`);
  }
}

/** --on-host and --label KEY=VALUE as a create's placement; undefined when neither is given. */
export function placementFromFlags(onHost: string | undefined, labels: string[] = []): PlacementInput | undefined {
  const parsed: Record<string, string> = {};
  for (const flag of labels) {
    const eq = flag.indexOf("=");
    if (eq <= 0) throw invalidArgument(`--label ${JSON.stringify(flag)}: expected KEY=VALUE`);
    const key = flag.slice(0, eq);
    if (Object.hasOwn(parsed, key)) throw invalidArgument(`--label ${key} is given twice`);
    parsed[key] = flag.slice(eq + 1);
  }
  const some = labels.length > 0;
  if (!onHost && !some) return undefined;
  return { ...(onHost ? { host: onHost } : {}), ...(some ? { labels: parsed } : {}) };
}
