// The worker's configuration is defined once (worker/config.ts): every key has a flag, an
// environment variable and a file key, they resolve flags > env > file > defaults, and every bad
// value is named at start-up.
import assert from "node:assert/strict";
import { execa } from "execa";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { type ConfigKey, configKeys, envName, flagName, loadConfig, metaOf, parseLabels } from "../worker/config.js";
import { WORKER_BIN } from "./helpers/repo.js";

const MIB = 1024 ** 2;
const scratch = mkdtempSync(join(tmpdir(), "pcr-config-"));
after(() => rmSync(scratch, { recursive: true, force: true }));

let fileCount = 0;
function configFile(contents: unknown): string {
  const path = join(scratch, `config-${fileCount++}.json`);
  writeFileSync(path, typeof contents === "string" ? contents : JSON.stringify(contents));
  return path;
}

/** The error loadConfig throws, as text (it must throw). */
function problemsOf(argv: string[], env: NodeJS.ProcessEnv = {}): string {
  try {
    loadConfig(argv, env);
  } catch (err) {
    return (err as Error).message;
  }
  assert.fail(`loadConfig accepted ${argv.join(" ")} ${JSON.stringify(env)}`);
}

/**
 * A value other than the default for every key, as the words a flag or variable takes; `with` are
 * flags the key needs beside it (TLS files go together). Typed over ConfigKey, so a new key
 * does not compile until it has a sample here.
 */
const samples: Record<ConfigKey, { words: string[]; with?: string[] }> = {
  socket: { words: ["/tmp/x.sock"] },
  tcp: { words: ["127.0.0.1:7000"] },
  tlsCert: { words: ["cert.pem"], with: ["--tcp", "0.0.0.0:7000", "--tls-key", "k", "--tls-client-ca", "ca"] },
  tlsKey: { words: ["key.pem"], with: ["--tcp", "0.0.0.0:7000", "--tls-cert", "c", "--tls-client-ca", "ca"] },
  tlsClientCa: { words: ["ca.pem"], with: ["--tcp", "0.0.0.0:7000", "--tls-cert", "c", "--tls-key", "k"] },
  stateDir: { words: ["/tmp/state"] },
  runtimeDir: { words: ["/tmp/run"] },
  vmm: { words: ["qemu"] },
  accel: { words: ["tcg"] },
  qemuBinary: { words: ["/opt/qemu"] },
  cloudHypervisorBinary: { words: ["/opt/ch"] },
  virtiofsdBinary: { words: ["/opt/virtiofsd"] },
  cacheUrl: { words: ["https://cache.example.org"] },
  trustedKeys: { words: ["a:AAAA", "b:BBBB"] },
  pools: { words: ["guest.json:2", "/a:b/other.json:0+disk"] },
  network: { words: ["false"] },
  cage: { words: ["false"] },
  vmmUidRange: { words: ["50000-50999"] },
  vmmMemoryOverheadBytes: { words: ["1073741824"] },
  vmmPidsMax: { words: ["512"] },
  vmmNofile: { words: ["8192"] },
  bridge: { words: ["br9"] },
  subnet: { words: ["10.9.0.0/24"] },
  resolver: { words: ["10.0.0.53"] },
  uplink: { words: ["eth1"] },
  hostAllowedPorts: { words: ["8080", "9090"] },
  denyCidrs: { words: ["10.0.0.0/8", "192.168.1.1"] },
  addressCooldownMs: { words: ["0"] },
  secretsTmpfsBytes: { words: [String(8 * MIB)] },
  maxVms: { words: ["3"] },
  maxCpuPerVm: { words: ["97"] },
  maxTotalCpu: { words: ["991"] },
  minMemoryPerVmBytes: { words: [String(128 * MIB)] },
  maxMemoryPerVmBytes: { words: [String(1537 * MIB)] },
  maxTotalMemoryBytes: { words: [String(1539 * MIB)] },
  maxTotalDiskBytes: { words: [String(5 * 1024 * MIB)] },
  maxAllowedDomains: { words: ["17"] },
  maxTtlSeconds: { words: ["60"] },
  bootTimeoutMs: { words: ["1234"] },
  stopGraceMs: { words: ["0"] },
  consoleMaxBytes: { words: [String(MIB)] },
  maxConsoleReadBytes: { words: ["4096"] },
  counterIntervalMs: { words: ["500"] },
  maxCallsPerConnection: { words: ["7"] },
  maxConnections: { words: ["11"] },
  maxConnectionsPerPeer: { words: ["5"] },
  maxMessageBytes: { words: [String(MIB)] },
  maxPendingBytes: { words: [String(2 * MIB)] },
  frameTimeoutMs: { words: ["0"] },
  idleTimeoutMs: { words: ["1000"] },
  callDeadlineMs: { words: ["2000"] },
  stopVmsOnExit: { words: ["true"] },
  httpListen: { words: ["off"] },
  auditLog: { words: ["/tmp/audit.log"] },
  nats: { words: ["nats://a:4222,nats://b:4222"] },
  hostId: { words: ["host_7-b"] },
  labels: { words: ["zone=eu", "gpu="] },
  natsCreds: { words: ["/etc/pcr/nats.creds"] },
  natsUser: { words: ["worker"], with: ["--nats-pass", "p"] },
  natsPass: { words: ["secret"], with: ["--nats-user", "u"] },
  natsToken: { words: ["tok"] },
  natsCa: { words: ["ca.pem"] },
  natsCert: { words: ["cert.pem"], with: ["--nats-key", "k"] },
  natsKey: { words: ["key.pem"], with: ["--nats-cert", "c"] },
  natsReplicas: { words: ["3"] },
  heartbeatMs: { words: ["500"] },
  logLevel: { words: ["debug"] },
};

