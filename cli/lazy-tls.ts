// Stands in for node:tls in the bundled CLI (package.json "build"): the RPC client imports it for
// tcp:// workers, and loading it up front cost every command ~8 ms; it now loads on first connect.
import { createRequire } from "node:module";
import type * as Tls from "node:tls";

const require = createRequire(import.meta.url);

export function connect(...args: Parameters<typeof Tls.connect>): Tls.TLSSocket {
  return (require("node:tls") as typeof Tls).connect(...args);
}

export default { connect };
