// Runs a Worker RPC server over a FakeWorker in its own process (fuzz test, interop, benchmarks).
// Usage: serve-fake <socketPath> [listCount] [tcp host:port]; prints "ready" then serves until killed.
// PCR_TEST_LIMITS and PCR_TEST_ADMISSION (JSON) override the server's limits.
import pino from "pino";
import { RpcServer } from "../../worker/rpc/server.js";
import { workerDispatcher } from "../../worker/rpc/worker-service.js";
import { FakeWorker, sampleVm } from "./fake-worker.js";

const [socketPath, listCount = "2000", tcp] = process.argv.slice(2);
const fake = new FakeWorker();
fake.vms = Array.from({ length: Number(listCount) }, (_, i) => sampleVm(i));
const server = await RpcServer.listen({
  dispatcher: workerDispatcher(fake),
  logger: pino({ level: process.env.LOG_LEVEL ?? "silent" }),
  socketPath,
  tcp,
  // JSON objects in the environment, for tests of the server's limits.
  limits: process.env.PCR_TEST_LIMITS ? JSON.parse(process.env.PCR_TEST_LIMITS) : undefined,
  admission: process.env.PCR_TEST_ADMISSION ? JSON.parse(process.env.PCR_TEST_ADMISSION) : undefined,
});
process.on("message", (message) => {
  if (message === "created")
    process.send?.(JSON.stringify(fake.created, (_k, v) => (typeof v === "bigint" ? v.toString() : v instanceof Uint8Array ? [...v] : v)));
  if (message === "rss") process.send?.(String(process.memoryUsage().rss));
});
process.on("SIGTERM", () => void server.close().then(() => process.exit(0)));
// The TCP port too, when one was asked for (port 0 picks a free one).
console.log(server.tcpAddress ? `ready tcp ${server.tcpAddress.port}` : "ready");