test("every key has its own flag and PCR_ variable, and each of flag, variable and file sets it", () => {
  assert.deepEqual(Object.keys(samples).sort(), [...configKeys].sort(), "samples cover exactly the schema's keys");
  const flags = configKeys.map(flagName);
  const envs = configKeys.map(envName);
  assert.equal(new Set(flags).size, configKeys.length, "flags are unique");
  assert.equal(new Set(envs).size, configKeys.length, "variables are unique");
  const defaults = loadConfig([], {}).config;
  for (const key of configKeys) {
    const { words, with: beside = [] } = samples[key];
    assert.match(envName(key), /^PCR_[A-Z0-9_]+$/);
    assert.ok(metaOf(key).help.length > 0, `${key} has help text`);
    const viaFlag = loadConfig([...beside, ...words.map((word) => `--${flagName(key)}=${word}`)], {}).config[key];
    const viaEnv = loadConfig(beside, { [envName(key)]: words.join(",") }).config[key];
    const viaFile = loadConfig([...beside, "--config", configFile({ [key]: viaFlag })], {}).config[key];
    assert.notDeepEqual(viaFlag, defaults[key], `--${flagName(key)} changed ${key}`);
    assert.deepEqual(viaEnv, viaFlag, `${envName(key)} gives what --${flagName(key)} gives`);
    assert.deepEqual(viaFile, viaFlag, `${key} in the file gives what --${flagName(key)} gives`);
  }
});

test("the flags keep their names and defaults; new limits default to the values main.ts had", () => {
  const { config } = loadConfig([], {});
  assert.equal(config.socket, "/run/procurator/worker.sock");
  assert.equal(config.stateDir, "/var/lib/procurator");
  assert.equal(config.vmm, "auto");
  assert.equal(config.network, true);
  assert.equal(config.subnet, "10.213.0.0/16");
  assert.equal(config.maxVms, 64);
  assert.equal(config.httpListen, "127.0.0.1:9464");
  assert.equal(config.minMemoryPerVmBytes, 64 * MIB);
  assert.equal(config.maxAllowedDomains, 256);
  assert.equal(config.maxConsoleReadBytes, MIB);
  assert.equal(config.maxTotalDiskBytes, undefined, "computed from the state dir's free space at start");
  // Old spellings still work: --cache, repeated --trusted-key, --no-network, comma or space lists.
  const parsed = loadConfig(["--cache", "file:///c", "--trusted-key", "a", "--trusted-key", "b", "--no-network"], {}).config;
  assert.equal(parsed.cacheUrl, "file:///c");
  assert.deepEqual(parsed.trustedKeys, ["a", "b"]);
  assert.equal(parsed.network, false);
  assert.deepEqual(loadConfig([], { PCR_TRUSTED_KEYS: "a b,c" }).config.trustedKeys, ["a", "b", "c"]);
  assert.deepEqual(loadConfig([], { PCR_HOST_ALLOWED_PORTS: "22 8080" }).config.hostAllowedPorts, [22, 8080]);
});

