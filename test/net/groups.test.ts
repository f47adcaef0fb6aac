// Groups on real guests (TCG microvm) through a real worker: members reach each other by name on
// TCP and UDP; a VM outside the group and a member of another group are blocked both ways (while
// the same listeners answer the host); one-way partitions between members drop exactly one
// direction; heal restores it; a worker SIGKILL with a partition active leaves no rule behind.
import assert from "node:assert/strict";
import { execa } from "execa";
import { after, before, describe, test } from "node:test";
import type { VmSpecInput } from "../../worker/core/api.js";
import { FAULT_TABLE } from "../../worker/faults/nft-faults.js";
import { connectWorker, type WorkerClient } from "../../worker/rpc/worker-client.js";
import { rejectsWith } from "../helpers/errors.js";
import { testGuest } from "../helpers/repo.js";
import { waitFor } from "../helpers/vm.js";
import { destroyWorker, startWorker, type WorkerProcess } from "../helpers/worker-process.js";

const guest = testGuest();
const input = "skip" in guest ? ({} as VmSpecInput) : guest.input;
const skip = process.getuid?.() !== 0 ? "needs root for network namespaces" : "skip" in guest ? guest.skip : false;
const TCP_PORT = 7000;
const UDP_PORT = 7001;
const UDP_PROBES = 5;

interface Member {
  id: string;
  ip: string;
  hostname: string;
}

