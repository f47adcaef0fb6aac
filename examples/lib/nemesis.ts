// A nemesis for clusters of VMs in one group, over the Worker RPC: the usual Jepsen partition
// shapes (isolate one node, majority/minority, bridge, ring, any grouping), one-way cuts, loss and
// delay towards chosen peers, and heal. A shape is a list of components: two nodes reach each other
// while some component holds both. Each node that must not reach another gets one partition fault
// naming those peers, so heal (or the worker's own recovery) undoes exactly what was done.
import type { FaultInput } from "../../worker/core/api.js";
import type { WorkerClient } from "../../worker/rpc/worker-client.js";

export interface ClusterNode {
  id: string;
  ip: string;
  name: string;
}

/** Which nodes still reach each other: every pair that shares no component is cut. */
export type Components = ClusterNode[][];

/** One node alone, the rest together. */
export function isolate(nodes: ClusterNode[], victim: ClusterNode): Components {
  return [[victim], nodes.filter((node) => node.id !== victim.id)];
}

/** The first ⌊n/2⌋+1 nodes (in the order given: shuffle first for a random split) and the rest. */
export function majorityMinority(nodes: ClusterNode[]): Components {
  const majority = Math.floor(nodes.length / 2) + 1;
  return [nodes.slice(0, majority), nodes.slice(majority)];
}

/** Two halves that share one node (the first of the second half), which alone reaches everyone. */
export function bridge(nodes: ClusterNode[]): Components {
  const middle = Math.floor(nodes.length / 2);
  return [nodes.slice(0, middle + 1), nodes.slice(middle)];
}

/** Each node reaches only its two neighbours on a ring, in the order given. */
export function ring(nodes: ClusterNode[]): Components {
  return nodes.map((node, index) => [node, nodes[(index + 1) % nodes.length]!]);
}

/** Every node apart: n components of one. */
export function split(nodes: ClusterNode[]): Components {
  return nodes.map((node) => [node]);
}

/** For each node, the peers it must not reach under `components` (nodes in no component reach no one). */
export function cutsOf(nodes: ClusterNode[], components: Components): Map<ClusterNode, ClusterNode[]> {
  const reaches = (a: ClusterNode, b: ClusterNode) =>
    components.some((part) => part.some((n) => n.id === a.id) && part.some((n) => n.id === b.id));
  const cuts = new Map<ClusterNode, ClusterNode[]>();
  for (const node of nodes) {
    const unreachable = nodes.filter((other) => other.id !== node.id && !reaches(node, other));
    if (unreachable.length) cuts.set(node, unreachable);
  }
  return cuts;
}

const hosts = (peers: ClusterNode[]) => peers.map((peer) => `${peer.ip}/32`);

/** A fault in place: which VM has it, so heal can clear it. */
interface Injected {
  vmId: string;
  faultId: string;
  description: string;
}

export class Nemesis {
  private readonly active: Injected[] = [];

  constructor(private readonly client: Pick<WorkerClient, "injectFault" | "clearFault">) {}

  /** Cuts every pair of nodes that shares no component (both ways); resolves once all rules are in place. */
  async partition(nodes: ClusterNode[], components: Components): Promise<void> {
    const cuts = [...cutsOf(nodes, components)];
    await Promise.all(
      cuts.map(([node, peers]) => this.inject(node, { kind: "partition", cidrs: hosts(peers) }, `${node.name} cut from ${names(peers)}`)),
    );
  }

  /** `from` can no longer send to `to`; what they send to it still arrives. */
  oneWay(from: ClusterNode, to: ClusterNode[]): Promise<void> {
    return this.inject(from, { kind: "partition", cidrs: hosts(to), direction: "outbound" }, `${from.name} cannot send to ${names(to)}`);
  }

  /** Drops `percent` of the packets between `node` and `peers`, each way. */
  loss(node: ClusterNode, peers: ClusterNode[], percent: number): Promise<void> {
    return this.inject(node, { kind: "loss", percent, cidrs: hosts(peers) }, `${percent}% loss between ${node.name} and ${names(peers)}`);
  }

  /** Delays what `peers` send to `node` (needs sch_netem on the worker's host). */
  delay(node: ClusterNode, peers: ClusterNode[], ms: number, jitterMs = 0): Promise<void> {
    return this.inject(node, { kind: "delay", ms, jitterMs, cidrs: hosts(peers) }, `${ms} ms delay from ${names(peers)} to ${node.name}`);
  }

  /** What is in place now, described. */
  describe(): string[] {
    return this.active.map((fault) => fault.description);
  }

  /** Clears everything this nemesis injected. */
  async heal(): Promise<void> {
    const faults = this.active.splice(0);
    await Promise.all(faults.map(({ vmId, faultId }) => this.client.clearFault(vmId, faultId)));
  }

  private async inject(node: ClusterNode, fault: FaultInput, description: string): Promise<void> {
    const faultId = await this.client.injectFault(node.id, fault);
    this.active.push({ vmId: node.id, faultId, description });
  }
}

const names = (nodes: ClusterNode[]) => nodes.map((node) => node.name).join(", ");
