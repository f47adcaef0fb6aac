// nix/flake-vmm/guest/pcr-guest-setup.sh, the NixOS guest's reader of the pcr.* kernel parameters:
// what it would do for given command lines (dry run), and a real run of the network step inside
// a network + UTS namespace made for the test (a veth eth0 stands in for the virtio NIC).
import assert from "node:assert/strict";
import { execa } from "execa";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { REPO_ROOT } from "../helpers/repo.js";

const SCRIPT = join(REPO_ROOT, "nix", "flake-vmm", "guest", "pcr-guest-setup.sh");
const scratch = mkdtempSync(join(tmpdir(), "pcr-guest-setup-"));

async function runSetup(step: string, cmdline: string, env: Record<string, string> = { PCR_DRY_RUN: "1" }) {
  const file = join(scratch, `cmdline-${Math.random().toString(36).slice(2)}`);
  writeFileSync(file, `${cmdline}\n`);
  return execa("bash", [SCRIPT, step], { reject: false, env: { PCR_CMDLINE_FILE: file, ...env }, timeout: 15_000 });
}

const WORKER_PARAMS = "pcr.hostname=agent-1 pcr.ip=10.213.0.5/16 pcr.gw=10.213.0.1 pcr.dns=10.213.0.1";

describe("nix: guest setup script", () => {
  after(() => rmSync(scratch, { recursive: true, force: true }));

  it("configures address, route, DNS and host name from the worker's parameters", async () => {
    const result = await runSetup("network", `console=ttyS0 init=/nix/store/x/init ${WORKER_PARAMS}`);
    assert.equal(result.exitCode, 0, result.stderr);
    assert.deepEqual(result.stdout.split("\n"), [
      "hostname agent-1",
      "ip link set dev eth0 up",
      "ip address replace 10.213.0.5/16 dev eth0",
      "ip route replace default via 10.213.0.1 dev eth0",
      "resolvconf -m 0 -a eth0 <<< nameserver 10.213.0.1",
    ]);
  });

  it("leaves networking alone without pcr.ip, and refuses malformed addresses", async () => {
    const none = await runSetup("network", "console=ttyS0");
    assert.equal(none.exitCode, 0);
    assert.match(none.stdout, /no pcr\.ip/);
    for (const bad of [
      "pcr.ip=10.0.0.300/24",
      "pcr.ip=10.0.0.3",
      "pcr.ip=10.0.0.3/33",
      "pcr.ip=10.0.0.3/24 pcr.gw=gateway",
      "pcr.hostname=a;reboot",
    ]) {
      const result = await runSetup("network", bad);
      assert.equal(result.exitCode, 1, `${bad} was accepted: ${result.stdout}`);
      assert.match(result.stderr, /pcr-guest: bad pcr\./);
    }
  });

  it("mounts the secrets share read-only with the transport pcr.share names", async () => {
    const ninep = await runSetup("secrets", "pcr.share=9p");
    assert.equal(ninep.exitCode, 0, ninep.stderr);
    assert.deepEqual(ninep.stdout.split("\n"), [
      "mkdir -p -m 0700 /run/secrets",
      "mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576,ro secrets /run/secrets",
    ]);
    const virtiofs = await runSetup("secrets", "pcr.share=virtiofs");
    assert.match(virtiofs.stdout, /^mount -t virtiofs -o ro secrets \/run\/secrets$/m);
    const none = await runSetup("secrets", "console=ttyS0");
    assert.equal(none.exitCode, 0);
    assert.match(none.stdout, /no pcr\.share/);
    const unknown = await runSetup("secrets", "pcr.share=nfs");
    assert.equal(unknown.exitCode, 1);
    assert.match(unknown.stderr, /unknown pcr\.share=nfs/);
  });

  it("prints the console markers of docs/guest-contract.md", async () => {
    const consoleFile = join(scratch, "console");
    const ready = await runSetup("ready", "", { PCR_CONSOLE: consoleFile });
    assert.equal(ready.exitCode, 0, ready.stderr);
    const exited = await runSetup("exited", "", { PCR_CONSOLE: consoleFile, EXIT_STATUS: "3" });
    assert.equal(exited.exitCode, 0, exited.stderr);
    assert.equal(readFileSync(consoleFile, "utf8"), "pcr-guest: ready\npcr-guest: entrypoint exit=3\n");
    const again = await runSetup("ready", "", { PCR_DRY_RUN: "1" });
    assert.equal(again.stdout, "pcr-guest: ready");
  });

  const canUnshare = process.getuid?.() === 0 ? false : "needs root to create network and UTS namespaces";
  it("really configures eth0 and the host name inside fresh namespaces", { skip: canUnshare }, async () => {
    // Without pcr.dns: resolvconf exists only in the guest (its run is covered by the dry run above).
    const file = join(scratch, "cmdline-real");
    writeFileSync(file, "console=ttyS0 pcr.hostname=agent-1 pcr.ip=10.213.0.5/16 pcr.gw=10.213.0.1\n");
    const inside = [
      "set -e",
      "ip link add eth0 type veth peer name eth1",
      "ip link set eth1 up",
      `PCR_CMDLINE_FILE=${file} bash ${SCRIPT} network`,
      "echo ---",
      "hostname",
      "ip -4 -o address show dev eth0",
      "ip -4 route show default",
    ].join("\n");
    const result = await execa("unshare", ["--net", "--uts", "bash", "-c", inside], { reject: false, timeout: 15_000 });
    assert.equal(result.exitCode, 0, result.stderr);
    const [, report = ""] = result.stdout.split("---\n");
    const [hostname, address, route] = report.split("\n");
    assert.equal(hostname, "agent-1");
    assert.match(address!, /eth0\s+inet 10\.213\.0\.5\/16 /);
    assert.match(route!, /^default via 10\.213\.0\.1 dev eth0/);
  });
});
