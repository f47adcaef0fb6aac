// deploy/systemd/: every option a unit passes (ExecStart's words, Environment=, the example
// EnvironmentFiles, uncommented) is one the binary accepts, checked with the binaries' own config
// parsers; the directories match the worker's defaults; and systemd itself accepts the units.
import assert from "node:assert/strict";
import { execa } from "execa";
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, describe, it } from "node:test";
import { configKeys, configSchema, envName, loadConfig } from "../../worker/config.js";
import { gatewayKeys, loadGatewayConfig } from "../../worker/fleet/gateway-config.js";
import { REPO_ROOT } from "../helpers/repo.js";
import { environmentFile, environmentOf, loadUnit, programOf, single, splitExec, type Unit, values } from "./unit-file.js";
import { onPath } from "../helpers/on-path.js";

const UNITS_DIR = join(REPO_ROOT, "deploy", "systemd");
const PACKAGE_BINS = Object.keys((JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as { bin: object }).bin);

interface Daemon {
  unitName: string;
  envFile: string;
  /** Every PCR_* variable the binary reads. */
  variables: string[];
  /** Runs the binary's own parser on argv (without the program) and the environment; throws on a bad option. */
  parse: (argv: string[], env: Record<string, string>) => unknown;
}

const DAEMONS: Record<string, Daemon> = {
  "pcr-worker": {
    unitName: "pcr-worker.service",
    envFile: "worker.env",
    variables: [...configKeys.map(envName), "PCR_CONFIG"],
    parse: (argv, env) => loadConfig(argv, env).config,
  },
  "pcr-gateway": {
    unitName: "pcr-gateway.service",
    envFile: "gateway.env",
    variables: gatewayKeys.map(envName),
    parse: (argv, env) => loadGatewayConfig(argv, env),
  },
};

const EnvFilePath = (unit: Unit) => single(unit, "Service", "EnvironmentFile").replace(/^-/, "");

