import assert from "node:assert/strict";
import { test } from "node:test";
import type { HostInfo } from "../../worker/fleet/host-info.js";
import { isLost, type PlacementRequest, placeVm, reserve } from "../../worker/fleet/placement.js";
import { throwsWith } from "../helpers/errors.js";
import { GiB, host, NOW, storePath } from "./fleet-hosts.js";

const SPEC_PATHS = [`${storePath("k", "linux")}/bzImage`, `${storePath("i", "initrd")}/initrd`, `${storePath("m", "image")}/root.img`];
const vm = (overrides: Partial<PlacementRequest> = {}): PlacementRequest => ({
  cpu: 2,
  memoryBytes: 4 * GiB,
  diskBytes: 0,
  storePaths: SPEC_PATHS,
  ...overrides,
});
const place = (request: PlacementRequest, hosts: HostInfo[]) => placeVm(request, hosts, NOW);

/** Places `n` VMs one after another as a gateway does between heartbeats, reserving each; their hosts. */
function placeMany(n: number, request: PlacementRequest, hosts: HostInfo[]): string[] {
  const byId = new Map(hosts.map((h) => [h.hostId, h]));
  return Array.from({ length: n }, () => {
    const { hostId } = placeVm(request, [...byId.values()], NOW);
    byId.set(hostId, reserve(byId.get(hostId)!, request));
    return hostId;
  });
}

test("capacity: a full host gets no more; the next VM goes elsewhere; all full is RESOURCE_EXHAUSTED", () => {
  // a holds the paths, so it is preferred until it is full (4 x 2 vCPU = 8 = its capacity).
  const hosts = [host("a", { paths: SPEC_PATHS }), host("b")];
  assert.deepEqual(placeMany(8, vm(), hosts), ["a", "a", "a", "a", "b", "b", "b", "b"]);
  const full = [host("a", { used: { vms: 4, cpu: 8, memoryBytes: 16 * GiB, diskBytes: 0 } })];
  throwsWith(() => place(vm(), full), "RESOURCE_EXHAUSTED", /no host has room for 2 vCPU.*a lacks vms/);
});

test("capacity: each of vms, cpu, memory and disk must fit", () => {
  const used = { vms: 0, cpu: 0, memoryBytes: 0, diskBytes: 0 };
  const cases: Array<[Partial<HostInfo["used"]>, string]> = [
    [{ vms: 4 }, "vms"],
    [{ cpu: 7 }, "cpu"],
    [{ memoryBytes: 13 * GiB }, "memory"],
    [{ diskBytes: 99 * GiB }, "disk"],
  ];
  for (const [over, lacks] of cases) {
    const hosts = [host("a", { used: { ...used, ...over } })];
    throwsWith(() => place(vm({ diskBytes: 2 * GiB }), hosts), "RESOURCE_EXHAUSTED", new RegExp(`a lacks ${lacks}`));
  }
  // Exactly full fits.
  assert.equal(place(vm({ cpu: 8, memoryBytes: 16 * GiB, diskBytes: 100 * GiB }), [host("a")]).hostId, "a");
  // More used than offered (limits lowered under running VMs) is no room, not a negative one.
  const over = host("a", { used: { vms: 9, cpu: 20, memoryBytes: 40 * GiB, diskBytes: 0 } });
  throwsWith(() => place(vm(), [over]), "RESOURCE_EXHAUSTED", /a lacks vms/);
});

test("locality beats load: the host holding the spec's store paths wins though busier", () => {
  const busy = host("busy", { paths: SPEC_PATHS, used: { vms: 3, cpu: 5, memoryBytes: 10 * GiB, diskBytes: 0 } });
  const idle = host("idle");
  const placed = place(vm(), [idle, busy]);
  assert.equal(placed.hostId, "busy");
  assert.match(placed.reason, /holds 3\/3 store paths/);
  // All of them beats most of them, most beats fewer.
  const two = host("two", { paths: SPEC_PATHS.slice(0, 2) });
  const one = host("one", { paths: SPEC_PATHS.slice(0, 1) });
  assert.equal(place(vm(), [one, two, idle]).hostId, "two");
  assert.equal(place(vm(), [one, two, busy]).hostId, "busy");
});

