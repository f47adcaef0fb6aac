// A small world for network tests, made of namespaces the test owns:
//   worker ns (pcr-t-*): the adapter's bridge and TAPs, uplink veth 198.18.0.1/24, host listeners
//   upstream ns (pcr-u-*): 198.18.0.2 (+ .10 .11 .12 listeners, dnsmasq on .53 and .54)
// Everything is removed by destroy(), listeners and dnsmasq included.
import { execa, type ResultPromise } from "execa";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Answer, ResolveFn } from "../../worker/net/allowlist.js";
import { createNetns, deleteNetns } from "../helpers/netns.js";

export const UPLINK = "up0";
export const UPLINK_IP = "198.18.0.1";
export const RESOLVER = "198.18.0.53";
/** A working DNS server that is not the configured resolver. */
export const OTHER_DNS = "198.18.0.54";
export const ALLOWED_IP = "198.18.0.10";
export const DENIED_IP = "198.18.0.11";
export const MOVED_IP = "198.18.0.12";
export const LISTEN_PORT = 8080;

/** An HTTP server answering "hello <address>:<port>" on each given address:port. */
const LISTENER = `
const http = require("node:http");
for (const spec of process.argv.slice(1)) {
  const [host, port] = spec.split(":");
  http.createServer((req, res) => res.end("hello-" + host + ":" + port)).listen(Number(port), host);
}
setInterval(() => {}, 1 << 30);
`;

/** node:dns Resolver with TTLs, run inside the namespace (node in the test's own namespace cannot reach it). */
const RESOLVE =
  `
const { Resolver } = require("node:dns").promises;
const resolver = new Resolver({ timeout: 2000, tries: 2 });
resolver.setServers([process.argv[2]]);
resolver.resolve4(process.argv[1], { ttl: true }).then(
  (answers) => console.log(JSON.stringify(answers)),
  (err) => { if (err.code === "ENOTFOUND" || err.code === "ENODATA") console.log("[]"); ` +
  `else { console.error(err.code); process.exit(1); } },
);
`;

export class Topology {
  private readonly children: ResultPromise[] = [];
  private dnsmasq?: ResultPromise;

  private constructor(
    readonly ns: string,
    readonly upstream: string,
    readonly dir: string,
  ) {}

  static async create(): Promise<Topology> {
    const ns = await createNetns("pcr-t");
    const upstream = await createNetns("pcr-u");
    const dir = await mkdtemp(join(tmpdir(), "pcr-net-test-"));
    const topology = new Topology(ns, upstream, dir);
    try {
      await execa("ip", ["-n", ns, "link", "add", UPLINK, "type", "veth", "peer", "name", "dn0", "netns", upstream]);
      await execa("ip", ["-n", ns, "addr", "add", `${UPLINK_IP}/24`, "dev", UPLINK]);
      await execa("ip", ["-n", ns, "link", "set", UPLINK, "up"]);
      for (const ip of ["198.18.0.2", ALLOWED_IP, DENIED_IP, MOVED_IP, RESOLVER, OTHER_DNS]) {
        await execa("ip", ["-n", upstream, "addr", "add", `${ip}/24`, "dev", "dn0"]);
      }
      await execa("ip", ["-n", upstream, "link", "set", "dn0", "up"]);
      await topology.setHosts({ "allowed.test": ALLOWED_IP, "denied.test": DENIED_IP });
      await topology.startDnsmasq();
      topology.spawn(upstream, "node", ["-e", LISTENER, ...[ALLOWED_IP, DENIED_IP, MOVED_IP].map((ip) => `${ip}:${LISTEN_PORT}`)]);
    } catch (err) {
      await topology.destroy();
      throw err;
    }
    return topology;
  }

  /** Starts a process inside a namespace; killed by destroy(). */
  spawn(ns: string, command: string, args: string[]): ResultPromise {
    const child = execa("ip", ["netns", "exec", ns, command, ...args], { reject: false, stdin: "ignore" });
    this.children.push(child);
    return child;
  }

  /** HTTP listeners on the worker namespace's own addresses (the "host" as guests see it). */
  startHostListeners(specs: string[]): void {
    this.spawn(this.ns, "node", ["-e", LISTENER, ...specs]);
  }

  /** Rewrites dnsmasq's hosts file; takes effect on reloadDns(). */
  async setHosts(hosts: Record<string, string>): Promise<void> {
    const text = Object.entries(hosts)
      .map(([name, ip]) => `${ip} ${name}\n`)
      .join("");
    await writeFile(join(this.dir, "hosts"), text);
  }

  get resolverLogPath(): string {
    return join(this.dir, "resolver.log");
  }

  /** What the upstream resolver has logged so far (one line per query it received, and more). */
  async resolverLog(): Promise<string> {
    return readFile(this.resolverLogPath, "utf8").catch(() => "");
  }

  reloadDns(): void {
    this.dnsmasq?.kill("SIGHUP");
  }

  private async startDnsmasq(): Promise<void> {
    this.dnsmasq = this.spawn(this.upstream, "dnsmasq", [
      "--no-daemon",
      "--conf-file=/dev/null",
      "--no-resolv",
      "--no-hosts",
      `--listen-address=${RESOLVER}`,
      `--listen-address=${OTHER_DNS}`,
      "--bind-interfaces",
      "--user=root",
      "--pid-file=",
      `--addn-hosts=${join(this.dir, "hosts")}`,
      // Every query it receives, so tests can show what never reached it.
      "--log-queries",
      `--log-facility=${this.resolverLogPath}`,
      "--local-ttl=2",
    ]);
    // Ready when it answers.
    const resolve = this.resolver();
    for (let attempt = 0; attempt < 50; attempt++) {
      if ((await resolve("allowed.test").catch(() => [])).length > 0) return;
      await new Promise((done) => setTimeout(done, 100));
    }
    throw new Error("dnsmasq did not answer");
  }

  /** Resolution as the adapter does it, from inside the worker namespace. */
  resolver(): ResolveFn {
    return async (name: string): Promise<Answer[]> => {
      const result = await execa("ip", ["netns", "exec", this.ns, "node", "-e", RESOLVE, name, RESOLVER]);
      return JSON.parse(result.stdout) as Answer[];
    };
  }

  async nftJson(args: string[]): Promise<{ nftables: Record<string, unknown>[] }> {
    const result = await execa("ip", ["netns", "exec", this.ns, "nft", "-j", ...args]);
    return JSON.parse(result.stdout) as { nftables: Record<string, unknown>[] };
  }

  async linkNames(): Promise<string[]> {
    const result = await execa("ip", ["-n", this.ns, "-j", "link", "show"]);
    return (JSON.parse(result.stdout) as { ifname: string }[]).map((link) => link.ifname).sort();
  }

  async destroy(): Promise<void> {
    for (const child of this.children) child.kill("SIGKILL");
    await Promise.allSettled(this.children);
    await deleteNetns(this.ns);
    await deleteNetns(this.upstream);
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** Set elements of an nft `list set` answer, as plain addresses. */
export function setAddresses(listing: { nftables: Record<string, unknown>[] }): string[] {
  const set = listing.nftables.find((entry) => "set" in entry)?.set as { elem?: unknown[] } | undefined;
  return (set?.elem ?? []).map((elem) => {
    if (typeof elem === "string") return elem;
    const value = "elem" in (elem as object) ? (elem as { elem: { val: unknown } }).elem.val : elem;
    if (typeof value === "string") return value;
    const { prefix } = value as { prefix: { addr: string; len: number } };
    return `${prefix.addr}/${prefix.len}`;
  });
}
