// Group rules of the network adapter against real nft/ip in namespaces the test creates: a group's
// objects come with its first member and go with its last, a member joining rewrites no other
// VM's rules, 50 groups made and removed leave the ruleset byte-identical, a restart rebuilds the
// same rules, hostnames are unique per group, and orphaned groups are removed. Traffic between
// members is tested on real guests in groups.test.ts.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { execa } from "execa";
import { createNetFaults } from "../../worker/faults/net-faults.js";
import { FAULT_TABLE } from "../../worker/faults/nft-faults.js";
import { createNetwork, type NetworkOptions } from "../../worker/net/network.js";
import type { NetworkPort, VmNetwork } from "../../worker/ports/index.js";
import { tapName } from "../../worker/net/ip.js";
import { rejectsWith } from "../helpers/errors.js";
import { Topology, UPLINK } from "./topology.js";

const logger = pino({ level: process.env.PCR_TEST_LOG ?? "silent" });
const skip = process.getuid?.() !== 0 ? "needs root for network namespaces" : false;

describe("group rules in a namespace", { skip }, () => {
  let world: Topology;
  let options: NetworkOptions;
  let network: NetworkPort;

  const ruleset = async () => (await execa("ip", ["netns", "exec", world.ns, "nft", "-j", "list", "ruleset"])).stdout;
  const objectNames = async () =>
    (await world.nftJson(["list", "table", "inet", "procurator"])).nftables.flatMap((entry) => {
      const body = Object.values(entry)[0] as { name?: string };
      return entry.chain || entry.set ? [body.name!] : [];
    });
  const peersMap = async () => {
    const listed = await world.nftJson(["list", "map", "inet", "procurator", "peers"]);
    return ((listed.nftables[1]!.map as { elem?: [string, unknown][] }).elem ?? []).map(([ip]) => ip).sort();
  };

  before(async () => {
    world = await Topology.create();
    options = {
      bridge: "pcrbr0",
      subnet: "10.214.0.0/16",
      uplink: UPLINK,
      statePath: join(world.dir, "leases.json"),
      netns: world.ns,
      logger,
    };
    network = createNetwork(options);
    await network.init([]);
  });
  after(async () => {
    await network?.close();
    await world?.destroy();
  });

  test("the bridge answers ARP for the subnet at once (private-VLAN proxy ARP), with a MAC no TAP's removal changes", async () => {
    const sysctl = async (key: string) => (await execa("ip", ["netns", "exec", world.ns, "sysctl", "-n", key])).stdout.trim();
    assert.equal(await sysctl("net.ipv4.conf.pcrbr0.proxy_arp_pvlan"), "1");
    assert.equal(await sysctl("net.ipv4.neigh.pcrbr0.proxy_delay"), "0");
    // A bridge without a MAC set takes its lowest port's: a VM's delete would move the gateway's
    // MAC under every other guest (found by groups.test.ts: a member's DNS went silent).
    const bridgeMac = async () =>
      (JSON.parse((await execa("ip", ["-n", world.ns, "-j", "link", "show", "pcrbr0"])).stdout) as { address: string }[])[0]!.address;
    const gatewayMac = "02:50:0a:d6:00:01"; // macForIp(10.214.0.1), as VMs' MACs are made
    assert.equal(await bridgeMac(), gatewayMac);
    const ids = ["vm-b000000001", "vm-b000000002", "vm-b000000003"];
    for (const id of ids) await network.attach(id, []);
    // TAP MACs are random: set them low, so that each would be the bridge's in turn.
    for (const [index, id] of ids.entries()) {
      await execa("ip", ["-n", world.ns, "link", "set", "dev", tapName(id), "address", `02:00:00:00:00:0${index + 1}`]);
    }
    for (const id of ids) {
      assert.equal(await bridgeMac(), gatewayMac);
      await network.detach(id);
    }
    assert.equal(await bridgeMac(), gatewayMac);
  });

  test("a group's objects come with its first member and go with its last; a join rewrites no other VM's rules", async () => {
    const lone = await network.attach("vm-g000000000", []);
    const loneRules = await world.nftJson(["list", "chain", "inet", "procurator", "egress_vm-g000000000"]);
    const first = await network.attach("vm-g000000001", [], { group: "alpha", hostname: "one" });
    assert.ok((await objectNames()).includes("group_alpha") && (await objectNames()).includes("members_alpha"));
    const firstRules = await world.nftJson(["list", "chain", "inet", "procurator", "egress_vm-g000000001"]);
    const second = await network.attach("vm-g000000002", [], { group: "alpha", hostname: "two" });
    assert.deepEqual(await peersMap(), [first.ip, second.ip].sort());
    const members = await world.nftJson(["list", "set", "inet", "procurator", "members_alpha"]);
    assert.deepEqual(((members.nftables[1]!.set as { elem: string[] }).elem ?? []).sort(), [first.ip, second.ip].sort());
    // Handles included: nothing of the others was touched.
    assert.deepEqual(await world.nftJson(["list", "chain", "inet", "procurator", "egress_vm-g000000001"]), firstRules);
    assert.deepEqual(await world.nftJson(["list", "chain", "inet", "procurator", "egress_vm-g000000000"]), loneRules);
    assert.ok(!(await peersMap()).includes(lone.ip), "a VM outside any group has no entry");

    await network.detach("vm-g000000001");
    assert.ok((await objectNames()).includes("group_alpha"), "the group stays while a member is left");
    await network.detach("vm-g000000002");
    const left = await objectNames();
    assert.ok(!left.includes("group_alpha") && !left.includes("members_alpha"), `left: ${left.join(" ")}`);
    assert.deepEqual(await peersMap(), []);
    await network.detach("vm-g000000000");
  });

  test("a hostname is taken once per group: ALREADY_EXISTS, nothing made; the same hostname in another group is fine", async () => {
    await network.attach("vm-h000000001", [], { group: "beta", hostname: "db" });
    const before = await ruleset();
    await rejectsWith(network.attach("vm-h000000002", [], { group: "beta", hostname: "db" }), "ALREADY_EXISTS", /beta.*db/);
    assert.equal(await ruleset(), before);
    assert.deepEqual(
      (await world.linkNames()).filter((name) => name.includes("h000000002")),
      [],
    );
    await network.attach("vm-h000000003", [], { group: "gamma", hostname: "db" });
    await network.detach("vm-h000000003");
    await network.detach("vm-h000000001");
    // The hostname is free again once its member left.
    await network.attach("vm-h000000004", [], { group: "beta", hostname: "db" });
    await network.detach("vm-h000000004");
  });

  test("members churning through one group at once (joins racing the last member's leave, double detaches) all succeed", async () => {
    const before = await ruleset();
    // Four lanes; each joins, leaves (sometimes twice at once) and joins again, so the group keeps
    // being emptied by one lane while another makes it again.
    await Promise.all(
      [0, 1, 2, 3].map(async (lane) => {
        for (let round = 0; round < 20; round++) {
          const id = `vm-c${String(lane * 100 + round).padStart(9, "0")}`;
          await network.attach(id, [], { group: "churn", hostname: `l${lane}` });
          await new Promise((resolve) => setTimeout(resolve, (lane * 7 + round * 3) % 5));
          await Promise.all(round % 3 === 0 ? [network.detach(id), network.detach(id)] : [network.detach(id)]);
        }
      }),
    );
    assert.equal(await ruleset(), before);
  });

  test("50 groups made and removed leave the ruleset byte-identical", async () => {
    const before = await ruleset();
    const linksBefore = await world.linkNames();
    const ids: string[] = [];
    for (let group = 0; group < 50; group++) {
      for (let member = 0; member < (group % 5 === 0 ? 3 : 1); member++) {
        const id = `vm-f${String(group * 10 + member).padStart(9, "0")}`;
        await network.attach(id, group % 2 ? ["198.51.100.0/24"] : [], { group: `g${group}`, hostname: `m${member}` });
        ids.push(id);
      }
    }
    assert.equal((await peersMap()).length, ids.length);
    // Removed in another order than made: groups go with whichever member is last.
    for (const id of ids.reverse()) await network.detach(id);
    assert.equal(await ruleset(), before);
    assert.deepEqual(await world.linkNames(), linksBefore);
  });

  test("a restart rebuilds the group rules exactly; orphaned groups and members are removed", async () => {
    const nets = new Map<string, VmNetwork>();
    const members = [
      { vmId: "vm-r000000001", group: "delta", hostname: "a" },
      { vmId: "vm-r000000002", group: "delta", hostname: "b" },
      { vmId: "vm-r000000003", group: "epsilon", hostname: "a" },
    ];
    for (const { vmId, group, hostname } of members) nets.set(vmId, await network.attach(vmId, [], { group, hostname }));
    const withGroups = await ruleset();
    const existing = members.map(({ vmId, group, hostname }) => ({
      vmId,
      net: nets.get(vmId)!,
      allowedDomains: [],
      member: { group, hostname },
    }));

    await network.close();
    network = createNetwork(options);
    await network.init(existing);
    const rebuilt = await ruleset();
    const noHandles = (text: string) => text.replace(/"handle": \d+/g, "");
    assert.equal(noHandles(rebuilt), noHandles(withGroups));

    // After a crash the worker knows only vm-r000000001: the rebuild leaves out the others' rules and
    // the epsilon group; removeOrphans takes their TAPs and leases.
    await network.close();
    network = createNetwork(options);
    await network.init(existing.slice(0, 1));
    const removed = await network.removeOrphans(new Set(["vm-r000000001"]));
    assert.ok(removed.includes("tap:pcr-r000000002") && removed.includes("lease:vm-r000000003"), removed.join(" "));
    assert.ok(!(await objectNames()).some((name) => name.endsWith("_epsilon")), "no epsilon objects");
    assert.deepEqual(await peersMap(), [nets.get("vm-r000000001")!.ip]);
    await network.detach("vm-r000000001");
  });

  test("faults between members: a one-way partition hooks one direction only; loss aims at the named peers", async () => {
    const member = await network.attach("vm-p000000001", [], { group: "zeta", hostname: "a" });
    const faults = createNetFaults({ netns: world.ns });
    const chains = async () =>
      (await world.nftJson(["list", "table", "netdev", FAULT_TABLE])).nftables.flatMap((entry) =>
        entry.chain ? [`${(entry.chain as { name: string }).name}:${(entry.chain as { hook: string }).hook}`] : [],
      );
    await faults.apply("out1", member.tap, { kind: "partition", cidrs: ["10.214.9.9/32"], direction: "outbound" });
    await faults.apply("in1", member.tap, { kind: "partition", cidrs: ["10.214.9.9/32"], direction: "inbound" });
    await faults.apply("loss1", member.tap, { kind: "loss", percent: 30, cidrs: ["10.214.9.9/32", "10.214.9.10/32"] });
    assert.deepEqual((await chains()).sort(), ["in1_to_vm:egress", "loss1_from_vm:ingress", "loss1_to_vm:egress", "out1_from_vm:ingress"]);
    const lossRules = (await world.nftJson(["list", "chain", "netdev", FAULT_TABLE, "loss1_from_vm"])).nftables.filter((e) => e.rule);
    assert.equal(lossRules.length, 2, "one rule per peer");
    assert.match(JSON.stringify(lossRules[0]), /"daddr".*10\.214\.9\.9.*numgen/);
    for (const id of ["out1", "in1"]) await faults.clear(id, member.tap, { kind: "partition", cidrs: [] });
    await faults.clear("loss1", member.tap, { kind: "loss", percent: 30 });
    const table = await execa("ip", ["netns", "exec", world.ns, "nft", "list", "table", "netdev", FAULT_TABLE], { reject: false });
    assert.notEqual(table.exitCode, 0, "the fault table goes with its last fault");
    await network.detach("vm-p000000001");
  });
});
