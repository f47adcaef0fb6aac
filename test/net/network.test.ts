// The network adapter against real ip/nft/dnsmasq inside namespaces the test creates.
import assert from "node:assert/strict";
import { execa } from "execa";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { WorkerError } from "../../worker/core/errors.js";
import { createNetwork, type NetworkOptions } from "../../worker/net/network.js";
import type { NetworkPort } from "../../worker/ports/index.js";
import { waitFor } from "../helpers/vm.js";
import { ALLOWED_IP, DENIED_IP, MOVED_IP, RESOLVER, setAddresses, Topology, UPLINK, UPLINK_IP } from "./topology.js";

const logger = pino({ level: process.env.PCR_TEST_LOG ?? "silent" });
const skip = process.getuid?.() !== 0 ? "needs root for network namespaces" : false;

/** The ruleset without handles, which a rebuild renumbers. */
const withoutHandles = (value: unknown): unknown =>
  JSON.parse(JSON.stringify(value), (key, inner: unknown) => (key === "handle" ? undefined : inner));

describe("network adapter in a namespace", { skip }, () => {
  let world: Topology;
  let options: NetworkOptions;
  let network: NetworkPort;

  before(async () => {
    world = await Topology.create();
    options = {
      bridge: "pcrbr0",
      subnet: "10.213.0.0/16",
      resolver: RESOLVER,
      uplink: UPLINK,
      statePath: join(world.dir, "leases.json"),
      netns: world.ns,
      logger,
      resolve: world.resolver(),
      refresh: { minSeconds: 1, maxSeconds: 60, slackSeconds: 2 },
    };
    network = createNetwork(options);
    await network.init([]);
  });

  after(async () => {
    await network?.close();
    await world?.destroy();
  });

  test("bad allowedDomains are rejected before anything is made", async () => {
    const before = await world.nftJson(["list", "ruleset"]);
    const denied = [
      ["169.254.169.254"],
      ["0.0.0.0/0"],
      ["127.0.0.1"],
      ["224.0.0.251"],
      ["10.213.0.1"],
      [UPLINK_IP],
      ["198.18.0.0/24"],
      [RESOLVER],
    ];
    for (const bad of [
      ["*.example.com"],
      ["exa mple.com"],
      ["-x.test"],
      ["10.0.0.300"],
      ["10.0.0.0/33"],
      ["::1"],
      ["host:443"],
      ...denied,
    ]) {
      assert.throws(
        () => network.validateAllowedDomains(bad),
        (err: unknown) => err instanceof WorkerError && err.code === "INVALID_ARGUMENT",
        bad[0],
      );
      await assert.rejects(
        network.attach("vm-bad0000001", bad),
        (err: unknown) => err instanceof WorkerError && err.code === "INVALID_ARGUMENT",
      );
    }
    assert.deepEqual(await world.nftJson(["list", "ruleset"]), before);
    assert.ok(!(await world.linkNames()).includes("pcr-bad0000001"));
  });

  test("attach allocates address and MAC, creates TAP, chain and sets; detach removes them", async () => {
    const before = await world.nftJson(["list", "ruleset"]);
    const net = await network.attach("vm-a000000001", ["allowed.test", "203.0.113.0/24", "203.0.113.7", "192.0.2.1"]);
    assert.equal(net.tap, "pcr-a000000001");
    assert.match(net.ip, /^10\.213\.0\.\d+$/);
    assert.equal(net.gateway, "10.213.0.1");
    assert.equal(net.prefixLength, 16);
    // Guests ask the worker's DNS proxy on the gateway, never the resolver itself.
    assert.equal(net.dns, "10.213.0.1");
    assert.match(net.mac, /^02:50(:[0-9a-f]{2}){4}$/);
    assert.deepEqual(network.guestCmdline(net), [`pcr.ip=${net.ip}/16`, "pcr.gw=10.213.0.1", "pcr.dns=10.213.0.1"]);

    assert.ok((await world.linkNames()).includes(net.tap));
    const master = await execa("ip", ["-n", world.ns, "-j", "-d", "link", "show", "dev", net.tap]);
    const link = (JSON.parse(master.stdout) as { master: string; linkinfo: { info_slave_data: { isolated: boolean } } }[])[0]!;
    assert.equal(link.master, "pcrbr0");
    assert.equal(link.linkinfo.info_slave_data.isolated, true);

    assert.deepEqual(setAddresses(await world.nftJson(["list", "set", "inet", "procurator", "allow_vm-a000000001"])), [ALLOWED_IP]);
    const nets = setAddresses(await world.nftJson(["list", "set", "inet", "procurator", "nets_vm-a000000001"]));
    assert.deepEqual(nets.sort(), ["192.0.2.1", "203.0.113.0/24"]);

    const leases = JSON.parse(await readFile(options.statePath, "utf8")) as { leases: Record<string, string> };
    assert.equal(leases.leases["vm-a000000001"], net.ip);

    const counters = await network.counters("vm-a000000001");
    assert.equal(typeof counters.egressDrops, "bigint");

    await network.detach("vm-a000000001");
    await network.detach("vm-a000000001"); // idempotent
    assert.deepEqual(await world.nftJson(["list", "ruleset"]), before);
    assert.ok(!(await world.linkNames()).includes(net.tap));
    const after = JSON.parse(await readFile(options.statePath, "utf8")) as { leases: Record<string, string> };
    assert.equal(after.leases["vm-a000000001"], undefined);
  });

  test("the allowlist set follows DNS answers as their TTL runs out", async () => {
    await network.attach("vm-d000000001", ["allowed.test"]);
    const list = async () => setAddresses(await world.nftJson(["list", "set", "inet", "procurator", "allow_vm-d000000001"]));
    assert.deepEqual(await list(), [ALLOWED_IP]);
    try {
      await world.setHosts({ "allowed.test": MOVED_IP });
      world.reloadDns();
      // TTL 2 s (dnsmasq --local-ttl) is re-resolved within ~2 s; the old address times out after TTL + slack.
      const deadline = Date.now() + 15_000;
      let seen: string[] = [];
      while (Date.now() < deadline) {
        seen = await list();
        if (seen.length === 1 && seen[0] === MOVED_IP) break;
        await new Promise((done) => setTimeout(done, 500));
      }
      assert.deepEqual(seen, [MOVED_IP]);
    } finally {
      await world.setHosts({ "allowed.test": ALLOWED_IP, "denied.test": "198.18.0.11" });
      world.reloadDns();
      await network.detach("vm-d000000001");
    }
  });

  test("a DNS answer in a denied range (cloud metadata, the host itself) never enters the allow set", async () => {
    await world.setHosts({
      "allowed.test": ALLOWED_IP,
      "denied.test": DENIED_IP,
      "metadata.test": "169.254.169.254",
      "self.test": UPLINK_IP,
    });
    world.reloadDns();
    try {
      // The resolver really answers those names before the VM asks, or the test proves nothing.
      const resolve = world.resolver();
      for (const [name, address] of [
        ["metadata.test", "169.254.169.254"],
        ["self.test", UPLINK_IP],
      ] as const) {
        await waitFor(
          `${name} resolving`,
          10_000,
          async () => ((await resolve(name)).some((answer) => answer.address === address) ? true : undefined),
          100,
        );
      }
      await network.attach("vm-n000000001", ["allowed.test", "metadata.test", "self.test"]);
      assert.deepEqual(setAddresses(await world.nftJson(["list", "set", "inet", "procurator", "allow_vm-n000000001"])), [ALLOWED_IP]);
    } finally {
      await network.detach("vm-n000000001");
      await world.setHosts({ "allowed.test": ALLOWED_IP, "denied.test": DENIED_IP });
      world.reloadDns();
    }
  });

  test("the host forwards only on the bridge and the uplink, and the bridge answers ARP only for its own address", async () => {
    const sysctl = async (key: string) => (await execa("ip", ["netns", "exec", world.ns, "sysctl", "-n", key])).stdout.trim();
    assert.equal(await sysctl("net.ipv4.ip_forward"), "0", "not host-wide");
    assert.equal(await sysctl("net.ipv4.conf.pcrbr0.forwarding"), "1");
    assert.equal(await sysctl(`net.ipv4.conf.${UPLINK}.forwarding`), "1");
    assert.equal(await sysctl("net.ipv4.conf.pcrbr0.arp_ignore"), "1");
    assert.equal(await sysctl("net.ipv4.conf.pcrbr0.arp_announce"), "2");
  });

  test("detach forgets the address's tracked connections, so none reaches the next VM to get it", async () => {
    const net = await network.attach("vm-c000000001", [ALLOWED_IP]);
    const conntrack = (args: string[]) => execa("ip", ["netns", "exec", world.ns, "conntrack", ...args], { reject: false });
    const flow = ["-p", "tcp", "--sport", "40000", "--dport", "80", "--state", "ESTABLISHED", "-u", "SEEN_REPLY", "-t", "600"];
    const inserted = await conntrack(["-I", "-s", net.ip, "-d", ALLOWED_IP, ...flow]);
    assert.equal(inserted.exitCode, 0, inserted.stderr);
    assert.match((await conntrack(["-L", "-s", net.ip])).stdout, new RegExp(`src=${net.ip.replaceAll(".", "\\.")}`));
    await network.detach("vm-c000000001");
    assert.doesNotMatch((await conntrack(["-L", "-s", net.ip])).stdout, /src=/);
  });

  test("50 VMs are applied and removed, leaving the ruleset and links exactly as before", async () => {
    const rulesBefore = await world.nftJson(["list", "ruleset"]);
    const linksBefore = await world.linkNames();
    const ids = Array.from({ length: 50 }, (_, index) => `vm-m${String(index).padStart(9, "0")}`);
    const nets = [];
    for (const id of ids) nets.push(await network.attach(id, ["198.51.100.0/24"]));
    assert.equal(new Set(nets.map((net) => net.ip)).size, 50);
    assert.equal(new Set(nets.map((net) => net.mac)).size, 50);
    const egress = await world.nftJson(["list", "map", "inet", "procurator", "egress"]);
    assert.equal(((egress.nftables[1]!.map as { elem: unknown[] }).elem ?? []).length, 50);
    for (const id of ids) await network.detach(id);
    assert.deepEqual(await world.nftJson(["list", "ruleset"]), rulesBefore);
    assert.deepEqual(await world.linkNames(), linksBefore);
  });

  test("init rebuilds the tables from the given VMs without duplicates; leases survive a restart", async () => {
    const kept = await network.attach("vm-k000000001", ["allowed.test"]);
    const rules1 = withoutHandles(await world.nftJson(["list", "ruleset"]));

    await network.close();
    const restarted = createNetwork(options);
    await restarted.init([{ vmId: "vm-k000000001", net: kept, allowedDomains: ["allowed.test"] }]);
    await restarted.init([{ vmId: "vm-k000000001", net: kept, allowedDomains: ["allowed.test"] }]);
    const rules2 = withoutHandles(await world.nftJson(["list", "ruleset"]));
    // Element expiry counts down, so compare without it.
    const noExpiry = (value: unknown) =>
      JSON.parse(JSON.stringify(value), (key, inner: unknown) => (key === "expires" ? undefined : inner));
    assert.deepEqual(noExpiry(rules2), noExpiry(rules1));

    // The lease file survived: a new VM gets another address; a just-released one cools down first.
    const other = await restarted.attach("vm-k000000002", []);
    assert.notEqual(other.ip, kept.ip);
    await restarted.detach("vm-k000000002");
    const again = await restarted.attach("vm-k000000003", []);
    assert.ok(again.ip !== other.ip && again.ip !== kept.ip, `${again.ip} is neither ${kept.ip} nor the cooling ${other.ip}`);
    await restarted.detach("vm-k000000003");
    await restarted.detach("vm-k000000001");
    await restarted.close();
    network = restarted;
  });

  test("removeOrphans removes TAPs, rules and leases of unknown VMs and keeps known ones", async () => {
    const keep = await network.attach("vm-o000000001", []);
    await network.attach("vm-o000000002", ["192.0.2.9"]);
    await execa("ip", ["-n", world.ns, "tuntap", "add", "dev", "pcr-stray", "mode", "tap"]);

    // A fresh adapter that never saw vm-o000000002, as after a crash.
    const fresh = createNetwork(options);
    const removed = await fresh.removeOrphans(new Set(["vm-o000000001"]));
    assert.deepEqual(removed.sort(), ["lease:vm-o000000002", "nft:vm-o000000002", "tap:pcr-o000000002", "tap:pcr-stray"]);
    const links = await world.linkNames();
    assert.ok(links.includes(keep.tap));
    assert.ok(!links.includes("pcr-o000000002") && !links.includes("pcr-stray"));
    const inet = JSON.stringify(await world.nftJson(["list", "table", "inet", "procurator"]));
    assert.ok(inet.includes("egress_vm-o000000001") && !inet.includes("vm-o000000002"));
    const bridge = JSON.stringify(await world.nftJson(["list", "table", "bridge", "procurator"]));
    assert.ok(bridge.includes("guard_vm-o000000001") && !bridge.includes("vm-o000000002"));
    await network.detach("vm-o000000001");
    await fresh.close();
  });
});
