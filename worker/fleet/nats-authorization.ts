// The narrowest NATS permissions a fleet runs with (docs/fleet.md "Securing NATS"): one NATS user
// per worker host, allowed only its own call subject, its own pcr_hosts key and events subject, and
// the JetStream API calls a member makes; gateways get the whole fleet. `fleetAuthorization` writes
// the nats-server `authorization` block (2.9 syntax) that the doc shows and the tests run.
import { BUCKETS, EVENTS_STREAM, eventsSubject } from "./buckets.js";
import { HOST_ID } from "./host-info.js";
import { hostCallSubject } from "./nats-rpc.js";

/**
 * A worker's reply subjects live under this prefix (connect.ts): a host may subscribe its own
 * replies only, never another host's answers to a gateway.
 */
export const workerInboxPrefix = (hostId: string): string => `_INBOX.${hostId}`;

export interface NatsPermissions {
  publish: string[];
  subscribe: string[];
  /** May answer the requests it receives (its call subject's callers). */
  allowResponses: boolean;
}

/** What worker `hostId` may do: see member.ts, nats-rpc.ts and buckets.ts for each subject's use. */
export function workerPermissions(hostId: string): NatsPermissions {
  if (!HOST_ID.test(hostId)) throw new Error(`bad host id ${JSON.stringify(hostId)}`);
  const hosts = `KV_${BUCKETS.hosts}`;
  const vms = `KV_${BUCKETS.vms}`;
  return {
    publish: [
      `$KV.${BUCKETS.hosts}.${hostId}`, // heartbeat, and its delete on a clean shutdown
      `$KV.${BUCKETS.vms}.>`, // its VMs' locations: keyed by VM id, not by host
      eventsSubject(hostId),
      "$JS.API.INFO", // every JetStream client's first check
      `$JS.API.STREAM.INFO.${hosts}`,
      `$JS.API.STREAM.INFO.${vms}`,
      `$JS.API.STREAM.INFO.${EVENTS_STREAM}`,
      `$JS.API.DIRECT.GET.${hosts}.$KV.${BUCKETS.hosts}.${hostId}`,
      `$JS.API.DIRECT.GET.${vms}.>`,
      // keys() of pcr_vms (its VMs left by an earlier run): an ordered consumer, created and checked
      `$JS.API.CONSUMER.CREATE.${vms}.>`,
      `$JS.API.CONSUMER.INFO.${vms}.*`,
    ],
    subscribe: [hostCallSubject(hostId), `${workerInboxPrefix(hostId)}.>`],
    allowResponses: true,
  };
}

/** A gateway reads and writes the whole fleet, and creates its buckets and stream. */
export function gatewayPermissions(): NatsPermissions {
  return {
    publish: ["pcr.host.*.call", `$KV.${BUCKETS.hosts}.>`, `$KV.${BUCKETS.vms}.>`, `$KV.${BUCKETS.intents}.>`, "$JS.API.>"],
    subscribe: ["_INBOX.>", "pcr.events.>"],
    allowResponses: false,
  };
}

export interface FleetAuthorizationOptions {
  /** One NATS user per worker host, named by its host id. */
  hosts: Array<{ hostId: string; password: string }>;
  gateways: Array<{ user: string; password: string }>;
}

/**
 * The nats-server `authorization { users: [...] }` block. Passwords go in as given: a bcrypt hash
 * (`nats server passwd`) keeps them out of the file.
 */
export function fleetAuthorization(options: FleetAuthorizationOptions): string {
  const users = [
    ...options.hosts.map(({ hostId, password }) => user(hostId, password, workerPermissions(hostId))),
    ...options.gateways.map(({ user: name, password }) => user(name, password, gatewayPermissions())),
  ];
  return `authorization {\n  users: [\n${users.join("\n")}\n  ]\n}\n`;
}

function user(name: string, password: string, permissions: NatsPermissions): string {
  // Quoted strings: nats-server reads an unquoted $name as a variable.
  const list = (subjects: string[]) => `[${subjects.map((subject) => JSON.stringify(subject)).join(", ")}]`;
  return [
    `    {`,
    `      user: ${JSON.stringify(name)}, password: ${JSON.stringify(password)}`,
    `      permissions: {`,
    `        publish: { allow: ${list(permissions.publish)} }`,
    `        subscribe: { allow: ${list(permissions.subscribe)} }`,
    ...(permissions.allowResponses ? [`        allow_responses: true`] : []),
    `      }`,
    `    }`,
  ].join("\n");
}