test("load when no host holds the paths: the least loaded of cpu and memory, after this VM", () => {
  const cpuBusy = host("cpu-busy", { used: { vms: 1, cpu: 6, memoryBytes: 0, diskBytes: 0 } });
  const memBusy = host("mem-busy", { used: { vms: 1, cpu: 0, memoryBytes: 11 * GiB, diskBytes: 0 } });
  const light = host("light", { used: { vms: 1, cpu: 2, memoryBytes: 2 * GiB, diskBytes: 0 } });
  const placed = place(vm(), [cpuBusy, memBusy, light]);
  assert.equal(placed.hostId, "light");
  assert.match(placed.reason, /holds 0\/3 store paths, load 0\.50 after/);
  // Relative to capacity: a big host half as used beats a small one.
  const big = host("big", {
    capacity: { vms: 64, cpu: 64, memoryBytes: 256 * GiB, diskBytes: 0 },
    used: { vms: 10, cpu: 16, memoryBytes: 64 * GiB, diskBytes: 0 },
  });
  assert.equal(place(vm(), [light, big]).hostId, "big");
});

test("constraints: by host id and by labels; none met is FAILED_PRECONDITION naming the constraint", () => {
  const hosts = [
    host("a", { labels: { zone: "eu-1", gpu: "yes" }, paths: SPEC_PATHS }),
    host("b", { labels: { zone: "eu-2", gpu: "yes" } }),
    host("c", { labels: { zone: "eu-2" } }),
  ];
  assert.equal(place(vm({ constraints: { hostId: "c" } }), hosts).hostId, "c");
  assert.equal(place(vm({ constraints: { labels: { zone: "eu-2", gpu: "yes" } } }), hosts).hostId, "b");
  assert.equal(place(vm({ constraints: { labels: { gpu: "yes" } } }), hosts).hostId, "a");
  throwsWith(() => place(vm({ constraints: { hostId: "z" } }), hosts), "FAILED_PRECONDITION", /constraint host z: no such live host/);
  throwsWith(() => place(vm({ constraints: { labels: { zone: "us-1" } } }), hosts), "FAILED_PRECONDITION", /constraint label zone=us-1/);
  throwsWith(
    () => place(vm({ constraints: { hostId: "c", labels: { gpu: "yes" } } }), hosts),
    "FAILED_PRECONDITION",
    /label gpu=yes: no live host c has it/,
  );
  // Inherited properties are no labels.
  throwsWith(() => place(vm({ constraints: { labels: { constructor: "" } } }), hosts), "FAILED_PRECONDITION", /constructor/);
  // A constrained host that is full is full, not elsewhere.
  const fullC = hosts.map((h) => (h.hostId === "c" ? { ...h, used: { ...h.capacity } } : h));
  throwsWith(() => place(vm({ constraints: { hostId: "c" } }), fullC), "RESOURCE_EXHAUSTED", /c lacks vms/);
  throwsWith(() => place(vm({ constraints: { labels: { "bad key": "x" } } }), hosts), "INVALID_ARGUMENT", /bad label constraint/);
});

