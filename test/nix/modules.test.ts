// The NixOS modules' options -> the binaries' flags: host-module.nix (services.procurator-worker)
// and gateway-module.nix (services.procurator-gateway) evaluated without nixpkgs (a stand-in lib,
// fixtures/module-harness.nix), their ExecStart= split as systemd splits it, and the argv fed to
// the binaries' own parsers (worker/config.ts, worker/fleet/gateway-config.ts). A flag renamed
// there, or an option mapped to the wrong flag here, fails this test.
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { loadConfig } from "../../worker/config.js";
import { loadGatewayConfig } from "../../worker/fleet/gateway-config.js";
import { REPO_ROOT } from "../helpers/repo.js";
import { splitExec } from "../deploy/unit-file.js";
import { FIXTURES, evalJson, nixString, skipWithoutNix } from "./nix.js";

const FLAKE = join(REPO_ROOT, "nix", "flake-vmm");
const PACKAGE = "/nix/store/00000000000000000000000000000000-procurator";

interface Evaluated {
  failedAssertions: string[];
  serviceConfig: { ExecStart: string; LoadCredential?: string[]; EnvironmentFile?: string; KillMode?: string; DynamicUser?: boolean };
}

async function evaluate(module: string, service: string, unit: string, settings: object): Promise<Evaluated> {
  return evalJson<Evaluated>(`
    let h = import ${nixString(join(FIXTURES, "module-harness.nix"))} {
      module = ${nixString(join(FLAKE, module))};
      service = ${JSON.stringify(service)};
      settings = builtins.fromJSON ${nixString(JSON.stringify({ enable: true, package: { outPath: PACKAGE }, ...settings }))};
    };
    in { inherit (h) failedAssertions; serviceConfig = h.config.systemd.services.${JSON.stringify(unit)}.serviceConfig; }`);
}

const worker = (settings: object) => evaluate("host-module.nix", "procurator-worker", "pcr-worker", settings);
const gateway = (settings: object) => evaluate("gateway-module.nix", "procurator-gateway", "pcr-gateway", settings);

/** ExecStart's argv, its program checked, without the program. */
function argvOf(evaluated: Evaluated, program: string, unitName: string): string[] {
  const argv = splitExec(evaluated.serviceConfig.ExecStart, unitName);
  assert.equal(argv[0], `${PACKAGE}/bin/${program}`);
  return argv.slice(1);
}

