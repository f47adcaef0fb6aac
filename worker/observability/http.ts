// Loopback HTTP: /healthz (process alive), /readyz (serving RPC), /metrics (Prometheus text).
import { createServer, type Server } from "node:http";
import type { WorkerMetrics } from "./metrics.js";

export async function startHttp(address: string, metrics: WorkerMetrics, isReady: () => boolean): Promise<Server> {
  const [host, port] = splitHostPort(address);
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET") {
      res.writeHead(405).end();
    } else if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
    } else if (path === "/readyz") {
      const ready = isReady();
      res.writeHead(ready ? 200 : 503, { "content-type": "text/plain" }).end(ready ? "ready\n" : "not ready\n");
    } else if (path === "/metrics") {
      metrics.registry
        .metrics()
        .then((text) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text))
        .catch((err: Error) => res.writeHead(500).end(`${err.message}\n`));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}

function splitHostPort(address: string): [string, number] {
  const index = address.lastIndexOf(":");
  return [address.slice(0, index).replace(/^\[|\]$/g, ""), Number(address.slice(index + 1))];
}
