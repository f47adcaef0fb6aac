// The DNS proxy's process: `node dns-proxy-main.js --listen <gateway> --port 53 [--upstream <resolver>]`,
// started by the worker (inside the worker's network namespace). It speaks JSON lines with the worker:
// allowlists come in on stdin, publish requests and log events go out on stdout. It exits when
// stdin closes, so it never outlives its worker.
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { z } from "zod";
import { dnsResolver } from "./allowlist.js";
import { DnsProxy } from "./dns-proxy.js";
import { type FromProxy, readLine } from "./dns-proxy-process.js";

const ToProxy = z.discriminatedUnion("op", [
  z.object({ op: z.literal("allow"), ip: z.string(), domains: z.array(z.string()) }),
  z.object({ op: z.literal("forget"), ip: z.string() }),
  z.object({
    op: z.literal("names"),
    ip: z.string(),
    records: z.array(z.object({ name: z.string().max(253), address: z.string() })).max(10_000),
  }),
  z.object({ op: z.literal("published"), seq: z.number(), addresses: z.array(z.string()) }),
  z.object({ op: z.literal("stats") }),
]);

const { values } = parseArgs({
  options: {
    listen: { type: "string" },
    port: { type: "string" },
    upstream: { type: "string" },
    "max-ttl": { type: "string" },
    "bind-wait-ms": { type: "string" },
  },
});
const send = (message: FromProxy) => process.stdout.write(`${JSON.stringify(message)}\n`);

const waiting = new Map<number, (addresses: string[]) => void>();
let seq = 0;
const PUBLISH_TIMEOUT_MS = 5_000;

const proxy = new DnsProxy({
  // Without an upstream only local names (group peers) are answered: no VM may have allowed names then.
  resolve: values.upstream ? dnsResolver(values.upstream) : () => Promise.reject(new Error("no upstream resolver")),
  limits: { maxTtlSeconds: Number(values["max-ttl"] ?? 3600) },
  log: (level, msg, fields) => send({ op: "log", level, msg, fields }),
  publish: (ip, name, answers) =>
    new Promise((resolve, reject) => {
      const id = ++seq;
      const timer = setTimeout(() => {
        waiting.delete(id);
        reject(new Error("the worker did not confirm the addresses in time"));
      }, PUBLISH_TIMEOUT_MS);
      waiting.set(id, (addresses) => {
        clearTimeout(timer);
        resolve(addresses);
      });
      send({ op: "publish", seq: id, ip, name, answers });
    }),
});

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const parsed = readLine(ToProxy, line);
  if (!parsed.success)
    return send({ op: "log", level: "error", msg: "dns proxy got a malformed command", fields: { line: line.slice(0, 200) } });
  const message = parsed.data;
  if (message.op === "allow") proxy.allow(message.ip, message.domains);
  else if (message.op === "forget") proxy.forget(message.ip);
  else if (message.op === "names") proxy.names(message.ip, message.records);
  else if (message.op === "stats") send({ op: "stats", ...proxy.stats });
  else {
    const resolve = waiting.get(message.seq);
    waiting.delete(message.seq);
    resolve?.(message.addresses);
  }
});
lines.on("close", () => process.exit(0));

/** A predecessor (a worker killed a moment ago) may still hold the port: wait a little for it. */
async function listen(): Promise<{ address: string; port: number }> {
  const deadline = Date.now() + Number(values["bind-wait-ms"] ?? 5_000);
  for (;;) {
    try {
      return await proxy.listen(values.listen!, Number(values.port));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE" || Date.now() >= deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

listen().then(
  (bound) => send({ op: "ready", address: bound.address, port: bound.port }),
  (err: Error) => {
    send({ op: "fatal", error: err.message });
    process.exit(1);
  },
);