describe("nix: NixOS module options become flags the binaries accept", { skip: skipWithoutNix }, () => {
  it("services.procurator-worker: defaults, then every option set, parse to the values given", async () => {
    const defaults = await worker({});
    assert.deepEqual(defaults.failedAssertions, []);
    assert.equal(defaults.serviceConfig.KillMode, "process");
    const plain = loadConfig(argvOf(defaults, "pcr-worker", "pcr-worker.service"), {}).config;
    assert.equal(plain.nats, undefined, "no fleet unless fleet.nats is given");
    assert.equal(plain.cage, true);

    const everything = await worker({
      socket: "/run/pcr/w.sock",
      stateDir: "/srv/pcr",
      runtimeDir: "/run/pcr",
      backend: "qemu",
      cacheUrl: "https://cache.example.com",
      trustedPublicKeys: ["cache-1:AAAA", "cache-2:BBBB"],
      bridge: "br-vms",
      subnet: "10.9.0.0/20",
      uplink: "eth0",
      resolver: "1.1.1.1",
      cage: { enable: false, uidRange: "50000-50999" },
      logLevel: "debug",
      pools: [{ name: "agent", spec: {}, hot: 3, disk: true }],
      environmentFile: "/run/keys/pcr-worker.env",
      fleet: {
        nats: ["nats://a:4222", "tls://b:4222"],
        hostId: "host_a-1",
        labels: { zone: "eu", disk: "ssd" },
        credsFile: "/run/keys/nats.creds",
        user: "worker",
        caFile: "/etc/nats/ca.crt",
        certFile: "/etc/nats/client.crt",
        keyFile: "/run/keys/client.key",
        replicas: 3,
        heartbeatMs: 500,
      },
    });
    assert.deepEqual(everything.failedAssertions, []);
    assert.equal(everything.serviceConfig.EnvironmentFile, "/run/keys/pcr-worker.env");
    const config = loadConfig(argvOf(everything, "pcr-worker", "pcr-worker.service"), {
      PCR_NATS_PASS: "from-the-environment-file",
    }).config;
    assert.deepEqual(
      {
        socket: config.socket,
        stateDir: config.stateDir,
        runtimeDir: config.runtimeDir,
        vmm: config.vmm,
        cacheUrl: config.cacheUrl,
        trustedKeys: config.trustedKeys,
        bridge: config.bridge,
        subnet: config.subnet,
        uplink: config.uplink,
        resolver: config.resolver,
        cage: config.cage,
        vmmUidRange: config.vmmUidRange,
        logLevel: config.logLevel,
        qemuBinary: config.qemuBinary,
        nats: config.nats,
        hostId: config.hostId,
        labels: [...config.labels].sort(),
        natsCreds: config.natsCreds,
        natsUser: config.natsUser,
        natsPass: config.natsPass,
        natsCa: config.natsCa,
        natsCert: config.natsCert,
        natsKey: config.natsKey,
        natsReplicas: config.natsReplicas,
        heartbeatMs: config.heartbeatMs,
      },
      {
        socket: "/run/pcr/w.sock",
        stateDir: "/srv/pcr",
        runtimeDir: "/run/pcr",
        vmm: "qemu",
        cacheUrl: "https://cache.example.com",
        trustedKeys: ["cache-1:AAAA", "cache-2:BBBB"],
        bridge: "br-vms",
        subnet: "10.9.0.0/20",
        uplink: "eth0",
        resolver: "1.1.1.1",
        cage: false,
        vmmUidRange: "50000-50999",
        logLevel: "debug",
        qemuBinary: "/nix/store/00000000000000000000000000000000-qemu/bin/qemu-system-x86_64",
        nats: "nats://a:4222,tls://b:4222",
        hostId: "host_a-1",
        labels: ["disk=ssd", "zone=eu"],
        natsCreds: "/run/keys/nats.creds",
        natsUser: "worker",
        natsPass: "from-the-environment-file",
        natsCa: "/etc/nats/ca.crt",
        natsCert: "/etc/nats/client.crt",
        natsKey: "/run/keys/client.key",
        natsReplicas: 3,
        heartbeatMs: 500,
      },
    );
    assert.match(config.pools[0] ?? "", /^\/nix\/store\/[0-9a-z]{32}-pcr-pool-agent\.json:3\+disk$/);
  });

  it("services.procurator-worker: bad fleet options are assertions, which the worker would refuse too", async () => {
    const bad = await worker({ fleet: { nats: ["not a url"], hostId: "a.b", labels: { "-x": "a b" }, certFile: "/c" } });
    const messages = bad.failedAssertions.join("\n");
    for (const expected of [
      /fleet\.urls: "not a url" is not a NATS URL/,
      /fleet\.hostId "a\.b"/,
      /labels: key "-x"/,
      /labels\.-x: "a b"/,
      /certFile and .*keyFile go together/,
    ]) {
      assert.match(messages, expected);
    }
    assert.throws(() => loadConfig(argvOf(bad, "pcr-worker", "pcr-worker.service"), {}), /invalid (configuration|arguments)/);
    const userWithoutPassword = await worker({ fleet: { nats: ["nats://a:4222"], user: "worker" } });
    assert.deepEqual(userWithoutPassword.failedAssertions, [
      "services.procurator-worker.fleet.user needs environmentFile with PCR_NATS_PASS",
    ]);
  });

  it("services.procurator-gateway: every option, its files through LoadCredential, parses to the values given", async () => {
    const minimal = await gateway({ nats: { urls: ["nats://a:4222"] } });
    assert.deepEqual(minimal.failedAssertions, []);
    assert.equal(minimal.serviceConfig.DynamicUser, true);
    const plain = loadGatewayConfig(argvOf(minimal, "pcr-gateway", "pcr-gateway.service"), {});
    assert.equal(plain.socket, "/run/pcr-gateway/gateway.sock");
    assert.deepEqual(minimal.serviceConfig.LoadCredential, []);

    const everything = await gateway({
      tcp: "0.0.0.0:7000",
      tls: { certFile: "/etc/pcr/tls.crt", keyFile: "/run/keys/tls.key", clientCaFile: "/etc/pcr/clients.crt" },
      nats: {
        urls: ["nats://a:4222", "nats://b:4222"],
        credsFile: "/run/keys/nats.creds",
        user: "gateway",
        caFile: "/etc/nats/ca.crt",
        certFile: "/etc/nats/client.crt",
        keyFile: "/run/keys/client.key",
        replicas: 3,
      },
      environmentFile: "/run/keys/pcr-gateway.env",
      callTimeoutMs: 60_000,
      lostAfterMs: 20_000,
      logLevel: "warn",
    });
    assert.deepEqual(everything.failedAssertions, []);
    const credentials = Object.fromEntries(
      (everything.serviceConfig.LoadCredential ?? []).map((entry) => entry.split(":") as [string, string]),
    );
    const inCredentials = (name: string) => `/run/credentials/pcr-gateway.service/${name}`;
    const config = loadGatewayConfig(argvOf(everything, "pcr-gateway", "pcr-gateway.service"), { PCR_NATS_PASS: "secret" });
    // Each file flag names a credential, and that credential is the file the option gave.
    const files: [string | undefined, string][] = [
      [config.tlsCert, "/etc/pcr/tls.crt"],
      [config.tlsKey, "/run/keys/tls.key"],
      [config.tlsClientCa, "/etc/pcr/clients.crt"],
      [config.nats.creds, "/run/keys/nats.creds"],
      [config.nats.ca, "/etc/nats/ca.crt"],
      [config.nats.cert, "/etc/nats/client.crt"],
      [config.nats.key, "/run/keys/client.key"],
    ];
    for (const [flagValue, hostPath] of files) {
      const name = flagValue?.slice(inCredentials("").length);
      assert.equal(flagValue, inCredentials(name ?? "?"), `${hostPath} is not passed through the credentials directory`);
      assert.equal(credentials[name!], hostPath, `credential ${name} is not ${hostPath}`);
    }
    assert.equal(Object.keys(credentials).length, files.length);
    assert.deepEqual(
      [
        config.tcp,
        config.nats.servers,
        config.nats.user,
        config.nats.pass,
        config.nats.replicas,
        config.callTimeoutMs,
        config.lostAfterMs,
        config.logLevel,
      ],
      ["0.0.0.0:7000", ["nats://a:4222", "nats://b:4222"], "gateway", "secret", 3, 60_000, 20_000, "warn"],
    );
  });

  it("services.procurator-gateway: bad options are assertions, which the gateway would refuse too", async () => {
    const bad = await gateway({ tcp: "0.0.0.0:7000", nats: { urls: ["nats://a:4222"], replicas: 2 } });
    assert.match(bad.failedAssertions.join("\n"), /tcp beyond loopback needs tls/);
    assert.match(bad.failedAssertions.join("\n"), /nats\.replicas must be 1 or 3/);
    assert.throws(() => loadGatewayConfig(argvOf(bad, "pcr-gateway", "pcr-gateway.service"), {}), /invalid configuration/);
    const elsewhere = await gateway({ socket: "/run/procurator/gateway.sock", nats: { urls: ["nats://a:4222"] } });
    assert.match(elsewhere.failedAssertions.join("\n"), /socket must be under \/run\/pcr-gateway/);
  });
});
