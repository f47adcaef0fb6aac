// A small argument parser and help printer for the CLI, in place of yargs (whose loading alone
// took longer than starting Node). It keeps what the CLI used of yargs: `--name value`,
// `--name=value`, camelCase spellings (`--specJson`), `--no-flag`, `--flag true|false`, greedy
// arrays (`--allow a b`), choices, required options and positionals, strict checking with the same
// messages, and help laid out as yargs (cliui) laid it out.

export type OptionType = "string" | "number" | "boolean";

export interface OptionSpec {
  type?: OptionType;
  array?: boolean;
  alias?: string;
  default?: string | number;
  choices?: readonly string[];
  required?: boolean;
  describe?: string;
}

export interface CommandSpec {
  name: string;
  /** Required positionals, in order. */
  positionals: string[];
  /** Name of the arguments after the positionals (given after `--`), at least one; none if absent. */
  rest?: string;
  describe: string;
  options: Record<string, OptionSpec>;
}

export type Values = Record<string, string | number | boolean | string[] | undefined>;

/** Errors found before anything was sent: exit code 2. */
export class UsageError extends Error {}

export type Parsed =
  | { kind: "help"; command?: CommandSpec }
  | { kind: "run"; command: CommandSpec; values: Values; positionals: Record<string, string>; rest: string[] };

const kebab = (name: string) => name.replace(/[A-Z]/g, (char) => `-${char.toLowerCase()}`);
const looksLikeFlag = (arg: string) => /^-/.test(arg) && !/^-\d/.test(arg);

/** Parses argv against global options and commands; throws UsageError with yargs' messages. */
export function parse(argv: string[], global: Record<string, OptionSpec>, commands: CommandSpec[]): Parsed {
  // Every option of every command, by name and alias: no two commands give a name different types.
  const known = new Map<string, [string, OptionSpec]>();
  for (const options of [global, ...commands.map((command) => command.options)]) {
    for (const [name, spec] of Object.entries(options)) {
      known.set(name, [name, spec]);
      if (spec.alias) known.set(spec.alias, [name, spec]);
    }
  }
  const values: Values = {};
  const seen = new Set<string>();
  const unknown: string[] = [];
  const positionals: string[] = [];
  let help = false;
  let afterDashes: string[] = [];
  for (let at = 0; at < argv.length; at++) {
    const arg = argv[at]!;
    if (arg === "--") {
      afterDashes = argv.slice(at + 1);
      break;
    }
    if (!looksLikeFlag(arg) || arg === "-") {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const rawName = arg.replace(/^--?/, "").slice(0, eq < 0 ? undefined : eq - (arg.startsWith("--") ? 2 : 1));
    const inline = eq < 0 ? undefined : arg.slice(eq + 1);
    let name = kebab(rawName);
    let negated = false;
    if (!known.has(name) && name.startsWith("no-") && known.get(name.slice(3))?.[1].type === "boolean") {
      name = name.slice(3);
      negated = true;
    }
    if (name === "help") {
      help = true;
      continue;
    }
    const entry = known.get(name);
    const next = () => (inline !== undefined ? inline : at + 1 < argv.length && !looksLikeFlag(argv[at + 1]!) ? argv[++at] : undefined);
    if (!entry) {
      unknown.push(rawName);
      next();
      continue;
    }
    const [key, spec] = entry;
    seen.add(key);
    if (spec.type === "boolean") {
      let value = !negated;
      if (inline !== undefined) value = inline !== "false";
      else if (argv[at + 1] === "true" || argv[at + 1] === "false") value = argv[++at] === "true";
      values[key] = value;
    } else if (spec.array) {
      const list = (values[key] as string[] | undefined) ?? [];
      if (inline !== undefined) list.push(inline);
      else while (at + 1 < argv.length && !looksLikeFlag(argv[at + 1]!)) list.push(argv[++at]!);
      values[key] = list;
    } else {
      const value = next() ?? "";
      values[key] = spec.type === "number" ? Number(value) : value;
    }
  }

  const [commandName, ...rest] = positionals;
  if (commandName === undefined) {
    if (help) return { kind: "help" };
    throw new UsageError("give a command");
  }
  if (commandName === "help" && rest.length === 0) return { kind: "help" };
  const command = commands.find((c) => c.name === commandName);
  if (!command) throw new UsageError(unknownMessage([commandName, ...unknown]));
  if (help) return { kind: "help", command };

  const given = [...rest, ...afterDashes];
  if (given.length < command.positionals.length) {
    throw new UsageError(`Not enough non-option arguments: got ${given.length}, need at least ${command.positionals.length}`);
  }
  const allowed = { ...global, ...command.options };
  const missing = Object.entries(allowed).filter(([name, spec]) => spec.required && !seen.has(name));
  if (missing.length > 0) {
    throw new UsageError(`Missing required argument${missing.length > 1 ? "s" : ""}: ${missing.map(([name]) => name).join(", ")}`);
  }
  const trailing = given.slice(command.positionals.length);
  if (command.rest && trailing.length === 0) throw new UsageError(`give the ${command.rest} after --`);
  const strange = [...unknown, ...[...seen].filter((name) => !(name in allowed)), ...(command.rest ? [] : trailing)];
  if (strange.length > 0) throw new UsageError(unknownMessage(strange));
  const invalid = Object.entries(allowed).filter(
    ([name, spec]) => spec.choices && seen.has(name) && !spec.choices.includes(String(values[name])),
  );
  if (invalid.length > 0) {
    const lines = invalid.map(
      ([name, spec]) =>
        `  Argument: ${name}, Given: ${JSON.stringify(values[name])}, Choices: ${spec.choices!.map((c) => JSON.stringify(c)).join(", ")}`,
    );
    throw new UsageError(`Invalid values:\n${lines.join("\n")}`);
  }
  for (const [name, spec] of Object.entries(allowed)) {
    if (!(name in values) && spec.default !== undefined) values[name] = spec.default;
  }
  return {
    kind: "run",
    command,
    values,
    positionals: Object.fromEntries(command.positionals.map((name, index) => [name, given[index]!])),
    rest: command.rest ? trailing : [],
  };
}

function unknownMessage(names: string[]): string {
  return `Unknown argument${names.length > 1 ? "s" : ""}: ${names.join(", ")}`;
}

// Help, laid out as yargs does it: a key column, a wrapped description, and type hints
// right-aligned at the wrap width, on the description's last line when they fit there.

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
    while (line.length > width) {
      lines.push(line.slice(0, width));
      line = line.slice(width);
    }
  }
  lines.push(line);
  return lines;
}