test("groups: a group's members stay on one host; its host full is RESOURCE_EXHAUSTED saying so", () => {
  const hosts = [host("a", { paths: SPEC_PATHS }), host("b", { groups: ["web"] })];
  assert.equal(place(vm({ group: "web" }), hosts).hostId, "b", "over locality and load");
  assert.match(place(vm({ group: "Web" }), hosts).reason, /group web's host/);
  // A new group goes where any VM would, and sticks there once reserved.
  assert.deepEqual(placeMany(4, vm({ group: "db", storePaths: [] }), [host("x"), host("y")]), ["x", "x", "x", "x"]);
  const full = [host("a"), host("b", { groups: ["web"], used: { vms: 4, cpu: 8, memoryBytes: 0, diskBytes: 0 } })];
  throwsWith(() => place(vm({ group: "web" }), full), "RESOURCE_EXHAUSTED", /group web's host b is full/);
  throwsWith(() => place(vm({ group: "web", constraints: { hostId: "a" } }), hosts), "FAILED_PRECONDITION", /group web's members are on b/);
});

test("lost hosts are skipped: a lapsed heartbeat, or one from too far ahead", () => {
  const stale = host("a-stale", { seenAtMs: NOW - 10_001, paths: SPEC_PATHS, groups: ["web"] });
  const future = host("b-future", { seenAtMs: NOW + 60_000, paths: SPEC_PATHS });
  const fresh = host("c-fresh", { seenAtMs: NOW - 10_000 });
  assert.ok(isLost(stale, NOW) && isLost(future, NOW) && !isLost(fresh, NOW));
  assert.equal(place(vm(), [stale, future, fresh]).hostId, "c-fresh");
  // Only live hosts keep a group: its members on a lost host do not hold the next one elsewhere back.
  assert.equal(place(vm({ group: "web" }), [stale, fresh]).hostId, "c-fresh");
  throwsWith(() => place(vm({ constraints: { hostId: "a-stale" } }), [stale, fresh]), "FAILED_PRECONDITION", /no such live host/);
  throwsWith(() => place(vm(), [stale, future]), "UNAVAILABLE", /no live host \(2 known/);
  throwsWith(() => place(vm(), []), "UNAVAILABLE", /no live host/);
  assert.equal(placeVm(vm(), [stale, fresh], NOW, { lostAfterMs: 60_000 }).hostId, "a-stale", "the window is an option");
});

test("ties are broken by host id, whatever order the registry listed hosts in", () => {
  const hosts = ["m", "b", "z", "a2", "a10"].map((id) => host(id));
  for (let shift = 0; shift < hosts.length; shift++) {
    const order = [...hosts.slice(shift), ...hosts.slice(0, shift)];
    assert.equal(place(vm(), order).hostId, "a10");
  }
  // Spreading equal hosts: each next VM goes to the least loaded, ids in order on ties.
  assert.deepEqual(placeMany(4, vm({ storePaths: [] }), [host("b"), host("a")]), ["a", "b", "a", "b"]);
});

test("reserve: the host as it will be, without touching the one given", () => {
  const before = host("a", { groups: ["web"] });
  const after = reserve(before, vm({ diskBytes: GiB, group: "db" }));
  assert.deepEqual(after.used, { vms: 1, cpu: 2, memoryBytes: 4 * GiB, diskBytes: GiB });
  assert.deepEqual(after.groups, ["web", "db"]);
  assert.deepEqual(reserve(after, vm({ group: "web" })).groups, ["web", "db"]);
  assert.deepEqual(before.used, { vms: 0, cpu: 0, memoryBytes: 0, diskBytes: 0 });
  // The paths it is about to fetch count as held by the next placement.
  assert.match(place(vm(), [host("0-first"), after]).reason, /holds 3\/3/);
});

test("reserve: many at once is the same as one by one, and the heartbeat's store summary is shared, not copied", () => {
  const before = host("a", { groups: ["web"] });
  const requests = [vm({ group: "db" }), vm({ storePaths: [`${storePath("x", "extra")}/file`] }), vm({ diskBytes: GiB, group: "web" })];
  const together = reserve(before, requests);
  const oneByOne = requests.reduce((h, request) => reserve(h, request), before);
  assert.deepEqual(together, oneByOne);
  assert.deepEqual(together.used, { vms: 3, cpu: 6, memoryBytes: 12 * GiB, diskBytes: GiB });
  assert.deepEqual(together.groups, ["web", "db"]);
  assert.equal(together.store, before.store, "the Bloom filter is not copied");
  assert.equal(together.placedStoreHashes?.size, 4, "3 paths of the spec and one more");
  assert.deepEqual(reserve(before, []), { ...before, placedStoreHashes: new Set() }, "nothing placed: the host as it was");
});

test("a bad request is INVALID_ARGUMENT", () => {
  const hosts = [host("a")];
  for (const bad of [{ cpu: 0 }, { cpu: 1.5 }, { memoryBytes: -1 }, { diskBytes: Number.NaN }]) {
    throwsWith(() => place(vm(bad), hosts), "INVALID_ARGUMENT", /cannot place/);
  }
  throwsWith(() => place(vm({ storePaths: ["/etc/shadow"] }), hosts), "INVALID_ARGUMENT", /not a path inside \/nix\/store/);
});
