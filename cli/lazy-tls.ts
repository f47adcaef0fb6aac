// Stands in for node:tls in the bundled CLI (scripts/bundle-cli): the RPC client imports it for
// tcp:// workers, and loading it up front cost every command ~8 ms; it now loads on first connect.
// The bundle is CommonJS, so its module object loads node:tls (a `require` or `import` esbuild
// saw would be aliased back to this file).
import type * as Tls from "node:tls";

export function connect(...args: Parameters<typeof Tls.connect>): Tls.TLSSocket {
  return (module.require("node:tls") as typeof Tls).connect(...args);
}

export default { connect };
