// DNS messages from guests: what is read, what is refused, what is dropped, and that no byte
// sequence makes the reader throw.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import dnsPacket from "dns-packet";
import { MAX_UDP_MESSAGE, RCODE, readQuery, reply } from "../../worker/net/dns-message.js";

const query = (overrides: Partial<dnsPacket.Packet> = {}) =>
  dnsPacket.encode({
    type: "query",
    id: 4242,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type: "A", name: "Allowed.Test", class: "IN" }],
    ...overrides,
  });
const rcodeOf = (message: Buffer) => message.readUInt16BE(2) & 0xf;

test("a stub resolver's A query is read, its name normalised and its case kept for the echo", () => {
  const verdict = readQuery(query());
  assert.ok("query" in verdict, JSON.stringify(verdict));
  assert.deepEqual(verdict.query, { id: 4242, asked: "Allowed.Test", name: "allowed.test", type: "A", recursionDesired: true });
  const withEdns = query({ additionals: [{ type: "OPT", name: ".", udpPayloadSize: 1232, flags: 0 } as dnsPacket.Answer] });
  assert.ok("query" in readQuery(withEdns));
});

test("responses, runts and oversized messages are dropped unanswered", () => {
  assert.match((readQuery(Buffer.alloc(5)) as { drop: string }).drop, /header/);
  const response = dnsPacket.encode({ type: "response", id: 1, questions: [{ type: "A", name: "a.test" }] });
  assert.match((readQuery(response) as { drop: string }).drop, /response/);
  assert.match((readQuery(Buffer.concat([query(), Buffer.alloc(MAX_UDP_MESSAGE)])) as { drop: string }).drop, /longer/);
});

test("anything but one plain question is answered with an error rcode, never resolved", () => {
  const cases: [Buffer, number][] = [
    [
      query({
        questions: [
          { type: "A", name: "a.test" },
          { type: "A", name: "b.test" },
        ],
      }),
      RCODE.FORMERR,
    ],
    [query({ answers: [{ type: "A", name: "a.test", data: "1.2.3.4" }] }), RCODE.FORMERR],
    [query({ additionals: [{ type: "TXT", name: "a.test", data: "x" }] }), RCODE.FORMERR],
    [query({ questions: [{ type: "A", name: "a.test", class: "CH" }] }), RCODE.REFUSED],
    [query({ questions: [{ type: "A", name: "under_score.test" }] }), RCODE.REFUSED],
    [query({ flags: 2 << 11 }), RCODE.NOTIMP],
    [Buffer.concat([query(), Buffer.from([0])]), RCODE.FORMERR],
  ];
  for (const [message, rcode] of cases) {
    const verdict = readQuery(message);
    assert.ok("reply" in verdict, JSON.stringify(verdict));
    assert.equal(rcodeOf(verdict.reply), rcode, verdict.reason);
    assert.equal(verdict.reply.readUInt16BE(0), 4242);
  }
});

test("random and mutated bytes never throw", () => {
  const valid = query();
  for (let i = 0; i < 20_000; i++) {
    const message = i % 2 ? randomBytes(i % 600) : Buffer.from(valid);
    if (i % 2 === 0)
      for (let flips = 0; flips < 1 + (i % 7); flips++) message[(i * 31 + flips * 17) % message.length] ^= 1 + ((i + flips) % 255);
    const verdict = readQuery(message);
    assert.ok("query" in verdict || "drop" in verdict || "reply" in verdict);
  }
});

test("answers echo the question, carry the TTLs and never exceed one UDP message", () => {
  const verdict = readQuery(query());
  assert.ok("query" in verdict);
  const many = Array.from({ length: 200 }, (_, i) => ({ address: `198.18.${i >> 8}.${i & 255}`, ttl: 30 }));
  const message = reply(verdict.query, RCODE.NOERROR, many);
  assert.ok(message.length <= MAX_UDP_MESSAGE, `${message.length} bytes`);
  const decoded = dnsPacket.decode(message) as Required<dnsPacket.DecodedPacket>;
  assert.equal(decoded.id, 4242);
  assert.equal(decoded.type, "response");
  assert.equal(decoded.questions[0]?.name, "Allowed.Test");
  assert.ok(decoded.answers.length > 10 && decoded.answers.length < 200);
  assert.deepEqual(decoded.answers[0], { name: "Allowed.Test", type: "A", class: "IN", ttl: 30, flush: false, data: "198.18.0.0" });
  const unknownType = readQuery(query({ questions: [{ type: "UNKNOWN_999" as dnsPacket.RecordType, name: "a.test" }] }));
  assert.ok("query" in unknownType);
  assert.equal(dnsPacket.decode(reply(unknownType.query, RCODE.NOERROR, [])).questions?.[0]?.type, "UNKNOWN_999");
});
