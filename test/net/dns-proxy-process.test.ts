// The DNS proxy as the worker runs it: a child process on a real UDP port (loopback), asking a
// small upstream server of the test's own, and asking the worker to open each answer first.
// What a worker relies on: it starts and says so, it survives being killed (restarted with the
// allowlists it had), and a port it cannot have is a clear failure, not a hang.
import assert from "node:assert/strict";
import { createSocket, type Socket } from "node:dgram";
import { after, before, describe, test } from "node:test";
import dnsPacket from "dns-packet";
import pino from "pino";
import type { Answer } from "../../worker/net/allowlist.js";
import { DnsProxyProcess } from "../../worker/net/dns-proxy-process.js";
import { waitFor } from "../helpers/vm.js";

const HOST = "127.0.0.1";
const log = pino({ level: process.env.PCR_TEST_LOG ?? "silent" });

/** A tiny authoritative server: every A question gets 198.18.0.10 with TTL 60; counts what it was asked. */
async function upstreamServer(): Promise<{ socket: Socket; port: number; asked: string[] }> {
  const socket = createSocket("udp4");
  const asked: string[] = [];
  socket.on("message", (message, remote) => {
    const query = dnsPacket.decode(message);
    const question = query.questions![0]!;
    asked.push(question.name);
    const answers =
      question.type === "A" ? [{ name: question.name, type: "A" as const, class: "IN" as const, ttl: 60, data: "198.18.0.10" }] : [];
    socket.send(
      dnsPacket.encode({ type: "response", id: query.id, flags: dnsPacket.RECURSION_AVAILABLE, questions: query.questions, answers }),
      remote.port,
      remote.address,
    );
  });
  await new Promise<void>((resolve) => socket.bind(0, HOST, resolve));
  return { socket, port: socket.address().port, asked };
}

async function freeUdpPort(): Promise<number> {
  const socket = createSocket("udp4");
  await new Promise<void>((resolve) => socket.bind(0, HOST, resolve));
  const { port } = socket.address();
  await new Promise<void>((resolve) => socket.close(() => resolve()));
  return port;
}

/** One A query from HOST; the answer's rcode and addresses, or undefined after 1 s of silence. */
async function ask(port: number, name: string): Promise<{ rcode: string; addresses: string[] } | undefined> {
  const client = createSocket("udp4");
  try {
    const answer = new Promise<{ rcode: string; addresses: string[] } | undefined>((resolve) => {
      const timer = setTimeout(() => resolve(undefined), 1000);
      client.on("message", (message) => {
        clearTimeout(timer);
        const decoded = dnsPacket.decode(message) as dnsPacket.DecodedPacket & { rcode: string };
        resolve({ rcode: decoded.rcode, addresses: (decoded.answers ?? []).map((record) => String((record as { data: unknown }).data)) });
      });
    });
    await new Promise<void>((resolve) => client.bind(0, HOST, resolve));
    client.send(
      dnsPacket.encode({ type: "query", id: 77, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: "A", name }] }),
      port,
      HOST,
    );
    return await answer;
  } finally {
    client.close();
  }
}

describe("DNS proxy process", () => {
  let upstream: Awaited<ReturnType<typeof upstreamServer>>;
  let proxy: DnsProxyProcess;
  let port: number;
  const published: { ip: string; name: string; answers: Answer[] }[] = [];

  before(async () => {
    upstream = await upstreamServer();
    port = await freeUdpPort();
    proxy = new DnsProxyProcess({
      listen: HOST,
      port,
      upstream: `${HOST}:${upstream.port}`,
      maxTtlSeconds: 3600,
      log,
      publish: async (ip, name, answers) => {
        published.push({ ip, name, answers });
        return answers.map((answer) => answer.address);
      },
    });
    await proxy.start();
    proxy.allow(HOST, ["allowed.test"]);
  });

  after(async () => {
    await proxy?.close();
    upstream?.socket.close();
  });

  test("it answers an allowed name after the worker opened it, and refuses others without asking upstream", async () => {
    assert.deepEqual(await ask(port, "allowed.test"), { rcode: "NOERROR", addresses: ["198.18.0.10"] });
    assert.deepEqual(published, [{ ip: HOST, name: "allowed.test", answers: [{ address: "198.18.0.10", ttl: 60 }] }]);
    assert.equal((await ask(port, "secret.exfil.example"))?.rcode, "REFUSED");
    assert.deepEqual(upstream.asked, ["allowed.test"]);
    const stats = await proxy.stats();
    assert.equal(stats.refused, 1);
    assert.equal(stats.upstreamQueries, 1);
  });

  test("killed, it is started again with the allowlists it had", async () => {
    const pid = (proxy as unknown as { child: { pid: number } }).child.pid;
    process.kill(pid, "SIGKILL");
    const answer = await waitFor(
      "the restarted proxy to answer",
      15_000,
      async () => {
        const current = (proxy as unknown as { child?: { pid: number } }).child?.pid;
        if (current === undefined || current === pid) return undefined;
        const reply = await ask(port, "allowed.test");
        return reply?.rcode === "NOERROR" ? reply : undefined;
      },
      200,
    );
    assert.deepEqual(answer.addresses, ["198.18.0.10"]);
  });

  test("a second proxy on a port that stays taken fails to start, naming the address", async () => {
    const second = new DnsProxyProcess({
      listen: HOST,
      port,
      upstream: `${HOST}:${upstream.port}`,
      maxTtlSeconds: 60,
      log,
      publish: async () => [],
      bindWaitMs: 300,
    });
    await assert.rejects(second.start(), /could not listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
    await second.close();
  });
});