function hints(spec: OptionSpec, positional: boolean): string {
  const type = spec.array ? "[array]" : spec.type ? `[${spec.type}]` : "";
  const parts = [
    type,
    spec.required || positional ? "[required]" : "",
    spec.choices ? `[choices: ${spec.choices.map((c) => JSON.stringify(c)).join(", ")}]` : "",
  ];
  if (spec.default !== undefined) parts.push(`[default: ${typeof spec.default === "string" ? `"${spec.default}"` : spec.default}]`);
  return parts.filter(Boolean).join(" ");
}

function table(rows: Array<[string, string, string]>, keyWidth: number, width: number): string[] {
  const out: string[] = [];
  for (const [key, describe, extra] of rows) {
    const described = wrap(describe, width - keyWidth);
    const lines = described.map((text, index) => `${index === 0 ? `  ${key}`.padEnd(keyWidth) : " ".repeat(keyWidth)}${text}`.trimEnd());
    if (extra) {
      const right = wrap(extra, width - 2).map((text) => " ".repeat(width - text.length) + text);
      const last = lines[lines.length - 1]!;
      const lead = width - right[0]!.trimStart().length;
      if (lead >= last.length) lines[lines.length - 1] = last + right.shift()!.slice(last.length);
      lines.push(...right);
    }
    out.push(...lines);
  }
  return out;
}

export function helpText(scriptName: string, global: Record<string, OptionSpec>, commands: CommandSpec[], command?: CommandSpec): string {
  const width = Math.min(80, process.stdout.columns || 80);
  const usage = (c: CommandSpec) =>
    [scriptName, c.name, ...c.positionals.map((p) => `<${p}>`), ...(c.rest ? [`-- <${c.rest}...>`] : [])].join(" ");
  const options: Record<string, OptionSpec> = { ...global, help: { type: "boolean", describe: "Show help" }, ...command?.options };
  // With a short alias anywhere, "-f, --follow" comes first and the others are indented to line up.
  const indent = Object.values(options).some((spec) => spec.alias) ? "    " : "";
  const switches = Object.entries(options).map(
    ([name, spec]) => [spec.alias ? `-${spec.alias}, --${name}` : `${indent}--${name}`, spec] as const,
  );
  const positionals = command?.positionals ?? [];
  const keyWidth =
    Math.min(Math.max(...switches.map(([key]) => key.length), ...positionals.map((p) => p.length)), Math.floor(width / 2)) + 4;
  const optionRows = table(
    switches.map(([key, spec]) => [key, spec.describe ?? "", hints(spec, false)]),
    keyWidth,
    width,
  );
  if (!command) {
    const commandWidth = Math.min(Math.max(...commands.map((c) => usage(c).length)), Math.floor(width / 2)) + 4;
    return [
      `${scriptName} <command> [options]`,
      "",
      "Commands:",
      ...table(
        commands.map((c) => [usage(c), c.describe, ""]),
        commandWidth,
        width,
      ),
      "",
      "Options:",
      ...optionRows,
    ].join("\n");
  }
  const positionalRows = table(
    positionals.map((p) => [p, "", hints({ type: "string" }, true)]),
    keyWidth,
    width,
  );
  return [
    usage(command),
    "",
    command.describe,
    "",
    ...(positionalRows.length ? ["Positionals:", ...positionalRows, ""] : []),
    "Options:",
    ...optionRows,
  ].join("\n");
}
