// A fleet under the per-host NATS permissions of docs/fleet.md "Securing NATS", on a real
// nats-server whose config is what fleetAuthorization() writes: a worker and a gateway do all their
// work (join, heartbeats, a create through the gateway, events), and host h1's NATS user cannot
// take host h2's calls, write h2's pcr_hosts entry, publish h2's events or read others' replies.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { execa, type ResultPromise } from "execa";
import { fleetAuthorization, workerInboxPrefix } from "../../worker/fleet/nats-authorization.js";
import { parseFleetEvent } from "../../worker/fleet/records.js";
import { connectWorker } from "../../worker/rpc/worker-client.js";
import { waitForOutput } from "../helpers/child-output.js";
import { type NatsCluster, startNats } from "../helpers/nats.js";
import { waitFor } from "../helpers/vm.js";
import { GATEWAY_BIN, REPO_ROOT, testGuest, WORKER_BIN } from "../helpers/repo.js";

const guest = testGuest();
/** The example of docs/fleet.md, verbatim: the doc shows what this test runs. */
const DOC_EXAMPLE = {
  hosts: [
    { hostId: "h1", password: "h1-secret" },
    { hostId: "h2", password: "h2-secret" },
  ],
  gateways: [{ user: "gateway", password: "gateway-secret" }],
};
let nats: NatsCluster & { url: string };
let dir: string;
/** The gateway's NATS user: reads what the fleet wrote. */
let admin: NatsConnection;
const cleanups: Array<() => Promise<unknown>> = [];

before(async () => {
  nats = await startNats({ jetstream: true, extraConfig: [fleetAuthorization(DOC_EXAMPLE)] });
  dir = await mkdtemp(join(tmpdir(), "pcr-nats-auth-"));
  admin = await connect({ servers: nats.url, user: "gateway", pass: "gateway-secret" });
});
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  await admin?.close();
  await nats?.stop();
  // A worker outside a mount namespace leaves its secrets tmpfs mounted when it exits.
  for (const hostId of DOC_EXAMPLE.hosts.map((host) => host.hostId)) {
    if (dir) await execa("umount", [join(dir, hostId, "run", "secrets")], { reject: false });
  }
  if (dir) await rm(dir, { recursive: true, force: true });
});

interface Child {
  logs(): string;
}

function spawnLogged(bin: string, args: string[]): { child: ResultPromise; logs: () => string } {
  let text = "";
  const child: ResultPromise = execa(process.execPath, [bin, ...args], { reject: false, buffer: false, stdin: "ignore" });
  child.stderr!.on("data", (chunk: Buffer) => (text += chunk.toString()));
  cleanups.push(async () => {
    child.kill("SIGKILL");
    await child;
  });
  return { child, logs: () => text };
}

async function startGateway(socket: string): Promise<Child> {
  const { child, logs } = spawnLogged(GATEWAY_BIN, [
    "--nats",
    nats.url,
    "--nats-user",
    "gateway",
    "--nats-pass",
    "gateway-secret",
    "--socket",
    socket,
  ]);
  await waitForOutput(child, "listening on", "gateway", 20_000, logs);
  return { logs };
}

/** A worker joined as `hostId` with its own NATS user, no namespace (as member.test.ts starts them). */
async function startWorker(hostId: string, password: string): Promise<Child & { stop(): Promise<string> }> {
  const run = join(dir, hostId, "run");
  const args = ["--socket", join(run, "worker.sock"), "--state-dir", join(dir, hostId, "state"), "--runtime-dir", run];
  args.push("--vmm", "fake", "--no-cage", "--no-network", "--http-listen", "off", "--stop-grace-ms", "0");
  args.push("--nats", nats.url, "--nats-user", hostId, "--nats-pass", password, "--host-id", hostId, "--heartbeat-ms", "300");
  const { child, logs } = spawnLogged(WORKER_BIN, args);
  await waitForOutput(child, "joined fleet at", "worker", 20_000, logs);
  return {
    logs,
    async stop() {
      child.kill("SIGTERM");
      const result = await child;
      return `exit code ${result.exitCode}`;
    },
  };
}

/** Polls `probe` every 50 ms until it returns something other than undefined, or fails at the deadline. */
const until = <T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> => waitFor(what, timeoutMs, probe, 50);

const PERMISSION = /permissions violation/i;

test("docs/fleet.md shows the authorization this test runs", () => {
  const doc = readFileSync(join(REPO_ROOT, "docs", "fleet.md"), "utf8");
  assert.ok(doc.includes(fleetAuthorization(DOC_EXAMPLE)), "regenerate the example of Securing NATS from fleetAuthorization()");
});

