// A fleet on one machine for tests: NATS (one node or three) on a bridge of the test's own, worker
// hosts in network namespaces attached to it, and pcr-gateway processes. Everything it starts is
// stopped and removed by `destroy()`, also after a failure.
import { execa, type ResultPromise } from "execa";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type WorkerClient, connectWorker } from "../../worker/rpc/worker-client.js";
import { type FleetLink, type FleetNet, createFleetNet } from "./fleet-net.js";
import { type NatsCluster, startNats, startNatsCluster } from "./nats.js";
import { waitForOutput } from "./child-output.js";
import { createNetns, deleteNetns } from "./netns.js";
import { GATEWAY_BIN } from "./repo.js";
import { type WorkerProcess, destroyWorker, startWorker } from "./worker-process.js";

export interface FleetHost {
  id: string;
  worker: WorkerProcess;
  link: FleetLink;
  /** The worker's own flags, for a restart. */
  args: string[];
}

export interface GatewayProcess {
  socket: string;
  pid: number;
  client(): Promise<WorkerClient>;
  logs(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export interface TestFleet {
  nats: NatsCluster;
  net: FleetNet;
  hosts: FleetHost[];
  gateways: GatewayProcess[];
  addHost(id: string, extraArgs?: string[]): Promise<FleetHost>;
  /** SIGKILLs the host's worker (its VMMs live on, as on a crashed host). */
  killHost(host: FleetHost): Promise<void>;
  /** Starts the host's worker again over the same state, namespace and link. */
  restartHost(host: FleetHost): Promise<void>;
  addGateway(): Promise<GatewayProcess>;
  destroy(): Promise<void>;
}

export async function startFleet(options: { natsNodes?: 1 | 3; heartbeatMs?: number } = {}): Promise<TestFleet> {
  const net = await createFleetNet();
  const dir = await mkdtemp(join(tmpdir(), "pcr-fleet-"));
  let nats: NatsCluster;
  try {
    nats =
      options.natsNodes === 3 ? await startNatsCluster(3, { host: net.address }) : await startNats({ jetstream: true, host: net.address });
  } catch (err) {
    await net.destroy();
    throw err;
  }
  const natsUrls = nats.urls.join(",");
  const replicas = options.natsNodes === 3 ? "3" : "1";
  const hosts: FleetHost[] = [];
  const gateways: GatewayProcess[] = [];
  const netnses: string[] = [];

  const fleet: TestFleet = {
    nats,
    net,
    hosts,
    gateways,
    async addHost(id, extraArgs = []) {
      const netns = await createNetns("pcr-fh");
      netnses.push(netns);
      const link = await net.attach(netns);
      const args = [
        "--nats",
        natsUrls,
        "--nats-replicas",
        replicas,
        "--host-id",
        id,
        "--heartbeat-ms",
        String(options.heartbeatMs ?? 500),
        ...extraArgs,
      ];
      const stateDir = join(dir, id, "state");
      const runtimeDir = join(dir, id, "run");
      const worker = await joined(await startWorker({ extraArgs: args, reuse: { stateDir, runtimeDir, netns } }));
      const host = { id, worker, link, args };
      hosts.push(host);
      return host;
    },
    async killHost(host) {
      await host.worker.stop("SIGKILL");
    },
    async restartHost(host) {
      const { stateDir, runtimeDir, netns } = host.worker;
      host.worker = await joined(await startWorker({ extraArgs: host.args, reuse: { stateDir, runtimeDir, netns } }));
    },
    async addGateway() {
      const socket = join(dir, `gateway-${gateways.length}.sock`);
      const gateway = await startGateway(socket, natsUrls, replicas);
      gateways.push(gateway);
      return gateway;
    },
    async destroy() {
      for (const gateway of gateways) await gateway.stop("SIGKILL").catch(() => undefined);
      for (const host of hosts) await destroyWorker(host.worker).catch(() => undefined);
      for (const netns of netnses) await deleteNetns(netns);
      await nats.stop();
      await net.destroy();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return fleet;
}

/** A worker listens before it joins its fleet (its first heartbeat is in by then). */
async function joined(worker: WorkerProcess): Promise<WorkerProcess> {
  const deadline = Date.now() + 30_000;
  while (!worker.logs().includes('"joined the fleet"')) {
    if (Date.now() > deadline) throw new Error(`worker did not join its fleet in 30 s; logs:\n${worker.logs()}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return worker;
}

async function startGateway(socket: string, natsUrls: string, replicas: string): Promise<GatewayProcess> {
  let logText = "";
  const child: ResultPromise = execa(process.execPath, [GATEWAY_BIN, "--nats", natsUrls, "--nats-replicas", replicas, "--socket", socket], {
    reject: false,
    buffer: false,
    stdin: "ignore",
  });
  child.stderr!.on("data", (chunk: Buffer) => {
    logText += chunk.toString();
  });
  await waitForOutput(child, "listening on", "gateway", 30_000, () => logText).catch(async (err) => {
    child.kill("SIGKILL");
    await child.catch(() => undefined);
    throw err;
  });
  const clients: WorkerClient[] = [];
  return {
    socket,
    pid: child.pid!,
    async client() {
      const client = await connectWorker(socket);
      clients.push(client);
      return client;
    },
    logs: () => logText,
    async stop(signal = "SIGTERM") {
      for (const client of clients) client.close();
      child.kill(signal);
      await child;
    },
  };
}
