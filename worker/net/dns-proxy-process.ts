// The worker's side of the DNS proxy: starts dns-proxy-main.js (inside the worker's network
// namespace when it has one), keeps it told which names each VM may resolve, answers its publish
// requests, and restarts it if it dies. The proxy parses guests' bytes; the worker only ever sees
// its JSON lines, checked here like any other input.
import { type ChildProcess, spawn } from "node:child_process";
import type { Socket } from "node:net";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { Logger } from "pino";
import { z } from "zod";
import type { Answer } from "./allowlist.js";
import type { PublishFn } from "./dns-proxy.js";

export type FromProxy = z.infer<typeof FromProxy>;
const FromProxy = z.discriminatedUnion("op", [
  z.object({ op: z.literal("ready"), address: z.string(), port: z.number() }),
  z.object({ op: z.literal("fatal"), error: z.string() }),
  z.object({
    op: z.literal("publish"),
    seq: z.number().int(),
    ip: z.string(),
    name: z.string().max(253),
    answers: z.array(z.object({ address: z.string(), ttl: z.number().int().min(0) })).max(64),
  }),
  z.object({
    op: z.literal("log"),
    level: z.enum(["debug", "info", "warn", "error"]),
    msg: z.string(),
    fields: z.record(z.string(), z.unknown()).optional(),
  }),
  z.object({
    op: z.literal("stats"),
    answered: z.number(),
    refused: z.number(),
    dropped: z.number(),
    failed: z.number(),
    upstreamQueries: z.number(),
  }),
]);

export interface DnsProxyProcessOptions {
  /** The gateway address guests send queries to. */
  listen: string;
  port?: number;
  /** Without one, only local names (group peers) are answered. */
  upstream?: string;
  /** TTLs told to guests are capped here: the allow set keeps an address at least that long. */
  maxTtlSeconds: number;
  netns?: string;
  log: Logger;
  publish: PublishFn;
  /** How long a start may take before it counts as failed. */
  readyTimeoutMs?: number;
  /** How long the proxy waits for its port to be freed by a predecessor before giving up. */
  bindWaitMs?: number;
}

/** One JSON line of the protocol, checked against its schema (bad JSON fails like a bad shape). */
export function readLine<T>(schema: z.ZodType<T>, line: string): z.ZodSafeParseResult<T> {
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch {
    json = undefined;
  }
  return schema.safeParse(json);
}

const MAIN = fileURLToPath(new URL("./dns-proxy-main.js", import.meta.url));
const MAX_RESTART_DELAY_MS = 30_000;

export class DnsProxyProcess {
  private child?: ChildProcess;
  private readonly allowlists = new Map<string, string[]>();
  private readonly localNames = new Map<string, { name: string; address: string }[]>();
  private closed = false;
  private restartDelayMs = 1_000;
  private restartTimer?: NodeJS.Timeout;
  private statsWaiters: ((stats: Omit<Extract<FromProxy, { op: "stats" }>, "op">) => void)[] = [];
  private readonly log: Logger;

  constructor(private readonly options: DnsProxyProcessOptions) {
    this.log = options.log.child({ component: "dns-proxy" });
  }

