// The nemesis library's shapes (examples/lib/nemesis.ts): who is cut from whom, and that heal
// clears exactly what was injected. A fake client stands in for the worker (the faults themselves
// run on real guests in test/net/groups.test.ts and the etcd example).
import assert from "node:assert/strict";
import { test } from "node:test";
import type { FaultInput } from "../../worker/core/api.js";
import { bridge, type ClusterNode, cutsOf, isolate, majorityMinority, Nemesis, ring, split } from "../../examples/lib/nemesis.js";

const nodes: ClusterNode[] = ["n1", "n2", "n3", "n4", "n5"].map((name, index) => ({ id: `vm-${name}`, ip: `10.213.0.${index + 2}`, name }));
const [n1, n2, n3, n4, n5] = nodes as [ClusterNode, ClusterNode, ClusterNode, ClusterNode, ClusterNode];

/** node name -> names it cannot reach. */
const cutNames = (components: ClusterNode[][]) =>
  Object.fromEntries([...cutsOf(nodes, components)].map(([node, peers]) => [node.name, peers.map((peer) => peer.name)]));

test("isolate: one node cut from all others, and they from it", () => {
  assert.deepEqual(cutNames(isolate(nodes, n3)), { n1: ["n3"], n2: ["n3"], n3: ["n1", "n2", "n4", "n5"], n4: ["n3"], n5: ["n3"] });
});

test("majority/minority: 3 and 2; bridge: two halves sharing one node; ring: neighbours only; split: everyone apart", () => {
  assert.deepEqual(
    majorityMinority(nodes).map((part) => part.length),
    [3, 2],
  );
  assert.deepEqual(cutNames(majorityMinority(nodes)).n1, ["n4", "n5"]);
  const bridged = cutNames(bridge(nodes));
  assert.equal(bridged.n3, undefined, "the bridge node reaches everyone");
  assert.deepEqual(bridged.n1, ["n4", "n5"]);
  assert.deepEqual(bridged.n5, ["n1", "n2"]);
  assert.deepEqual(cutNames(ring(nodes)).n1, ["n3", "n4"]);
  assert.deepEqual(cutNames(ring(nodes)).n3, ["n1", "n5"]);
  assert.deepEqual(cutNames(split([n1, n2, n3])).n1, ["n2", "n3", "n4", "n5"]);
});

test("the nemesis injects one partition per cut node and heal clears exactly those", async () => {
  const injected: { id: string; fault: FaultInput; faultId: string }[] = [];
  const cleared: string[] = [];
  const client = {
    injectFault: async (id: string, fault: FaultInput) => {
      const faultId = `f${injected.length}`;
      injected.push({ id, fault, faultId });
      return faultId;
    },
    clearFault: async (id: string, faultId: string) => void cleared.push(`${id}/${faultId}`),
  };
  const nemesis = new Nemesis(client);
  await nemesis.partition(nodes, isolate(nodes, n1));
  await nemesis.oneWay(n2, [n4]);
  await nemesis.loss(n5, [n4], 25);
  assert.equal(injected.length, 7);
  assert.deepEqual(injected.find((each) => each.id === n1.id)?.fault, {
    kind: "partition",
    cidrs: [n2, n3, n4, n5].map((node) => `${node.ip}/32`),
  });
  assert.deepEqual(injected[5]!.fault, { kind: "partition", cidrs: [`${n4.ip}/32`], direction: "outbound" });
  assert.deepEqual(injected[6]!.fault, { kind: "loss", percent: 25, cidrs: [`${n4.ip}/32`] });
  assert.ok(nemesis.describe().includes("n1 cut from n2, n3, n4, n5"));
  await nemesis.heal();
  assert.deepEqual(cleared.sort(), injected.map(({ id, faultId }) => `${id}/${faultId}`).sort());
  assert.deepEqual(nemesis.describe(), []);
});
