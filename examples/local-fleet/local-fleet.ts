// A fleet on one machine, to try it (scripts/start-fleet runs this): a NATS server with JetStream
// on a bridge of its own, N pcr-worker hosts each in a network namespace on that bridge, and one
// pcr-gateway. It prints where the gateway listens, then runs until Ctrl-C, and removes
// everything it made on the way out.
import { parseArgs } from "node:util";
import { startFleet } from "../../test/helpers/fleet.js";

const { values } = parseArgs({
  options: {
    hosts: { type: "string", default: "3" },
    "nats-nodes": { type: "string", default: "1" },
    fake: { type: "boolean", default: false },
  },
});
const count = Number(values.hosts);
const natsNodes = values["nats-nodes"] === "3" ? 3 : 1;
if (!Number.isInteger(count) || count < 1 || count > 16) {
  console.error("start-fleet: --hosts must be 1..16");
  process.exit(2);
}

const fleet = await startFleet({ natsNodes, heartbeatMs: 2000 });
let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  console.log("\nstart-fleet: stopping the fleet");
  await fleet.destroy();
  process.exit(0);
};
process.on("SIGINT", () => void stop());
process.on("SIGTERM", () => void stop());
try {
  for (let i = 1; i <= count; i++) {
    // Real VMMs by default; --fake for many cheap hosts (VMs that are not real).
    const host = await fleet.addHost(`host${i}`, values.fake ? ["--vmm", "fake", "--no-cage"] : []);
    console.log(`start-fleet: ${host.id} in namespace ${host.worker.netns} (${host.link.address}), socket ${host.worker.socket}`);
  }
  const gateway = await fleet.addGateway();
  console.log(`start-fleet: NATS at ${fleet.nats.urls.join(",")}`);
  console.log(`start-fleet: gateway at ${gateway.socket}`);
  console.log("start-fleet: try it:");
  console.log(`  node dist/cli/pcr-worker-test.cjs --worker ${gateway.socket} create-vm --spec-file .cache/test-guest/spec.json`);
  console.log(`  node dist/cli/pcr-worker-test.cjs --worker ${gateway.socket} list-vms`);
  console.log("start-fleet: Ctrl-C stops and removes everything");
} catch (err) {
  console.error(`start-fleet: ${(err as Error).message}`);
  await fleet.destroy();
  process.exit(1);
}