  /** Starts the proxy; resolves once it listens, rejects with its reason (port taken, no address). */
  start(): Promise<void> {
    if (this.child) return Promise.resolve();
    this.closed = false;
    const { listen, port = 53, upstream, netns } = this.options;
    const argv = [
      process.execPath,
      MAIN,
      "--listen",
      listen,
      "--port",
      String(port),
      ...(upstream ? ["--upstream", upstream] : []),
      "--max-ttl",
      String(this.options.maxTtlSeconds),
      "--bind-wait-ms",
      String(this.options.bindWaitMs ?? 5_000),
    ];
    const [file, args] = netns ? ["ip", ["netns", "exec", netns, ...argv]] : [argv[0]!, argv.slice(1)];
    const child = spawn(file, args, { stdio: ["pipe", "pipe", "pipe"] });
    this.child = child;
    // The proxy must not keep the worker (or a test) alive; it exits when its stdin closes.
    child.unref();
    for (const stream of [child.stdin, child.stdout, child.stderr]) (stream as unknown as Socket).unref?.();
    // A write racing the child's death must not become an unhandled 'error' in the worker.
    child.stdin!.on("error", () => undefined);
    let lastWords = "";
    child.stderr!.on("data", (chunk: Buffer) => (lastWords = (lastWords + chunk.toString()).slice(-2000)));
    for (const [ip, domains] of this.allowlists) this.write({ op: "allow", ip, domains });
    for (const [ip, records] of this.localNames) this.write({ op: "names", ip, records });

    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => fail(new Error(`the DNS proxy did not start within ${this.options.readyTimeoutMs ?? 10_000} ms`)),
        this.options.readyTimeoutMs ?? 10_000,
      );
      let settled = false;
      let listening = false;
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        child.kill("SIGKILL");
        reject(err);
      };
      createInterface({ input: child.stdout! }).on("line", (line) => {
        const message = this.parse(line);
        if (message?.op === "ready" && !settled) {
          settled = true;
          listening = true;
          clearTimeout(timer);
          this.restartDelayMs = 1_000;
          this.log.info({ address: message.address, port: message.port, upstream }, "dns proxy listening");
          resolve();
        } else if (message?.op === "fatal") {
          fail(new Error(`the DNS proxy could not listen on ${listen}:${port}: ${message.error}`));
        } else if (message) {
          this.handle(message);
        }
      });
      child.on("error", (err) => fail(err));
      child.on("exit", (code, signal) => {
        if (this.child === child) this.child = undefined;
        if (!settled) return fail(new Error(`the DNS proxy exited (${signal ?? code}) before listening: ${lastWords.trim().slice(-500)}`));
        // A start that failed is its caller's to handle; only a proxy that served is brought back.
        if (this.closed || !listening) return;
        this.log.error({ code, signal, stderr: lastWords.trim().slice(-500) }, "dns proxy died");
        this.scheduleRestart();
      });
    });
  }

  private scheduleRestart(): void {
    this.log.info({ restartInMs: this.restartDelayMs }, "restarting the dns proxy");
    this.restartTimer = setTimeout(() => {
      if (this.closed) return;
      this.start().catch((err: Error) => {
        this.log.error({ err: err.message }, "restarting the dns proxy failed");
        this.scheduleRestart();
      });
    }, this.restartDelayMs);
    this.restartTimer.unref();
    this.restartDelayMs = Math.min(this.restartDelayMs * 2, MAX_RESTART_DELAY_MS);
  }

  /** The names the VM at `ip` may resolve (none: it gets REFUSED for everything). */
  allow(ip: string, domains: string[]): void {
    this.allowlists.set(ip, domains);
    this.write({ op: "allow", ip, domains });
  }

  /** The group peers' names the VM at `ip` may resolve (answered by the proxy itself). */
  names(ip: string, records: { name: string; address: string }[]): void {
    if (records.length) this.localNames.set(ip, records);
    else this.localNames.delete(ip);
    this.write({ op: "names", ip, records });
  }

  forget(ip: string): void {
    this.allowlists.delete(ip);
    this.localNames.delete(ip);
    this.write({ op: "forget", ip });
  }

  /** The proxy's counters (for tests and diagnostics). */
  stats(): Promise<Omit<Extract<FromProxy, { op: "stats" }>, "op">> {
    return new Promise((resolve) => {
      this.statsWaiters.push(resolve);
      this.write({ op: "stats" });
    });
  }

  /** Stops the proxy; resolves once it has exited, so its port is free for a successor. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.restartTimer);
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.stdin?.end();
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 2_000);
    await exited;
    clearTimeout(timer);
  }

  private handle(message: FromProxy): void {
    if (message.op === "log") {
      this.log[message.level](message.fields ?? {}, message.msg);
    } else if (message.op === "stats") {
      const { op: _op, ...stats } = message;
      for (const waiter of this.statsWaiters.splice(0)) waiter(stats);
    } else if (message.op === "publish") {
      const { seq, ip, name, answers } = message;
      this.options
        .publish(ip, name, answers as Answer[])
        .catch((err: Error) => {
          this.log.warn({ ip, name, err: err.message }, "opening a DNS answer's addresses failed; the guest is told none");
          return [] as string[];
        })
        .then((addresses) => this.write({ op: "published", seq, addresses }));
    }
  }

  private parse(line: string): FromProxy | undefined {
    const parsed = readLine(FromProxy, line);
    if (!parsed.success) {
      this.log.error({ line: line.slice(0, 200) }, "dns proxy sent a malformed line");
      return undefined;
    }
    return parsed.data;
  }

  private write(message: object): void {
    const stdin = this.child?.stdin;
    if (stdin && !stdin.destroyed) stdin.write(`${JSON.stringify(message)}\n`);
  }
}