test("under per-host permissions a worker joins, heartbeats, answers a create through the gateway and publishes its events", {
  skip: "skip" in guest ? guest.skip : false,
  timeout: 30_000,
}, async () => {
  if ("skip" in guest) return;
  // The gateway first: it creates the buckets and stream, which a worker may not.
  const gatewaySocket = join(dir, "gateway.sock");
  const gateway = await startGateway(gatewaySocket);
  const worker = await startWorker("h1", "h1-secret");
  const hosts = await new Kvm(admin).open("pcr_hosts");
  const first = await until("h1 in pcr_hosts", async () => (await hosts.get("h1"))?.revision);
  await until("a later heartbeat", async () => (((await hosts.get("h1"))?.revision ?? 0) > first ? true : undefined));

  const client = await connectWorker(gatewaySocket);
  cleanups.push(async () => client.close());
  // The key makes the retry safe while the gateway's watch has not brought h1 yet.
  const id = await until("a create on h1 through the gateway", () =>
    client.createVm(guest.input, { placement: { host: "h1" }, idempotencyKey: "auth-1" }).catch(() => undefined),
  );
  const vm = await client.getVm(id);
  assert.equal(vm.host, "h1");
  assert.equal(vm.status, "running");
  const vms = await new Kvm(admin).open("pcr_vms");
  await until("the VM in pcr_vms", async () => ((await vms.get(id))?.operation === "PUT" ? true : undefined));

  const jsm = await jetstreamManager(admin);
  const statuses = await until("creating then running in PCR_EVENTS", async () => {
    const info = await jsm.streams.info("PCR_EVENTS");
    const seen: string[] = [];
    for (let seq = info.state.first_seq; info.state.messages > 0 && seq <= info.state.last_seq; seq++) {
      const message = await jsm.streams.getMessage("PCR_EVENTS", { seq });
      if (!message) continue;
      const event = parseFleetEvent(message.data);
      if (message.subject === "pcr.events.h1" && event.vmId === id) seen.push(event.status);
    }
    return seen.includes("running") ? seen : undefined;
  });
  assert.deepEqual(statuses.slice(0, 2), ["creating", "running"]);

  await client.deleteVm(id);
  await until("the VM gone from pcr_vms", async () => ((await vms.get(id))?.operation === "PUT" ? undefined : true));
  // A clean shutdown with no VM: it deletes its own pcr_hosts entry (a permitted write too).
  assert.equal(await worker.stop(), "exit code 0", worker.logs());
  await until("h1 gone from pcr_hosts", async () => ((await hosts.get("h1"))?.operation === "PUT" ? undefined : true), 5_000);
  for (const [name, logs] of [
    ["worker", worker.logs()],
    ["gateway", gateway.logs()],
  ] as const) {
    assert.doesNotMatch(logs, PERMISSION, `${name} hit a permission it lacks:\n${logs}`);
  }
});

test("host h1's NATS user cannot take h2's calls, write h2's heartbeat, publish h2's events or read others' replies", {
  timeout: 20_000,
}, async () => {
  // The gateway of the test before made the buckets; made here too when run alone.
  await new Kvm(admin).create("pcr_hosts");
  await jetstreamManager(admin).then((jsm) => jsm.streams.add({ name: "PCR_EVENTS", subjects: ["pcr.events.>"] }).catch(() => undefined));
  const h1 = await connect({ servers: nats.url, user: "h1", pass: "h1-secret", inboxPrefix: workerInboxPrefix("h1") });
  cleanups.push(() => h1.close());

  const refusedSubscription = (subject: string) =>
    new Promise<Error>((resolve) => {
      h1.subscribe(subject, {
        callback: (err) => {
          if (err) resolve(err);
        },
      });
    });
  assert.match((await refusedSubscription("pcr.host.h2.call")).message, PERMISSION);
  assert.match((await refusedSubscription("_INBOX.>")).message, PERMISSION, "another host's or a gateway's replies");

  // Bound as the worker binds it (create finds it and reads its config: direct gets).
  const hosts = await new Kvm(h1).create("pcr_hosts");
  await assert.rejects(hosts.put("h2", new TextEncoder().encode("{}")), PERMISSION);
  // The same client may do what h1 does: read its own key (absent here, or its last heartbeat).
  await hosts.get("h1");
  await assert.rejects(jetstream(h1).publish("pcr.events.h2", new TextEncoder().encode("{}")), PERMISSION);
  // Nothing of h1's user may change the stream or buckets themselves.
  await assert.rejects(
    jetstreamManager(h1).then((jsm) => jsm.streams.delete("PCR_EVENTS")),
    PERMISSION,
  );
});
