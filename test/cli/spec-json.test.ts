// The CLI's zod-free spec check gives what the worker's zod schema gives: the same VmSpecInput or
// the same error message, on every document of a corpus built field by field.
import assert from "node:assert/strict";
import { test } from "node:test";
import { parseVmSpecJson as cliParse } from "../../cli/spec-json.js";
import { parseVmSpecJson as zodParse } from "../../worker/core/spec.js";

const KERNEL = "/nix/store/0c0n6s3ybp2ixy6nnjxfv4xljnhrqzjf-pcr-test-vmlinux";
const BASE = { hostname: "h", kernel: KERNEL };

// JSON texts, not values: 1e400, -0 and 2^53 + 1 must reach the parsers as written.
const ANY_TYPE = ["null", "true", "0", '"x"', "[]", "{}"];
const WHOLE_NUMBERS = [
  ...ANY_TYPE,
  "1",
  "-0",
  "-1",
  "0.5",
  "1e3",
  "1e20",
  "-1e20",
  "1e400",
  "-1e400",
  "9007199254740991",
  "9007199254740992",
  "-9007199254740991",
  "-9007199254740992",
  '""',
  '"12"',
  '"007"',
  '"-1"',
  '"1.0"',
  '" 1"',
  '"1e3"',
  '"99999999999999999999999"',
  '"1\\n"',
];
const FIELDS: Record<string, string[]> = {
  hostname: ANY_TYPE,
  kernel: ANY_TYPE,
  initrd: ANY_TYPE,
  image: ANY_TYPE,
  cmdline: ANY_TYPE,
  allowedDomains: [...ANY_TYPE, '["a.example"]', '["a", 3, null, []]', "[[]]"],
  cpu: WHOLE_NUMBERS,
  memoryBytes: WHOLE_NUMBERS,
  dataDiskBytes: WHOLE_NUMBERS,
  group: [...ANY_TYPE, '"kv"', '""'],
};

function withField(base: Record<string, unknown>, key: string, valueJson: string): string {
  const rest = JSON.stringify(base).slice(1, -1);
  return `{${rest}${rest ? "," : ""}${JSON.stringify(key)}:${valueJson}}`;
}

function outcome(parse: (text: string) => unknown, text: string): unknown {
  try {
    return { ok: parse(text) };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

function corpus(): string[] {
  const texts = ["", "{", "[]", "null", '"spec"', "5", "true", "{}", JSON.stringify(BASE)];
  for (const [key, values] of Object.entries(FIELDS)) {
    const { [key]: _, ...others } = BASE as Record<string, unknown>;
    texts.push(JSON.stringify(others)); // the field missing
    for (const value of values) texts.push(withField(others, key, value));
  }
  // Several problems at once, unknown keys among them, in the order zod reports them.
  texts.push('{"zz":1,"hostname":3,"aa":2,"cpu":-1}');
  texts.push('{"hostname":null,"kernel":[],"initrd":1,"image":{},"cmdline":false,"memoryBytes":"1.5","dataDiskBytes":-3,"kernal":"k"}');
  texts.push('{"hostname":"h","kernel":"k","group":7,"dataDiskBytes":-1,"x":1}');
  texts.push(`{"__proto__":{"hostname":"x"},"constructor":1,"hostname":"h","kernel":"k"}`);
  texts.push(`{"hostname":"h","kernel":"k","hostname":"i","1":true}`);
  return texts;
}

test("the CLI's spec check and the worker's zod schema agree, results and messages", () => {
  const texts = corpus();
  assert.ok(texts.length > 100);
  for (const text of texts) assert.deepEqual(outcome(cliParse, text), outcome(zodParse, text), text);
});
