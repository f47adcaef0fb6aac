// The NetFaultPort: partition and loss through nftables, delay and bandwidth through tc.
import type { NetFault, NetFaultPort } from "../ports/index.js";
import { type Runner, createRunner } from "../net/run.js";
import { NftFaults } from "./nft-faults.js";
import { TcShaper } from "./tc.js";

export function createNetFaults(options: { netns?: string; run?: Runner } = {}): NetFaultPort & { nft: NftFaults; tc: TcShaper } {
  const run = options.run ?? createRunner({ netns: options.netns });
  const nft = new NftFaults(run, options.netns);
  const tc = new TcShaper(run);
  return {
    nft,
    tc,
    async apply(faultId: string, tap: string, fault: NetFault) {
      if (fault.kind === "partition" || fault.kind === "loss") await nft.apply(faultId, tap, fault);
      else await tc.apply(tap, fault);
    },
    async clear(faultId: string, tap: string, fault: NetFault) {
      if (fault.kind === "partition" || fault.kind === "loss") await nft.clear(faultId);
      else await tc.clear(tap);
    },
    async reset(taps: string[]) {
      const removed = [...(await nft.reset())];
      for (const tap of taps) {
        const shaped = (await tc.show(tap)).filter((qdisc) => ["tbf", "netem", "prio"].includes(qdisc.kind));
        if (shaped.length === 0) continue;
        await tc.clear(tap);
        removed.push(`qdisc:${tap}:${shaped.map((qdisc) => qdisc.kind).join(",")}`);
      }
      return removed;
    },
  };
}
