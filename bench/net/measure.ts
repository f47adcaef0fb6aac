// The attach + detach timing both network benches take.
import type { NetworkPort } from "../../worker/ports/index.js";
import { median } from "../stats.js";

/** Medians of `runs` rounds of `attach(id)` then `network.detach(id)`, each with a fresh VM id. */
export async function attachDetachMedians(network: NetworkPort, runs: number, attach: (id: string) => Promise<unknown>) {
  const attachMs: number[] = [];
  const detachMs: number[] = [];
  for (let run = 0; run < runs; run++) {
    const id = `vm-x${String(run).padStart(9, "0")}`;
    const start = performance.now();
    await attach(id);
    const attached = performance.now();
    await network.detach(id);
    detachMs.push(performance.now() - attached);
    attachMs.push(attached - start);
  }
  return {
    attach: median(attachMs),
    detach: median(detachMs),
    total: median(attachMs.map((value, index) => value + detachMs[index]!)),
  };
}
