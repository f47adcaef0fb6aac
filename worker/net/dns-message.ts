// DNS messages between a guest and the worker's DNS proxy: a query is checked byte by byte before
// anything acts on it, and every answer is built from scratch (never the upstream's bytes), so no
// field a guest or an upstream chose travels through. Only what a stub resolver sends is accepted:
// one question, class IN, no answer or authority records, at most one additional (EDNS's OPT).
import dnsPacket from "dns-packet";
import { isDomainName } from "./allowlist.js";

/** Classic DNS over UDP: queries and our answers both fit in 512 bytes. */
export const MAX_UDP_MESSAGE = 512;

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, REFUSED: 5, NOTIMP: 4 } as const;

export interface Query {
  id: number;
  /** The name exactly as asked (resolvers randomise its case); echoed in the answer. */
  asked: string;
  /** Lower case, no trailing dot: what allowlists hold. */
  name: string;
  type: string;
  recursionDesired: boolean;
}

/** Why a message gets no answer at all, or which error answers it. */
export type Verdict = { query: Query } | { drop: string } | { reply: Buffer; reason: string };

/** Reads a guest's query; only a well-formed standard query comes back as `query`. */
export function readQuery(message: Buffer): Verdict {
  if (message.length < 12) return { drop: "shorter than a DNS header" };
  if (message.length > MAX_UDP_MESSAGE) return { drop: `longer than ${MAX_UDP_MESSAGE} bytes` };
  const id = message.readUInt16BE(0);
  const flags = message.readUInt16BE(2);
  // A response sent to us is never answered: that is how reflection loops start.
  if (flags & 0x8000) return { drop: "a response, not a query" };
  const counts = [4, 6, 8, 10].map((offset) => message.readUInt16BE(offset));
  const refuse = (rcode: number, reason: string): Verdict => ({ reply: errorReply(id, flags, rcode), reason });
  if ((flags >> 11) & 0xf) return refuse(RCODE.NOTIMP, "opcode other than QUERY");
  if (counts[0] !== 1 || counts[1] !== 0 || counts[2] !== 0 || counts[3]! > 1)
    return refuse(RCODE.FORMERR, `section counts ${counts.join("/")}`);
  let decoded: dnsPacket.DecodedPacket;
  try {
    decoded = dnsPacket.decode(message);
  } catch (err) {
    return refuse(RCODE.FORMERR, `undecodable: ${(err as Error).message}`);
  }
  if (dnsPacket.decode.bytes !== message.length) return refuse(RCODE.FORMERR, "trailing bytes");
  const question = decoded.questions?.[0];
  if (question?.class !== "IN") return refuse(RCODE.REFUSED, "class other than IN");
  if (decoded.additionals?.some((record) => record.type !== "OPT")) return refuse(RCODE.FORMERR, "additional record other than OPT");
  const asked = question.name;
  const name = asked.toLowerCase().replace(/\.$/, "");
  if (!isDomainName(name)) return { reply: errorReply(id, flags, RCODE.REFUSED, question), reason: "not a host name" };
  return { query: { id, asked, name, type: question.type, recursionDesired: (flags & dnsPacket.RECURSION_DESIRED) !== 0 } };
}

function errorReply(id: number, queryFlags: number, rcode: number, question?: dnsPacket.Question): Buffer {
  const rd = queryFlags & dnsPacket.RECURSION_DESIRED;
  return dnsPacket.encode({
    type: "response",
    id,
    flags: rd | dnsPacket.RECURSION_AVAILABLE | rcode,
    questions: question ? [{ name: question.name, type: question.type, class: "IN" }] : [],
  });
}

/** REFUSED (or another rcode) for a query, echoing its question. */
export function refusal(query: Query, rcode: number = RCODE.REFUSED): Buffer {
  return reply(query, rcode, []);
}

/**
 * A's for the asked name, each with its TTL; as many as fit in one UDP message. An empty list is
 * NODATA (the name exists, no record of that type), which is also the answer to every type but A.
 */
export function reply(query: Query, rcode: number, addresses: { address: string; ttl: number }[]): Buffer {
  const packet: dnsPacket.Packet = {
    type: "response",
    id: query.id,
    flags: (query.recursionDesired ? dnsPacket.RECURSION_DESIRED : 0) | dnsPacket.RECURSION_AVAILABLE | rcode,
    questions: [{ name: query.asked, type: query.type as dnsPacket.RecordType, class: "IN" }],
    answers: addresses.map(({ address, ttl }) => ({ name: query.asked, type: "A", class: "IN", ttl, data: address })),
  };
  while (dnsPacket.encodingLength(packet) > MAX_UDP_MESSAGE) packet.answers!.pop();
  return dnsPacket.encode(packet);
}
