// Real nats-server processes for tests: one JetStream node, or a three-node JetStream cluster.
// Each node gets a generated config file, fixed ports (so a restarted node keeps its address and
// routes) and its own store directory; readiness is read from the monitoring port, never slept for.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface NatsNode {
  readonly name: string;
  readonly url: string;
  readonly monitorUrl: string;
  /** Whether its process is running (not killed). */
  readonly running: boolean;
}

export interface NatsCluster {
  readonly nodes: readonly NatsNode[];
  /** Client URLs of every node. */
  readonly urls: string[];
  /** Kills node i (SIGKILL: a crash, not a clean shutdown) and waits for its exit. */
  kill(i: number): Promise<void>;
  /** Starts node i again over its store directory and waits until it is back in JetStream. */
  restart(i: number): Promise<void>;
  /** Kills every node and removes the temporary directory. */
  stop(): Promise<void>;
}

export interface StartNatsOptions {
  jetstream?: boolean;
  /** Largest message the server accepts (its default is 1 MiB). */
  maxPayload?: number;
  /** How long to wait for readiness. */
  readyTimeoutMs?: number;
  /** The address clients connect to (a fleet test's bridge); routes and monitoring stay on 127.0.0.1. */
  host?: string;
  /** Lines appended to every node's config (an `authorization` block). */
  extraConfig?: string[];
}

const READY_TIMEOUT_MS = 20_000;
/** Every nats-server started here, so that an exiting test process leaves none behind. */
const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

/** A single node on free ports, with JetStream unless `jetstream: false`. */
export async function startNats(options: StartNatsOptions = {}): Promise<NatsCluster & { url: string }> {
  const cluster = await startNodes(1, options);
  return Object.assign(cluster, { url: cluster.urls[0]! });
}

/** `size` JetStream nodes routed to each other, ready for R`size` streams (a meta leader elected, every peer current). */
export function startNatsCluster(size = 3, options: Omit<StartNatsOptions, "jetstream"> = {}): Promise<NatsCluster> {
  return startNodes(size, { ...options, jetstream: true });
}

interface NodeState {
  name: string;
  configPath: string;
  port: number;
  monitorPort: number;
  child: ChildProcess | undefined;
  /** Its stderr (nats-server logs there), for the error when it does not come up. */
  log: string;
  /** It exited without being killed here (a bad config, a port taken). */
  crashed: boolean;
}

async function startNodes(size: number, options: StartNatsOptions): Promise<NatsCluster> {
  const dir = mkdtempSync(join(tmpdir(), "pcr-nats-"));
  const states: NodeState[] = [];
  const timeoutMs = options.readyTimeoutMs ?? READY_TIMEOUT_MS;
  const clustered = size > 1;
  const host = options.host ?? "127.0.0.1";
  const stop = async (): Promise<void> => {
    await Promise.all(states.map((state) => killNode(state)));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const ports = await freePorts(size * 3);
    for (let i = 0; i < size; i++) {
      const name = `n${i}`;
      const [port, monitorPort, routePort] = [ports[i * 3]!, ports[i * 3 + 1]!, ports[i * 3 + 2]!];
      const routes = clustered ? ports.filter((_, j) => j % 3 === 2 && j !== i * 3 + 2).map((p) => `"nats-route://127.0.0.1:${p}"`) : [];
      const lines = [
        `server_name: ${name}`,
        `listen: "${host}:${port}"`,
        `http: "127.0.0.1:${monitorPort}"`,
        ...(options.maxPayload ? [`max_payload: ${options.maxPayload}`] : []),
        ...(options.jetstream ? [`jetstream { store_dir: "${join(dir, name)}" }`] : []),
        ...(clustered ? [`cluster { name: "pcr-test", listen: "127.0.0.1:${routePort}", routes: [${routes.join(", ")}] }`] : []),
        ...(options.extraConfig ?? []),
      ];
      const configPath = join(dir, `${name}.conf`);
      writeFileSync(configPath, `${lines.join("\n")}\n`);
      states.push({ name, configPath, port, monitorPort, child: undefined, log: "", crashed: false });
    }
    for (const state of states) spawnNode(state);
    await waitReady(states, options.jetstream === true, clustered, timeoutMs);
  } catch (err) {
    await stop();
    throw err;
  }
  const node = (i: number): NodeState => {
    const state = states[i];
    if (!state) throw new Error(`no nats node ${i}`);
    return state;
  };
  return {
    nodes: states.map((state) => ({
      name: state.name,
      url: `nats://${host}:${state.port}`,
      monitorUrl: `http://127.0.0.1:${state.monitorPort}`,
      get running() {
        return state.child !== undefined;
      },
    })),
    urls: states.map((state) => `nats://${host}:${state.port}`),
    kill: (i) => killNode(node(i)),
    restart: async (i) => {
      const state = node(i);
      await killNode(state);
      spawnNode(state);
      await waitReady(states, options.jetstream === true, clustered, timeoutMs);
    },
    stop,
  };
}

