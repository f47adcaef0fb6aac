// Typed subset of the nftables JSON schema (libnftables-json(5)) that the worker writes, plus
// the applier: every change is one transaction (a line to a long-lived `nft -j -i`, or `nft -j -f
// <file>`), so it applies whole or not at all.
import { randomBytes } from "node:crypto";
import { readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Runner } from "./run.js";
import type { ToolSession } from "./session.js";
import { ifMissing } from "../missing.js";

export type Family = "inet" | "ip" | "bridge" | "netdev";

// --- expressions ----------------------------------------------------------------------------

export type MetaKey = "iifname" | "oifname" | "l4proto" | "nfproto";
export type PayloadField =
  | { protocol: "ip"; field: "saddr" | "daddr" }
  | { protocol: "ether"; field: "saddr" | "daddr" | "type" }
  | { protocol: "arp"; field: "saddr ip" | "saddr ether" }
  | { protocol: "th" | "tcp" | "udp"; field: "dport" | "sport" }
  | { protocol: "icmp"; field: "type" };

export type Expression =
  | string
  | number
  | { meta: { key: MetaKey } }
  | { payload: PayloadField }
  | { ct: { key: "state" } }
  | { prefix: { addr: string; len: number } }
  | { set: (string | number)[] }
  /** A random number in [0, mod): fault injection's packet loss. */
  | { numgen: { mode: "random"; mod: number; offset: number } };

export type Verdict = { accept: null } | { drop: null } | { jump: { target: string } } | { goto: { target: string } };

export type Statement =
  | { match: { op: "==" | "!=" | "in" | "<"; left: Expression; right: Expression | string[] } }
  | Verdict
  /** A named counter object, or an anonymous one on the rule. */
  | { counter: string | { packets: number; bytes: number } }
  | { vmap: { key: Expression; data: string } }
  | { masquerade: null };

// --- objects --------------------------------------------------------------------------------

export interface TableRef {
  family: Family;
  table: string;
}

export interface ChainSpec extends TableRef {
  name: string;
  /** Base chains only. */
  type?: "filter" | "nat";
  hook?: "prerouting" | "input" | "forward" | "output" | "postrouting" | "ingress" | "egress";
  /** netdev base chains: the device they hook. */
  dev?: string;
  prio?: number;
  policy?: "accept" | "drop";
}

export interface SetSpec extends TableRef {
  name: string;
  type: "ipv4_addr" | "ifname" | "ether_addr";
  flags?: ("timeout" | "interval" | "constant")[];
}

export interface MapSpec extends SetSpec {
  map: "verdict";
}

export type Element =
  | string
  | { elem: { val: string | { prefix: { addr: string; len: number } }; timeout: number } }
  | { prefix: { addr: string; len: number } };
export type MapElement = [string, Verdict];

export interface ElementSpec extends TableRef {
  name: string;
  elem: Element[] | MapElement[];
}

export interface RuleSpec extends TableRef {
  chain: string;
  expr: Statement[];
}

export type NftObject =
  | { table: { family: Family; name: string } }
  | { chain: ChainSpec }
  | { set: SetSpec }
  | { map: MapSpec }
  | { counter: TableRef & { name: string } }
  | { element: ElementSpec }
  | { rule: RuleSpec };

export type Command = { add: NftObject } | { delete: NftObject } | { flush: NftObject };

// --- small builders that keep rule code readable ---------------------------------------------

export const accept: Verdict = { accept: null };
export const drop: Verdict = { drop: null };
export const jump = (target: string): Verdict => ({ jump: { target } });
export const goTo = (target: string): Verdict => ({ goto: { target } });
export const meta = (key: MetaKey): Expression => ({ meta: { key } });
export const field = (protocol: PayloadField["protocol"], name: string): Expression =>
  ({ payload: { protocol, field: name } }) as Expression;
export const eq = (left: Expression, right: Expression): Statement => ({ match: { op: "==", left, right } });
export const ne = (left: Expression, right: Expression): Statement => ({ match: { op: "!=", left, right } });
export const prefix = (cidr: string): Expression => {
  const [addr, len] = cidr.split("/");
  return { prefix: { addr: addr!, len: Number(len) } };
};

// --- applying -------------------------------------------------------------------------------

export class NftError extends Error {
  constructor(
    message: string,
    readonly stderr: string,
  ) {
    super(message);
    this.name = "NftError";
  }
}

/** Above this, a transaction goes through a file: `nft -i` reads its input a byte per read(2). */
const MAX_SESSION_LINE = 16 * 1024;

export class Nft {
  constructor(
    private readonly run: Runner,
    /** A long-lived `nft -j -i` (session.ts) for transactions of a few kilobytes, such as one VM's. */
    private readonly session?: ToolSession,
  ) {}

  /** Applies the commands as one atomic transaction. */
  async apply(commands: Command[]): Promise<void> {
    if (commands.length === 0) return;
    const json = JSON.stringify({ nftables: commands });
    if (this.session && json.length <= MAX_SESSION_LINE) {
      const result = await this.session.request([json]);
      if (result.failed)
        throw new NftError(`nft transaction of ${commands.length} commands failed: ${firstLine(result.stderr)}`, result.stderr);
      return;
    }
    // Through a file: nft opens /dev/stdin, which fails on the socket Node gives a child as stdin.
    const file = join(tmpdir(), `pcr-nft-${process.pid}-${randomBytes(6).toString("hex")}.json`);
    await writeFile(file, json, { mode: 0o600 });
    const result = await this.run("nft", ["-j", "-f", file]).finally(() => rm(file, { force: true }));
    if (result.exitCode !== 0) {
      throw new NftError(`nft transaction of ${commands.length} commands failed: ${firstLine(result.stderr)}`, result.stderr);
    }
  }

  /** `nft -j list <what>`; the objects without the metainfo entry. */
  async list(what: string[]): Promise<Record<string, unknown>[]> {
    const result = await this.run("nft", ["-j", "list", ...what]);
    if (result.exitCode !== 0) throw new NftError(`nft list ${what.join(" ")} failed: ${firstLine(result.stderr)}`, result.stderr);
    const parsed = JSON.parse(result.stdout) as { nftables: Record<string, unknown>[] };
    return parsed.nftables.filter((entry) => !("metainfo" in entry));
  }

  /** `list` of an object that may be absent: none when nft says it does not exist, any other failure thrown. */
  async listIfPresent(what: string[]): Promise<Record<string, unknown>[]> {
    try {
      return await this.list(what);
    } catch (err) {
      if (isMissing(err)) return [];
      throw err;
    }
  }
}

const TRANSACTION_FILE = /^pcr-nft-(\d+)-[0-9a-f]+\.json$/;

/** Removes transaction files a worker killed in the middle of `apply` left behind (their pid is gone). */
export async function removeStaleTransactionFiles(dir = tmpdir()): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await ifMissing(readdir(dir), [] as string[])) {
    const pid = Number(TRANSACTION_FILE.exec(name)?.[1] ?? NaN);
    if (!Number.isInteger(pid) || pid === process.pid || processExists(pid)) continue;
    await rm(join(dir, name), { force: true });
    removed.push(name);
  }
  return removed;
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/** nft's answer for a table, chain, set or element that is not there. */
export function isMissing(err: unknown): boolean {
  return err instanceof NftError && /No such file or directory/.test(err.stderr);
}

function firstLine(text: string): string {
  return text.split("\n").find((line) => line.trim()) ?? "";
}
