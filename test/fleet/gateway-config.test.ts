// pcr-gateway's options: the same rules as pcr-worker's for what both take; every bad one named.
import assert from "node:assert/strict";
import { test } from "node:test";
import { loadGatewayConfig } from "../../worker/fleet/gateway-config.js";

test("a gateway's options: NATS from a flag or PCR_NATS, secrets from the environment, the listener as a worker's", () => {
  const config = loadGatewayConfig(["--nats", "nats://a:4222, nats://b:4222", "--nats-replicas", "3", "--socket", "/tmp/g.sock"], {});
  assert.deepEqual(config.nats.servers, ["nats://a:4222", "nats://b:4222"]);
  assert.equal(config.nats.replicas, 3);
  assert.equal(config.socket, "/tmp/g.sock");
  const fromEnv = loadGatewayConfig([], { PCR_NATS: "nats://c:4222", PCR_NATS_TOKEN: "t0ken" });
  assert.deepEqual(fromEnv.nats.servers, ["nats://c:4222"]);
  assert.equal(fromEnv.nats.token, "t0ken");
  assert.equal(config.forgetLostAfterMs, 24 * 3600_000, "a lost host is forgotten after a day by default");
  assert.equal(loadGatewayConfig(["--nats", "nats://a:1", "--forget-lost-after-ms", "0"], {}).forgetLostAfterMs, 0, "0: never");
  const short = ["--nats", "nats://a:1", "--lost-after-ms", "1000", "--forget-lost-after-ms", "2500"];
  assert.equal(loadGatewayConfig(short, {}).forgetLostAfterMs, 2500);
});

test("bad gateway options are refused, each named", () => {
  const cases: [string[], RegExp][] = [
    [[], /--nats is required/],
    [["--nats", "not a url"], /--nats: must be NATS URLs/],
    [["--nats", "nats://a:1", "--nats-user", "u"], /--nats-user and --nats-pass go together/],
    [["--nats", "nats://a:1", "--nats-cert", "c.pem"], /--nats-cert and --nats-key go together/],
    [["--nats", "nats://a:1", "--nats-replicas", "2"], /--nats-replicas/],
    [["--nats", "nats://a:1", "--tcp", "0.0.0.0:7000"], /refusing to serve unauthenticated TCP/],
    [["--nats", "nats://a:1", "--tcp", "no-port"], /--tcp: must be host:port/],
    [["--nats", "nats://a:1", "--call-timeout-ms", "5"], /--call-timeout-ms/],
    [["--nats", "nats://a:1", "--log-level", "loud"], /--log-level/],
    [["--nats", "nats://a:1", "--no-such-flag"], /invalid arguments/],
    [["--nats", "nats://a:1", "--forget-lost-after-ms", "-1"], /--forget-lost-after-ms/],
    [["--nats", "nats://a:1", "--forget-lost-after-ms", "1.5"], /--forget-lost-after-ms/],
    [
      ["--nats", "nats://a:1", "--forget-lost-after-ms", "5000"],
      /--forget-lost-after-ms \(5000\) must be 0 \(never\) or above --lost-after-ms/,
    ],
    [["--nats", "nats://a:1", "--forget-lost-after-ms", "x"], /--forget-lost-after-ms/],
  ];
  for (const [argv, pattern] of cases) assert.throws(() => loadGatewayConfig(argv, {}), pattern, argv.join(" "));
});

test("every gateway option has its PCR_* variable, and a flag wins over it", () => {
  const env = {
    PCR_SOCKET: "/run/pcr-gateway/gateway.sock",
    PCR_TCP: "0.0.0.0:7000",
    PCR_TLS_CERT: "/c.pem",
    PCR_TLS_KEY: "/k.pem",
    PCR_TLS_CLIENT_CA: "/ca.pem",
    PCR_NATS: "nats://a:4222",
    PCR_NATS_CREDS: "/n.creds",
    PCR_NATS_REPLICAS: "3",
    PCR_LOG_LEVEL: "debug",
    PCR_CALL_TIMEOUT_MS: "60000",
    PCR_LOST_AFTER_MS: "20000",
  };
  const config = loadGatewayConfig([], env);
  assert.equal(config.socket, "/run/pcr-gateway/gateway.sock");
  assert.equal(config.tcp, "0.0.0.0:7000");
  assert.deepEqual([config.tlsCert, config.tlsKey, config.tlsClientCa], ["/c.pem", "/k.pem", "/ca.pem"]);
  assert.equal(config.nats.replicas, 3);
  assert.equal(config.logLevel, "debug");
  assert.deepEqual([config.callTimeoutMs, config.lostAfterMs], [60_000, 20_000]);
  const flagsWin = loadGatewayConfig(["--socket", "/tmp/g.sock", "--nats-replicas", "1"], env);
  assert.equal(flagsWin.socket, "/tmp/g.sock");
  assert.equal(flagsWin.nats.replicas, 1);
  assert.throws(() => loadGatewayConfig([], { ...env, PCR_NATS_REPLICAS: "three" }), /--nats-replicas/);
});
