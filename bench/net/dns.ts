// What the DNS proxy costs a guest's lookup: the median time of one A query asked directly of a
// real resolver (dnsmasq, the baseline), through the proxy on a cache miss (proxy → resolver →
// publish → answer) and on a hit, all from one process inside a namespace this benchmark creates.
// `publish` is a no-op here: opening the addresses is the network adapter's nft call, measured by
// bench/net/run.ts.
//   npx tsx bench/net/dns.ts [--runs 200]      (re-runs itself inside the namespace)
import { execa, type ResultPromise } from "execa";
import { randomBytes } from "node:crypto";
import { createSocket } from "node:dgram";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import dnsPacket from "dns-packet";
import { dnsResolver } from "../../worker/net/allowlist.js";
import { DnsProxy } from "../../worker/net/dns-proxy.js";
import { median } from "../stats.js";

const { values } = parseArgs({ options: { runs: { type: "string", default: "200" }, inside: { type: "string" } } });
const runs = Number(values.runs);
const RESOLVER = "127.0.0.53";
const NAMES = 64;

/** One query from a fresh socket, as a stub resolver sends it; resolves with the round trip in ms. */
async function ask(server: string, port: number, name: string): Promise<number> {
  const socket = createSocket("udp4");
  try {
    const answered = new Promise<void>((resolve, reject) => {
      socket.once("message", () => resolve());
      setTimeout(() => reject(new Error(`no answer for ${name} from ${server}:${port}`)), 2000).unref();
    });
    await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
    const started = performance.now();
    socket.send(
      dnsPacket.encode({ type: "query", id: 1, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: "A", name }] }),
      port,
      server,
    );
    await answered;
    return performance.now() - started;
  } finally {
    socket.close();
  }
}

async function inside(dir: string): Promise<void> {
  await execa("ip", ["link", "set", "lo", "up"]);
  const names = Array.from({ length: NAMES }, (_, index) => `n${index}.bench.test`);
  await writeFile(join(dir, "hosts"), names.map((name, index) => `198.18.1.${index + 1} ${name}\n`).join(""));
  const dnsmasq: ResultPromise = execa(
    "dnsmasq",
    [
      "--no-daemon",
      "--conf-file=/dev/null",
      "--no-resolv",
      "--no-hosts",
      `--listen-address=${RESOLVER}`,
      "--bind-interfaces",
      "--user=root",
      "--pid-file=",
      `--addn-hosts=${join(dir, "hosts")}`,
      "--local-ttl=3600",
    ],
    { reject: false },
  );
  // Two proxies: one caches as usual, one never does (TTL capped at 0), so every query it gets is a miss.
  const proxy = (maxTtlSeconds: number) =>
    new DnsProxy({
      resolve: dnsResolver(RESOLVER),
      publish: async (_ip, _name, answers) => answers.map((answer) => answer.address),
      log: () => undefined,
      limits: { queriesPerSecond: 1e6, burst: 1e6, maxTtlSeconds },
    });
  const caching = proxy(3600);
  const uncached = proxy(0);
  try {
    const { port } = await caching.listen("127.0.0.1", 0);
    const { port: missPort } = await uncached.listen("127.0.0.1", 0);
    for (const each of [caching, uncached]) each.allow("127.0.0.1", names);
    for (let attempt = 0; ; attempt++) {
      if (
        await ask(RESOLVER, 53, names[0]!).then(
          () => true,
          () => false,
        )
      )
        break;
      if (attempt > 50) throw new Error("dnsmasq did not answer");
    }
    const direct: number[] = [];
    const miss: number[] = [];
    const hit: number[] = [];
    for (let run = 0; run < runs; run++) {
      const name = names[run % NAMES]!;
      direct.push(await ask(RESOLVER, 53, name));
      miss.push(await ask("127.0.0.1", missPort, name));
      await ask("127.0.0.1", port, name); // fills the cache the first time round
      hit.push(await ask("127.0.0.1", port, name));
    }
    const row = (cells: string[]) => console.log(cells.map((cell, index) => (index === 0 ? cell.padEnd(28) : cell.padStart(12))).join(""));
    console.log(`one A query from a fresh UDP socket, median of ${runs}`);
    row(["", "median ms", "ratio"]);
    const base = median(direct);
    row(["resolver directly (baseline)", base.toFixed(3), "1.00"]);
    row(["proxy, cache miss", median(miss).toFixed(3), (median(miss) / base).toFixed(2)]);
    row(["proxy, cache hit", median(hit).toFixed(3), (median(hit) / base).toFixed(2)]);
  } finally {
    caching.close();
    uncached.close();
    dnsmasq.kill("SIGKILL");
    await dnsmasq;
  }
}

if (values.inside) {
  await inside(values.inside);
} else {
  const ns = `pcr-bd-${randomBytes(3).toString("hex")}`;
  const dir = await mkdtemp(join(tmpdir(), "pcr-dns-bench-"));
  await execa("ip", ["netns", "add", ns]);
  try {
    const self = fileURLToPath(import.meta.url);
    await execa("ip", ["netns", "exec", ns, process.execPath, ...process.execArgv, self, "--runs", String(runs), "--inside", dir], {
      stdio: "inherit",
    });
  } finally {
    await execa("ip", ["netns", "delete", ns], { reject: false });
    await rm(dir, { recursive: true, force: true });
  }
}