test("precedence: flags > environment > JSON file > defaults", () => {
  const file = configFile({ maxVms: 3, bootTimeoutMs: 3000, stopGraceMs: 300 });
  const env = { PCR_MAX_VMS: "2", PCR_BOOT_TIMEOUT_MS: "2000" };
  const { config } = loadConfig(["--config", file, "--max-vms", "1"], env);
  assert.equal(config.maxVms, 1, "flag over env and file");
  assert.equal(config.bootTimeoutMs, 2000, "env over file");
  assert.equal(config.stopGraceMs, 300, "file over default");
  assert.equal(config.counterIntervalMs, 2000, "default");
  // The file is found through PCR_CONFIG too, and --config wins over it.
  assert.equal(loadConfig([], { PCR_CONFIG: file }).config.maxVms, 3);
  assert.equal(loadConfig(["--config", configFile({ maxVms: 4 })], { PCR_CONFIG: file }).config.maxVms, 4);
  // A boolean switched off at one layer and on at a higher one.
  assert.equal(loadConfig(["--network"], { PCR_NETWORK: "0" }).config.network, true);
  assert.equal(loadConfig([], { PCR_NETWORK: "off" }).config.network, false);
  // An empty variable counts as unset.
  assert.equal(loadConfig([], { PCR_MAX_VMS: "" }).config.maxVms, 64);
});

test("a bad configuration names every problem and where each came from", () => {
  const file = configFile({ stopGraceMs: -1, maxVmz: 3 });
  const message = problemsOf(
    [
      "--config",
      file,
      "--max-vms",
      "0",
      "--vmm",
      "firecracker",
      "--subnet",
      "10.0.0.0/31",
      "--deny-cidr",
      "10.0.0.0/8",
      "--deny-cidr",
      "nope",
      "--tcp",
      "0.0.0.0:7000",
    ],
    { PCR_BOOT_TIMEOUT_MS: "soon", PCR_NETWORK: "maybe", PCR_RESOLVER: "dns.example.org", PCR_HTTP_LISTEN: "9464" },
  );
  const expected = [
    /^invalid configuration:/,
    /config file .*config-\d+\.json: unknown key "maxVmz"/,
    /stopGraceMs in .*config-\d+\.json: .*>=0.*\(got -1\)/,
    /--max-vms: .*>0 \(got 0\)/,
    /--vmm: .*"auto"\|"qemu"\|"cloud-hypervisor"\|"fake" \(got "firecracker"\)/,
    /--subnet: must be an IPv4 CIDR of \/30 or larger.*\(got "10\.0\.0\.0\/31"\)/,
    /--deny-cidr item 1: must be an IPv4 address or CIDR \(got "nope"\)/,
    /PCR_BOOT_TIMEOUT_MS: .*expected number.*\(got "soon"\)/,
    /PCR_NETWORK: .*expected boolean.*\(got "maybe"\)/,
    /PCR_RESOLVER: must be an IPv4 address \(got "dns\.example\.org"\)/,
    /PCR_HTTP_LISTEN: must be host:port or "off"/,
    /refusing to serve unauthenticated TCP on 0\.0\.0\.0:7000/,
  ];
  for (const pattern of expected) assert.match(message, new RegExp(pattern.source, "m"));
  assert.equal(message.split("\n").length, expected.length, `one line per problem:\n${message}`);
});

test("checks across keys: TLS goes with TCP, the memory bounds must leave room for a VM", () => {
  assert.match(problemsOf(["--tls-cert", "c"]), /mutual TLS needs all of --tls-cert, --tls-key and --tls-client-ca/);
  assert.match(problemsOf(["--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca"]), /--tls-\* options given without --tcp/);
  assert.equal(loadConfig(["--tcp", "[::1]:7000"], {}).config.tcp, "[::1]:7000");
  assert.match(
    problemsOf(["--min-memory-per-vm-bytes", String(512 * MIB), "--max-memory-per-vm-bytes", String(256 * MIB)]),
    /--min-memory-per-vm-bytes 536870912 is above --max-memory-per-vm-bytes 268435456/,
  );
});

