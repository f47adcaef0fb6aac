// The DNS proxy on a real UDP socket (loopback, a free port), with the upstream and the allow set
// as plain functions that record their calls: which queries reach upstream, which are opened
// before the answer leaves, and what the guest is told.
import assert from "node:assert/strict";
import { createSocket } from "node:dgram";
import { after, before, describe, test } from "node:test";
import dnsPacket from "dns-packet";
import type { Answer } from "../../worker/net/allowlist.js";
import { DnsProxy } from "../../worker/net/dns-proxy.js";
import { RCODE } from "../../worker/net/dns-message.js";
import { waitFor } from "../helpers/vm.js";

const VM_IP = "127.0.0.1";
const RECORDS: Record<string, Answer[]> = {
  "allowed.test": [
    { address: "198.18.0.10", ttl: 30 },
    { address: "169.254.169.254", ttl: 30 },
  ],
  "empty.test": [],
};

/** What the tests read of an answer (dns-packet's types omit rcode). */
interface Decoded {
  rcode: string;
  answers: { name: string; data: string; ttl: number }[];
}

describe("DNS proxy", () => {
  const upstream: string[] = [];
  const published: { ip: string; name: string; addresses: string[] }[] = [];
  let proxy: DnsProxy;
  let port: number;
  let nextId = 1;

  /** Sends one query from VM_IP and waits for its answer (undefined: none within 500 ms). */
  const ask = async (name: string, type: dnsPacket.RecordType = "A", raw?: Buffer) => {
    const client = createSocket("udp4");
    try {
      const id = nextId++;
      const answer = new Promise<Decoded | undefined>((resolve) => {
        const timer = setTimeout(() => resolve(undefined), 500);
        client.on("message", (message) => {
          clearTimeout(timer);
          resolve(dnsPacket.decode(message) as unknown as Decoded);
        });
      });
      await new Promise<void>((resolve) => client.bind(0, VM_IP, resolve));
      client.send(
        raw ?? dnsPacket.encode({ type: "query", id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name }] }),
        port,
        VM_IP,
      );
      return await answer;
    } finally {
      client.close();
    }
  };

  before(async () => {
    proxy = new DnsProxy({
      resolve: async (name) => {
        upstream.push(name);
        return RECORDS[name] ?? [];
      },
      // The worker drops denied ranges; the proxy must tell only what it accepted.
      publish: async (ip, name, answers) => {
        const addresses = answers.map((answer) => answer.address).filter((address) => !address.startsWith("169.254."));
        published.push({ ip, name, addresses });
        return addresses;
      },
      log: () => undefined,
      limits: { queriesPerSecond: 5, burst: 20 },
    });
    port = (await proxy.listen(VM_IP, 0)).port;
    proxy.allow(VM_IP, ["allowed.test", "empty.test"]);
  });

  after(() => proxy.close());

  test("an allowed name is resolved, opened, then answered with what was opened", async () => {
    const answer = await ask("Allowed.TEST");
    assert.equal(answer?.rcode, "NOERROR");
    assert.deepEqual(
      answer?.answers.map((record) => [record.name, record.data, record.ttl]),
      [["Allowed.TEST", "198.18.0.10", 30]],
    );
    assert.deepEqual(upstream, ["allowed.test"]);
    assert.deepEqual(published, [{ ip: VM_IP, name: "allowed.test", addresses: ["198.18.0.10"] }]);
  });

  test("a name off the list is REFUSED and never asked upstream (no tunnel through DNS)", async () => {
    const before = upstream.length;
    const answer = await ask("nbswy3dpeb3w64tmmq.exfil.example");
    assert.equal(answer?.rcode, "REFUSED");
    assert.equal(answer?.answers.length, 0);
    assert.equal(upstream.length, before);
  });

  test("a repeated query is answered from the cache; other types are NODATA without upstream", async () => {
    const before = upstream.length;
    assert.equal((await ask("allowed.test"))?.answers.length, 1);
    const aaaa = await ask("allowed.test", "AAAA");
    assert.equal(aaaa?.rcode, "NOERROR");
    assert.equal(aaaa?.answers.length, 0);
    assert.equal((await ask("allowed.test", "TXT"))?.answers.length, 0);
    assert.equal(upstream.length, before);
    assert.equal((await ask("empty.test"))?.answers.length, 0);
  });

  test("a source that is no VM, and garbage, get silence; a flood is cut at the VM's budget", async () => {
    proxy.forget(VM_IP);
    assert.equal(await ask("allowed.test"), undefined);
    proxy.allow(VM_IP, ["allowed.test"]);
    // Garbage with a header's shape gets an error rcode at most, and nothing goes upstream.
    const asked = upstream.length;
    const garbage = await ask("x", "A", Buffer.from("not dns at all"));
    assert.ok(garbage === undefined || garbage.rcode !== "NOERROR", JSON.stringify(garbage));
    assert.equal(upstream.length, asked);
    const response = dnsPacket.encode({ type: "response", id: 9, questions: [{ type: "A", name: "allowed.test" }] });
    assert.equal(await ask("x", "A", response), undefined);

    const client = createSocket("udp4");
    let answers = 0;
    client.on("message", () => answers++);
    await new Promise<void>((resolve) => client.bind(0, VM_IP, resolve));
    const flood = dnsPacket.encode({ type: "query", id: 7, questions: [{ type: "A", name: "off.list.test" }] });
    const { refused, dropped } = proxy.stats;
    for (let i = 0; i < 200; i++) client.send(flood, port, VM_IP);
    // Every query is either refused (answered) or dropped; wait until all 200 are accounted for
    // and every refusal has arrived.
    const refusedNow = () => proxy.stats.refused - refused;
    await waitFor(
      "the flood to be handled",
      10_000,
      async () => (refusedNow() + proxy.stats.dropped - dropped === 200 && answers === refusedNow() ? true : undefined),
      10,
    );
    client.close();
    // Burst 20 at 5/s: a few more may refill while the flood is read.
    assert.ok(answers >= 1 && answers <= 30, `${answers} of 200 answered`);
    assert.equal(RCODE.REFUSED, 5);
  });
});
