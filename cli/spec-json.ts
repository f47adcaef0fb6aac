// The spec document check of worker/core/spec.ts (parseVmSpecJson), without zod: loading zod
// alone took half of create-vm's start-up (bench/cli). Same results and the same messages, word
// for word, as the zod schema gives (test/cli/spec-json.test.ts compares the two on a corpus);
// the worker validates what it receives again anyway.
import type { VmSpecInput } from "../worker/core/api.js";
import { invalidArgument } from "../worker/core/errors.js";

export const MIB = 1024 * 1024;
const WHOLE_NUMBER = /^\d+$/;
const KEYS = ["hostname", "kernel", "initrd", "image", "cmdline", "allowedDomains", "cpu", "memoryBytes", "dataDiskBytes", "group"];

/** zod's name for the type of a JSON value. */
function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

const expected = (type: string, value: unknown) => `Invalid input: expected ${type}, received ${typeName(value)}`;

/** Parses a spec JSON document into a VmSpecInput; INVALID_ARGUMENT with every problem on bad input. */
export function parseVmSpecJson(text: string): VmSpecInput {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw invalidArgument(`spec is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw invalidArgument(`bad spec: spec: ${expected("object", raw)}`);
  }
  const doc = raw as Record<string, unknown>;
  // A default stands in for a missing key only (null is a wrong type, as for zod).
  const field = (key: string, fallback?: unknown) => (Object.hasOwn(doc, key) ? doc[key] : fallback);
  const problems: string[] = [];

  const stringField = (key: string, fallback?: string): string => {
    const value = field(key, fallback);
    if (typeof value === "string") return value;
    problems.push(`${key}: ${expected("string", value)}`);
    return "";
  };
  /** A non-negative safe integer, or a string of digits (for sizes beyond 2^53). */
  const wholeNumber = (key: string, fallback?: number): number | string | undefined => {
    const value = field(key, fallback);
    if (value === undefined) return undefined;
    if (typeof value === "string") {
      if (WHOLE_NUMBER.test(value)) return value;
      problems.push(`${key}: must be a whole number`);
    } else if (typeof value === "number" && Number.isInteger(value)) {
      if (value > Number.MAX_SAFE_INTEGER) problems.push(`${key}: Too big: expected int to be <=${Number.MAX_SAFE_INTEGER}`);
      if (value < Number.MIN_SAFE_INTEGER) problems.push(`${key}: Too small: expected int to be >=${Number.MIN_SAFE_INTEGER}`);
      if (value < 0) problems.push(`${key}: Too small: expected number to be >=0`);
      return value;
    } else {
      problems.push(`${key}: Invalid input`);
    }
    return undefined;
  };

  const hostname = stringField("hostname");
  const kernel = stringField("kernel");
  const initrd = stringField("initrd", "");
  const image = stringField("image", "");
  const cmdline = stringField("cmdline", "");
  let allowedDomains: string[] = [];
  const domains = field("allowedDomains", []);
  if (!Array.isArray(domains)) problems.push(`allowedDomains: ${expected("array", domains)}`);
  else {
    domains.forEach((domain: unknown, index) => {
      if (typeof domain !== "string") problems.push(`allowedDomains.${index}: ${expected("string", domain)}`);
    });
    allowedDomains = domains as string[];
  }
  const cpu = wholeNumber("cpu", 1);
  const memoryBytes = wholeNumber("memoryBytes", 256 * MIB);
  const dataDiskBytes = wholeNumber("dataDiskBytes");
  const group = field("group") === undefined ? undefined : stringField("group");
  const unknown = Object.keys(doc).filter((key) => !KEYS.includes(key));
  if (unknown.length > 0) problems.push(`unknown key(s) ${unknown.join(", ")}`);
  if (problems.length > 0) throw invalidArgument(`bad spec: ${problems.join("; ")}`);

  return {
    hostname,
    kernel,
    initrd,
    image,
    cmdline,
    allowedDomains,
    cpu: Number(cpu),
    memoryBytes: BigInt(memoryBytes!),
    ...(dataDiskBytes !== undefined ? { dataDiskBytes: BigInt(dataDiskBytes) } : {}),
    ...(group ? { group } : {}),
  };
}