describe("groups on real guests", { skip }, () => {
  let worker: WorkerProcess;
  let client: WorkerClient;
  const vms: Record<"a1" | "a2" | "b1" | "lone", Member> = {} as never;

  const sh = async (vm: Member, script: string, timeoutMs = 15_000) => {
    const result = await client.exec(vm.id, { argv: ["/bin/sh", "-c", script], timeoutMs });
    return { code: result.exitCode, out: Buffer.from(result.stdout).toString().trim(), err: Buffer.from(result.stderr).toString() };
  };
  /** TCP: what the listener on `to` answered `from`'s connection to `address`, or "" when nothing did. */
  const tcp = async (from: Member, address: string) => (await sh(from, `nc -w 2 ${address} ${TCP_PORT} </dev/null`)).out;
  /** The kernel's count of UDP datagrams `vm` received for a closed port (/proc/net/snmp's Udp NoPorts). */
  const udpNoPorts = async (vm: Member) => Number((await sh(vm, "awk '/^Udp: [0-9]/{print $3}' /proc/net/snmp")).out);
  /**
   * UDP: how many of UDP_PROBES datagrams from `from` reached `to`, by `to`'s own counter. busybox's
   * nc has no UDP; traceroute sends UDP probes (TTL 2: the host routes members' traffic, one hop).
   */
  const udpReceived = async (from: Member, to: Member) => {
    const before = await udpNoPorts(to);
    await sh(from, `traceroute -n -q ${UDP_PROBES} -f 2 -m 2 -w 1 -p ${UDP_PORT} ${to.ip}`, 20_000);
    return (await udpNoPorts(to)) - before;
  };
  const inWorkerNs = (command: string, args: string[]) => execa("ip", ["netns", "exec", worker.netns, command, ...args], { reject: false });
  /**
   * The worker's two tables as what they hold: objects as a sorted set, each chain's rules in their
   * order, without what a rebuild renumbers or restarts (handles, counter values). nft lists objects
   * in the order they were made, which two creates at once may not repeat.
   */
  const workerRules = async () => {
    const objects: string[] = [];
    const rules = new Map<string, string[]>();
    for (const family of ["inet", "bridge"]) {
      const listed = JSON.parse((await inWorkerNs("nft", ["-j", "list", "table", family, "procurator"])).stdout) as {
        nftables: Record<string, Record<string, unknown>>[];
      };
      for (const entry of listed.nftables) {
        const text = JSON.stringify(entry, (key, value: unknown) => {
          if (["handle", "packets", "bytes"].includes(key)) return undefined;
          // A set's elements are a set too.
          return key === "elem" && Array.isArray(value) ? value.map((elem) => JSON.stringify(elem)).sort() : value;
        });
        if (!entry.rule) objects.push(text);
        else rules.set(`${family} ${entry.rule.chain}`, [...(rules.get(`${family} ${entry.rule.chain}`) ?? []), text]);
      }
    }
    return JSON.stringify({ objects: objects.sort(), rules: [...rules].sort(([a], [b]) => a.localeCompare(b)) });
  };
  const faultTable = async () => (await inWorkerNs("nft", ["list", "table", "netdev", FAULT_TABLE])).exitCode === 0;

  /** A TCP listener in every VM, answering "hello from <hostname>". */
  const listen = async (vm: Member) => {
    await client.startProcess(vm.id, {
      argv: ["/bin/sh", "-c", `while :; do echo "hello from ${vm.hostname}" | nc -l -p ${TCP_PORT}; done`],
    });
  };

  before(async () => {
    if ("skip" in guest) return;
    worker = await startWorker({ extraArgs: ["--http-listen", "off"] });
    client = await connectWorker(worker.socket);
    const create = async (name: keyof typeof vms, group?: string) => {
      const spec: VmSpecInput = { ...input, hostname: name, ...(group ? { group } : {}) };
      const id = await client.createVm(spec, { waitReadyMs: 120_000 });
      vms[name] = { id, ip: (await client.getVm(id)).ip, hostname: name };
    };
    // Two boots at a time fit on two cores.
    await Promise.all([create("a1", "alpha"), create("a2", "alpha")]);
    await Promise.all([create("b1", "beta"), create("lone")]);
    for (const vm of Object.values(vms)) await listen(vm);
  });
  after(async () => {
    client?.close();
    if (worker) await destroyWorker(worker);
  });

  test("listVms and getVm show the group", async () => {
    const listed = new Map((await client.listVms()).map((vm) => [vm.hostname, vm.group]));
    assert.deepEqual(Object.fromEntries(listed), { a1: "alpha", a2: "alpha", b1: "beta", lone: "" });
  });

  test("a second member with the same hostname is ALREADY_EXISTS, and leaves nothing behind", async () => {
    const before = (await client.listVms()).length;
    await rejectsWith(client.createVm({ ...input, hostname: "a2", group: "alpha" }), "ALREADY_EXISTS", /alpha.*a2/);
    await rejectsWith(client.createVm({ ...input, hostname: "a1", group: "Not_A_Label" }), "INVALID_ARGUMENT", /group/);
    assert.equal((await client.listVms()).length, before);
  });

  test("a create that fails after its network was attached rolls back: no group rule, no claim left", async () => {
    const ruleset = async () => (await inWorkerNs("nft", ["-j", "list", "table", "inet", "procurator"])).stdout;
    const before = await ruleset();
    // The initrd is no kernel: QEMU exits at once, after the worker attached the network.
    const broken = { ...input, kernel: input.initrd, hostname: "first", group: "omega" };
    await assert.rejects(client.createVm(broken, { waitReadyMs: 60_000 }));
    assert.match(worker.logs(), /"group":"omega"[^\n]*"network attached"/, "the network was attached before the failure");
    assert.equal(await ruleset(), before);
    // The hostname was released too: the same create fails the same way, not ALREADY_EXISTS.
    await assert.rejects(client.createVm(broken, { waitReadyMs: 60_000 }), (err: Error) => !/ALREADY_EXISTS/.test(err.message));
    assert.doesNotMatch(await ruleset(), /omega/);
    assert.equal((await client.listVms()).filter((vm) => vm.group === "omega").length, 0);
  });

  test("members resolve each other as <hostname> and <hostname>.<group>; others' names do not resolve", async () => {
    const { a1, a2 } = vms;
    for (const name of ["a2", "a2.alpha"]) {
      const looked = await sh(a1, `nslookup ${name}`);
      assert.match(looked.out, new RegExp(`Address:? *(1: )?${a2.ip.replace(/\./g, "\\.")}`), `${name}:\n${looked.out}${looked.err}`);
    }
    for (const [from, name] of [
      [a1, "b1"],
      [a1, "b1.beta"],
      [vms.lone, "a2"],
      [vms.b1, "a2.alpha"],
    ] as const) {
      const looked = await sh(from, `nslookup ${name}`);
      assert.doesNotMatch(looked.out, /Address:? *(1: )?10\./, `${from.hostname} resolved ${name}:\n${looked.out}`);
    }
  });

  test("members reach each other by name on TCP and by address on UDP", async () => {
    const { a1, a2 } = vms;
    assert.equal(await tcp(a1, "a2.alpha"), "hello from a2");
    assert.equal(await tcp(a2, "a1"), "hello from a1");
    assert.equal(await udpReceived(a1, a2), UDP_PROBES);
    assert.equal(await udpReceived(a2, a1), UDP_PROBES);
  });

  test("a VM outside the group and a member of another group are blocked both ways; the host reaches them all", async () => {
    const { a1, a2, b1, lone } = vms;
    for (const [from, to] of [
      [lone, a1],
      [a1, lone],
      [b1, a2],
      [a2, b1],
    ] as const) {
      assert.equal(await tcp(from, to.ip), "", `${from.hostname} -> ${to.hostname} (tcp)`);
      assert.equal(await udpReceived(from, to), 0, `${from.hostname} -> ${to.hostname} (udp)`);
    }
    // Control: each listener answers the host, so the silence above is the rules' doing.
    for (const vm of [a1, a2, b1, lone]) {
      const answered = await inWorkerNs("node", [
        "-e",
        `const s=require("net").connect(${TCP_PORT},"${vm.ip}");let d="";s.on("data",c=>d+=c);` +
          `s.on("close",()=>{console.log(d.trim());process.exit(0)});setTimeout(()=>process.exit(1),5000)`,
      ]);
      assert.equal(answered.stdout.trim(), `hello from ${vm.hostname}`);
    }
  });

  test("a one-way partition drops exactly one direction; clearing it heals both", async () => {
    const { a1, a2 } = vms;
    // a1 stops receiving from a2; what a1 sends to a2 still arrives.
    const inbound = await client.injectFault(a1.id, { kind: "partition", cidrs: [`${a2.ip}/32`], direction: "inbound" });
    assert.equal(await udpReceived(a2, a1), 0, "a2 -> a1 is dropped");
    assert.equal(await udpReceived(a1, a2), UDP_PROBES, "a1 -> a2 still arrives");
    await client.clearFault(a1.id, inbound);
    // a1 stops sending to a2; what a2 sends to a1 still arrives.
    const outbound = await client.injectFault(a1.id, { kind: "partition", cidrs: [`${a2.ip}/32`], direction: "outbound" });
    assert.equal(await udpReceived(a1, a2), 0, "a1 -> a2 is dropped");
    assert.equal(await udpReceived(a2, a1), UDP_PROBES, "a2 -> a1 still arrives");
    await client.clearFault(a1.id, outbound);
    assert.equal(await udpReceived(a1, a2), UDP_PROBES);
    assert.equal(await udpReceived(a2, a1), UDP_PROBES);
    assert.equal(await tcp(a1, "a2"), "hello from a2");
    assert.equal(await faultTable(), false, "no fault rule left");
  });

  test("a delay aimed at one peer slows only what that peer sends; clearing it restores the speed", async () => {
    const { a1, a2 } = vms;
    /** Median round trip of 5 pings, in ms. */
    const rtt = async (ping: () => Promise<string>) => {
      const times = [...(await ping()).matchAll(/time=([\d.]+)/g)].map((m) => Number(m[1])).sort((a, b) => a - b);
      assert.ok(times.length >= 3, `only ${times.length} replies`);
      return times[Math.floor(times.length / 2)]!;
    };
    const fromPeer = () => rtt(async () => (await sh(a1, `ping -c 5 -i 0.3 -W 3 ${a2.ip}`, 30_000)).out);
    // The host has no ping: its control is the time to a1's TCP answer (the host's packets are not a2's).
    const fromHost = async () => {
      const timed = await inWorkerNs("node", [
        "-e",
        `const t=Date.now();const s=require("net").connect(${TCP_PORT},"${a1.ip}");` +
          `s.on("data",()=>{console.log(Date.now()-t);process.exit(0)});setTimeout(()=>process.exit(1),5000)`,
      ]);
      return Number(timed.stdout.trim());
    };
    const delay = await client.injectFault(a1.id, { kind: "delay", ms: 400, jitterMs: 0, cidrs: [`${a2.ip}/32`] });
    const delayed = await fromPeer();
    const host = await fromHost();
    await client.clearFault(a1.id, delay);
    const after = await fromPeer();
    assert.ok(delayed >= 400, `a2's replies to a1 took ${delayed} ms`);
    assert.ok(host < 300, `the host's TCP answer from a1 (not from the peer) took ${host} ms`);
    assert.ok(after < 200, `after clearing: ${after} ms`);
  });

  test("a worker SIGKILL with a partition active leaves no rule behind after the restart, and the group still works", async () => {
    const { a1, a2 } = vms;
    const rulesBefore = await workerRules();
    await client.injectFault(a2.id, { kind: "partition", cidrs: [`${a1.ip}/32`] });
    assert.equal(await tcp(a1, a2.ip), "");
    client.close();
    await worker.stop("SIGKILL");
    const { stateDir, runtimeDir, netns } = worker;
    worker = await startWorker({ reuse: { stateDir, runtimeDir, netns }, extraArgs: ["--http-listen", "off"] });
    client = await connectWorker(worker.socket);
    await waitFor("the restarted worker to recover", 30_000, async () => ((await client.listVms()).length === 4 ? true : undefined));
    assert.equal(await faultTable(), false, "the fault table is gone");
    assert.deepEqual(await client.listFaults(a2.id), []);
    assert.equal(await workerRules(), rulesBefore, "the worker's tables are rebuilt as they were");
    await waitFor("the agent to answer again", 30_000, async () => ((await sh(a1, "true")).code === 0 ? true : undefined));
    assert.equal(await tcp(a1, "a2.alpha"), "hello from a2");
    assert.equal(await tcp(vms.lone, a2.ip), "");
  });

  test("a deleted member's names stop resolving; the group's rules go with its last member", async () => {
    const { a1, a2 } = vms;
    await client.deleteVm(a2.id);
    // a1 keeps answering through the gateway: deleting a2 removed a bridge port, which once moved
    // the bridge's MAC under a1 (its DNS then went silent until its ARP entry went stale).
    const resolves = async (name: string) => /Address:? *(1: )?10\./.test((await sh(a1, `nslookup ${name}`)).out);
    assert.equal(await resolves("a1.alpha"), true, "a1 keeps its own name");
    await waitFor("a2's names to go", 30_000, async () => ((await resolves("a2.alpha")) ? undefined : true), 1000);
    assert.equal(await resolves("a2"), false);
    assert.equal(await resolves("a1"), true, "and still has it");
    await client.deleteVm(a1.id);
    const left = (await inWorkerNs("nft", ["list", "table", "inet", "procurator"])).stdout;
    assert.doesNotMatch(left, /alpha/);
    assert.match(left, /beta/, "the other group stays");
  });
});