function spawnNode(state: NodeState): void {
  state.log = "";
  state.crashed = false;
  const child = spawn("nats-server", ["-c", state.configPath], { stdio: ["ignore", "ignore", "pipe"] });
  live.add(child);
  child.stderr!.setEncoding("utf8");
  // Keeps the tail only: enough to say why a node did not come up.
  child.stderr!.on("data", (chunk: string) => {
    state.log = (state.log + chunk).slice(-8192);
  });
  child.once("exit", () => {
    live.delete(child);
    if (state.child !== child) return;
    state.child = undefined;
    state.crashed = true;
  });
  child.once("error", () => undefined); // a missing binary shows as the readiness error
  state.child = child;
}

async function killNode(state: NodeState): Promise<void> {
  const child = state.child;
  if (!child) return;
  state.child = undefined;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGKILL");
  await exited;
}

/** A node died while we waited for it: no point waiting on. */
class NodeExited extends Error {}

/** Polls `check` ("" when done, else what is missing) until it passes or `timeoutMs` runs out. */
async function poll(what: string, timeoutMs: number, check: () => Promise<string>, logs: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "not asked yet";
  for (let delayMs = 10; ; delayMs = Math.min(delayMs * 2, 200)) {
    try {
      last = await check();
      if (last === "") return;
    } catch (err) {
      if (err instanceof NodeExited) throw new Error(`${err.message}: ${logs()}`);
      last = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`${what} not ready within ${timeoutMs} ms (${last}): ${logs()}`);
    await new Promise((resolve) => setTimeout(resolve, delayMs)); // polling interval, not synchronization
  }
}

/**
 * Every running node healthy (with JetStream when asked), and when clustered: the meta leader
 * sees every other running node as a current peer, so an R3 stream can be placed at once.
 */
async function waitReady(states: NodeState[], jetstream: boolean, clustered: boolean, timeoutMs: number): Promise<void> {
  const running = () => states.filter((state) => state.child !== undefined);
  const logs = () => states.map((state) => `${state.name}: ${state.log.trim().split("\n").slice(-5).join(" | ")}`).join("; ");
  await poll(
    "nats-server",
    timeoutMs,
    async () => {
      for (const state of states) {
        if (state.crashed) throw new NodeExited(`nats-server ${state.name} exited`);
      }
      for (const state of running()) {
        const query = jetstream ? "?js-enabled-only=true" : "";
        const health = await fetch(`${monitor(state)}/healthz${query}`, { signal: AbortSignal.timeout(1000) });
        if (!health.ok) return `${state.name} healthz ${health.status}: ${(await health.text()).trim()}`;
      }
      return jetstream && clustered ? metaMissing(running()) : "";
    },
    logs,
  );
}

interface MetaCluster {
  leader?: string;
  /** Only on the leader: the other peers and whether they are caught up. */
  replicas?: Array<{ name: string; current: boolean }>;
}

/** /healthz of 2.9 may answer ok before the meta group has formed: ask the meta group itself. */
async function metaMissing(running: NodeState[]): Promise<string> {
  const metas = await Promise.all(
    running.map(async (state) => {
      const jsz = (await (await fetch(`${monitor(state)}/jsz`, { signal: AbortSignal.timeout(1000) })).json()) as {
        meta_cluster?: MetaCluster;
      };
      return { state, meta: jsz.meta_cluster ?? {} };
    }),
  );
  const leader = metas.find(({ state, meta }) => meta.leader === state.name);
  if (!leader) return "no meta leader";
  const lagging = metas.filter(({ state, meta }) => {
    if (state === leader.state) return false;
    return meta.leader !== leader.state.name || !leader.meta.replicas?.some((peer) => peer.name === state.name && peer.current);
  });
  return lagging.length === 0 ? "" : `not current in the meta group: ${lagging.map(({ state }) => state.name).join(", ")}`;
}

const monitor = (state: NodeState): string => `http://127.0.0.1:${state.monitorPort}`;

/** Distinct free TCP ports on 127.0.0.1, all held open until every one is known. */
async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<net.Server>((resolve, reject) => {
          const server = net.createServer();
          server.once("error", reject);
          server.listen(0, "127.0.0.1", () => resolve(server));
        }),
    ),
  );
  const ports = servers.map((server) => (server.address() as net.AddressInfo).port);
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  return ports;
}