describe("deploy/systemd units", () => {
  for (const [program, daemon] of Object.entries(DAEMONS)) {
    const { unit } = loadUnit(UNITS_DIR, daemon.unitName);
    const argv = splitExec(single(unit, "Service", "ExecStart"), daemon.unitName);
    const unitEnv = environmentOf(unit, daemon.unitName);
    const exampleEnv = environmentFile(readFileSync(join(UNITS_DIR, daemon.envFile), "utf8"), true);

    it(`${daemon.unitName} starts ${program}, a bin of package.json`, () => {
      assert.equal(programOf(argv), program);
      assert.ok(PACKAGE_BINS.includes(program), `${program} is not in package.json's bin (${PACKAGE_BINS.join(", ")})`);
      assert.match(argv[0]!, /^\//, "ExecStart needs an absolute path");
      assert.equal(EnvFilePath(unit), `/etc/procurator/${daemon.envFile}`, `${daemon.envFile} is installed where the unit reads it`);
    });

    it(`${daemon.unitName}: every variable it or ${daemon.envFile} sets is one ${program} reads`, () => {
      const names = [...Object.keys(unitEnv), ...Object.keys(exampleEnv)].filter((name) => name !== "PATH");
      assert.ok(names.length > 0);
      for (const name of names) assert.ok(daemon.variables.includes(name), `${program} has no variable ${name}`);
    });

    it(`${daemon.unitName}: its flags and variables pass ${program}'s parser, as shipped and with every example and drop-in`, () => {
      // Environment= first: an EnvironmentFile= overrides it, as in systemd.
      assert.doesNotThrow(() => daemon.parse(argv.slice(1), { ...unitEnv, ...exampleEnv }));
      // The unit alone, with only the lines not commented out: it starts as installed.
      const bare = loadUnit(UNITS_DIR, daemon.unitName, false).unit;
      const asShipped = environmentFile(readFileSync(join(UNITS_DIR, daemon.envFile), "utf8"), false);
      assert.doesNotThrow(() => daemon.parse(argv.slice(1), { ...environmentOf(bare, daemon.unitName), ...asShipped }));
    });
  }

  it("a renamed flag or variable would be caught: the parsers refuse unknown flags, and the variable list is exact", () => {
    assert.throws(() => loadConfig(["--state-directory", "/x"], {}), /invalid arguments/);
    assert.throws(() => loadGatewayConfig(["--nats", "nats://a:4222", "--listen", "x"], {}), /invalid arguments/);
    assert.ok(!DAEMONS["pcr-gateway"]!.variables.includes("PCR_STATE_DIR"));
  });

  it("pcr-worker.service: directories are the worker's defaults, kept across restarts; only the worker is signalled", () => {
    const { unit } = loadUnit(UNITS_DIR, "pcr-worker.service");
    const defaults = configSchema.parse({});
    assert.equal(`/run/${single(unit, "Service", "RuntimeDirectory")}`, defaults.runtimeDir);
    assert.equal(`/var/lib/${single(unit, "Service", "StateDirectory")}`, defaults.stateDir);
    assert.equal(dirname(defaults.socket), defaults.runtimeDir);
    // Removing /run/procurator on stop would pull the sockets and cage roots from under the VMs that outlive the worker.
    assert.equal(single(unit, "Service", "RuntimeDirectoryPreserve"), "yes");
    assert.equal(single(unit, "Service", "KillMode"), "process");
    assert.equal(single(unit, "Service", "User"), "root");
    // Each of these gives the unit a private mount namespace, new at every start: the next worker
    // would not see the secrets tmpfs and cgroup mounts its adopted VMs use.
    for (const key of [
      "ProtectSystem",
      "ProtectHome",
      "PrivateTmp",
      "PrivateDevices",
      "PrivateMounts",
      "ReadWritePaths",
      "ProtectKernelTunables",
      "ProtectKernelModules",
      "ProtectControlGroups",
      "RestrictNamespaces",
      "DeviceAllow",
      "ProtectClock",
    ]) {
      assert.deepEqual(values(unit, "Service", key), [], `pcr-worker.service must not set ${key}=`);
    }
  });

  it("pcr-gateway.service: a dynamic user without capabilities, its socket in its runtime directory, its credentials loaded", () => {
    const { unit, dropIns } = loadUnit(UNITS_DIR, "pcr-gateway.service");
    assert.equal(single(unit, "Service", "DynamicUser"), "yes");
    assert.equal(single(unit, "Service", "CapabilityBoundingSet"), "");
    assert.equal(single(unit, "Service", "NoNewPrivileges"), "yes");
    assert.equal(single(unit, "Service", "ProtectSystem"), "strict");
    const env = environmentOf(unit, "pcr-gateway.service");
    assert.equal(dirname(env.PCR_SOCKET!), `/run/${single(unit, "Service", "RuntimeDirectory")}`);
    assert.deepEqual(dropIns, ["nats-creds.conf", "tls.conf"]);
    const loaded = values(unit, "Service", "LoadCredential").map((entry) => entry.slice(0, entry.indexOf(":")));
    for (const [name, value] of Object.entries(env)) {
      const credential = /^\/run\/credentials\/pcr-gateway\.service\/(.+)$/.exec(value)?.[1];
      if (credential) assert.ok(loaded.includes(credential), `${name} names credential ${credential}, which no LoadCredential= loads`);
    }
  });

  const systemdAnalyze = onPath("systemd-analyze");
  const scratch = mkdtempSync(join(tmpdir(), "pcr-units-"));
  after(() => rmSync(scratch, { recursive: true, force: true }));

  it("systemd-analyze verify accepts both units and the drop-ins, without a warning", {
    skip: systemdAnalyze ? false : "systemd-analyze is not installed (Debian's systemd package; scripts/setup installs it)",
  }, async () => {
    // verify also checks that ExecStart's program exists: stand-ins at the same names.
    const units = join(scratch, "units");
    const bin = join(scratch, "bin");
    cpSync(UNITS_DIR, units, { recursive: true });
    mkdirSync(bin);
    for (const [program, daemon] of Object.entries(DAEMONS)) {
      writeFileSync(join(bin, program), "#!/bin/sh\n");
      chmodSync(join(bin, program), 0o755);
      const path = join(units, daemon.unitName);
      writeFileSync(path, readFileSync(path, "utf8").replace(/^ExecStart=\S+/m, `ExecStart=${join(bin, program)}`));
    }
    const result = await execa(
      systemdAnalyze!,
      ["verify", "--man=no", join(units, "pcr-worker.service"), join(units, "pcr-gateway.service")],
      { reject: false, timeout: 20_000 },
    );
    assert.equal(result.exitCode, 0, result.stderr);
    assert.equal(result.stderr.trim(), "", "systemd-analyze verify warned");
    // The gateway's hardening, as systemd scores it (0 is best, 10 worst).
    const security = await execa(systemdAnalyze!, ["security", "--offline=true", "--no-pager", join(units, "pcr-gateway.service")], {
      reject: false,
      timeout: 20_000,
    });
    const score = Number(/Overall exposure level for pcr-gateway\.service: ([\d.]+)/.exec(security.stdout)?.[1]);
    assert.ok(score <= 2, `pcr-gateway.service exposure ${score}:\n${security.stdout}`);
  });
});