test("subnets that cannot hold a gateway and a guest are refused", () => {
  for (const subnet of ["10.0.0.0/31", "10.0.0.1/32", "10.213.0.0", "banana", "300.0.0.0/16", "fd00::/64"]) {
    assert.match(problemsOf(["--subnet", subnet]), /--subnet: must be an IPv4 CIDR/, subnet);
  }
  assert.equal(loadConfig(["--subnet", "192.168.50.0/30"], {}).config.subnet, "192.168.50.0/30");
});

test("a bad file or argument is reported, not thrown as a stack", () => {
  assert.match(problemsOf(["--config", join(scratch, "missing.json")]), /config file .*missing\.json: ENOENT/);
  assert.match(problemsOf(["--config", configFile("{not json")]), /config file .*: .*JSON/);
  assert.match(problemsOf(["--config", configFile([1, 2])]), /must be a JSON object/);
  assert.match(problemsOf(["--max-vmz", "3"]), /invalid arguments: Unknown arguments?: max-vmz/);
});

test("pcr-worker stops at start-up on a bad --subnet, naming it, before touching anything", async () => {
  const dir = mkdtempSync(join(tmpdir(), "pcr-config-start-"));
  try {
    const args = [
      "--subnet",
      "10.0.0.0/31",
      "--max-vms",
      "0",
      "--socket",
      join(dir, "w.sock"),
      "--state-dir",
      join(dir, "state"),
      "--runtime-dir",
      join(dir, "run"),
    ];
    const result = await execa(process.execPath, [WORKER_BIN, ...args], { reject: false, timeout: 20_000 });
    assert.equal(result.exitCode, 2, result.stderr);
    assert.match(result.stderr, /--subnet: must be an IPv4 CIDR of \/30 or larger/);
    assert.match(result.stderr, /--max-vms: /, "and the other problem beside it");
    assert.deepEqual(readdirSync(dir), [], "nothing was created");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("pcr-worker --help lists every flag with its variable and help text", async () => {
  const result = await execa(process.execPath, [WORKER_BIN, "--help"], { reject: false, timeout: 20_000 });
  assert.equal(result.exitCode, 0, result.stderr);
  // yargs wraps long lines; compare with whitespace folded.
  const help = result.stdout.replace(/\s+/g, " ");
  for (const flag of ["--config", "--check", "--help", "--cache"]) assert.ok(help.includes(flag), flag);
  for (const key of configKeys) {
    assert.match(help, new RegExp(`--${flagName(key)}[ ,]`), `--${flagName(key)} listed`);
    assert.ok(help.includes(`[env: ${envName(key)}]`), `${envName(key)} listed`);
    assert.ok(help.includes(metaOf(key).help), `help text of ${key}`);
  }
  assert.ok(help.includes("[default: 10.213.0.0/16]"));
  assert.ok(help.includes("[default: free space of the state dir at start]"));
  assert.ok(help.includes("[default: 0.0.0.0/8 127.0.0.0/8 169.254.0.0/16 224.0.0.0/4 240.0.0.0/4]"));
});

test("fleet flags: a host id is a subject token, labels are key=value, NATS auth goes in pairs", () => {
  assert.match(problemsOf(["--host-id", "a.b"]), /--host-id: must be 1-64 of A-Z a-z 0-9 _ -/);
  assert.match(problemsOf(["--label", "novalue"]), /--label item 0: must be key=value/);
  assert.match(problemsOf(["--nats", "http://x"]), /--nats: must be NATS URLs/);
  assert.match(problemsOf(["--nats-replicas", "2"]), /--nats-replicas: must be 1 or 3/);
  assert.match(problemsOf(["--nats-user", "u"]), /--nats-user and --nats-pass go together/);
  const { config } = loadConfig(["--nats", "nats://a:4222", "--label", "zone=eu", "--label", "ssd=", "--vmm", "fake"], {});
  assert.deepEqual(parseLabels(config.labels), { zone: "eu", ssd: "" });
  assert.equal(config.heartbeatMs, 2000);
  assert.equal(config.vmm, "fake");
  assert.match(config.hostId, /^[A-Za-z0-9_-]{1,64}$/, "the default host id is valid");
});
