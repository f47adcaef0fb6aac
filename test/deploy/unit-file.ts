// Reading systemd unit files as systemd does, as far as Procurator's units use it: sections,
// repeated keys, drop-ins, Exec* command lines (quotes, %-specifiers, $$) and Environment= words.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";

/** Every value of every key, per section, in file order (drop-ins after the unit). */
export type Unit = Map<string, Map<string, string[]>>;

export function parseUnit(text: string, into: Unit = new Map()): Unit {
  let section: Map<string, string[]> | undefined;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const header = /^\[([A-Za-z]+)\]$/.exec(line);
    if (header) {
      section = into.get(header[1]!) ?? new Map();
      into.set(header[1]!, section);
      continue;
    }
    const at = line.indexOf("=");
    if (!section || at <= 0) throw new Error(`not a unit file line: ${raw}`);
    const key = line.slice(0, at).trim();
    section.set(key, [...(section.get(key) ?? []), line.slice(at + 1).trim()]);
  }
  return into;
}

/** The unit file and, unless `withDropIns` is false, its drop-ins (<unit>.d/*.conf, in name order), merged. */
export function loadUnit(dir: string, name: string, withDropIns = true): { unit: Unit; dropIns: string[] } {
  const unit = parseUnit(readFileSync(join(dir, name), "utf8"));
  const dropInDir = join(dir, `${name}.d`);
  const dropIns =
    withDropIns && existsSync(dropInDir)
      ? readdirSync(dropInDir)
          .filter((file) => file.endsWith(".conf"))
          .sort()
      : [];
  for (const file of dropIns) parseUnit(readFileSync(join(dropInDir, file), "utf8"), unit);
  return { unit, dropIns };
}

export function values(unit: Unit, section: string, key: string): string[] {
  return unit.get(section)?.get(key) ?? [];
}

/** The one value of a key that must be set once; throws otherwise. */
export function single(unit: Unit, section: string, key: string): string {
  const all = values(unit, section, key);
  if (all.length !== 1) throw new Error(`[${section}] ${key}= is set ${all.length} times, expected once`);
  return all[0]!;
}

/** The %-specifiers Procurator's units use; any other is refused, so a new one is noticed here. */
export function expandSpecifiers(text: string, unitName: string): string {
  return text.replace(/%(.)/g, (_, letter: string) => {
    if (letter === "%") return "%";
    if (letter === "d") return `/run/credentials/${unitName}`;
    if (letter === "t") return "/run";
    if (letter === "S") return "/var/lib";
    throw new Error(`specifier %${letter} is not known to this test`);
  });
}

/**
 * Splits one Exec* line into words as systemd does: whitespace separates, "…" and '…' quote
 * (with C escapes inside double quotes, as JSON writes them), %% is %, $$ is $. A leading
 * prefix (-@:+!) is dropped. A lone $VAR or ${VAR} is refused: these units take no option through it.
 */
export function splitExec(line: string, unitName: string): string[] {
  const words: string[] = [];
  let rest = line.replace(/^[-@:+!]+/, "").trimStart();
  for (; rest !== ""; rest = rest.trimStart()) {
    let word: string;
    if (rest.startsWith('"')) {
      const end = /^"(?:[^"\\]|\\.)*"/.exec(rest);
      if (!end) throw new Error(`unterminated quote in ${line}`);
      word = JSON.parse(end[0]) as string;
      rest = rest.slice(end[0].length);
    } else if (rest.startsWith("'")) {
      const end = rest.indexOf("'", 1);
      if (end < 0) throw new Error(`unterminated quote in ${line}`);
      word = rest.slice(1, end);
      rest = rest.slice(end + 1);
    } else {
      const end = /^\S+/.exec(rest)![0];
      if (/(^|[^$])\$(\{|[A-Za-z_])/.test(end)) throw new Error(`variable in an Exec line: ${end}`);
      word = end;
      rest = rest.slice(end.length);
    }
    words.push(expandSpecifiers(word, unitName).replace(/\$\$/g, "$"));
  }
  return words;
}

/** Environment= values: space-separated NAME=value words, each optionally quoted. */
export function environmentOf(unit: Unit, unitName: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of values(unit, "Service", "Environment")) {
    for (const word of splitExec(line, unitName)) {
      const at = word.indexOf("=");
      if (at <= 0) throw new Error(`Environment= word without a name: ${word}`);
      env[word.slice(0, at)] = word.slice(at + 1);
    }
  }
  return env;
}

/**
 * An EnvironmentFile's NAME=value lines; with `commentedToo`, also its examples (`#NAME=value`),
 * which a reader is invited to uncomment, so they must be valid as well.
 */
export function environmentFile(text: string, commentedToo: boolean): Record<string, string> {
  const env: Record<string, string> = {};
  for (const raw of text.split("\n")) {
    const match = /^(#)?([A-Z][A-Z0-9_]*)=(.*)$/.exec(raw.trim());
    if (!match || (match[1] && !commentedToo)) continue;
    env[match[2]!] = match[3]!;
  }
  return env;
}

/** The program an ExecStart= starts, by its file name (pcr-worker, pcr-gateway). */
export const programOf = (argv: string[]): string => basename(argv[0]!);
