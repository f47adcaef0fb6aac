// A fleet's network for tests: a bridge of the test's own carrying a /24, and per host a veth from
// the host's namespace onto it. NATS listens on the bridge's address; a host's link can be cut
// (its veth down) and restored, as a network partition of that host would.
import { randomBytes } from "node:crypto";
import { execa } from "execa";

export interface FleetNet {
  /** The bridge's address: where NATS listens. */
  address: string;
  /** Puts `netns` on the bridge; its link can be cut and restored. */
  attach(netns: string): Promise<FleetLink>;
  destroy(): Promise<void>;
}

export interface FleetLink {
  address: string;
  cut(): Promise<void>;
  restore(): Promise<void>;
}

const ip = (...args: string[]) => execa("ip", args);

export async function createFleetNet(): Promise<FleetNet> {
  const tag = randomBytes(3).toString("hex");
  const bridge = `pcrfb${tag}`;
  // 10.252.0.0/16 is not the worker's default VM subnet; one /24 of it per fleet, chosen at random.
  const prefix = `10.252.${1 + (randomBytes(1)[0]! % 250)}`;
  const veths: string[] = [];
  await ip("link", "add", bridge, "type", "bridge");
  try {
    await ip("addr", "add", `${prefix}.1/24`, "dev", bridge);
    await ip("link", "set", bridge, "up");
  } catch (err) {
    await ip("link", "delete", bridge).catch(() => undefined);
    throw err;
  }
  return {
    address: `${prefix}.1`,
    async attach(netns) {
      const index = veths.length + 10;
      const outside = `pcrf${tag}${index}`;
      veths.push(outside);
      await ip("link", "add", outside, "type", "veth", "peer", "name", "fleet0", "netns", netns);
      await ip("link", "set", outside, "master", bridge, "up");
      await ip("-n", netns, "addr", "add", `${prefix}.${index}/24`, "dev", "fleet0");
      await ip("-n", netns, "link", "set", "fleet0", "up");
      return {
        address: `${prefix}.${index}`,
        cut: async () => void (await ip("link", "set", outside, "down")),
        restore: async () => void (await ip("link", "set", outside, "up")),
      };
    },
    async destroy() {
      for (const veth of veths) await ip("link", "delete", veth).catch(() => undefined);
      await ip("link", "delete", bridge).catch(() => undefined);
    },
  };
}
