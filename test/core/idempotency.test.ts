// Idempotent creates (worker/core/idempotency.ts, service.ts, registry.ts) on the fake world: a key
// answers its VM, made or in the making, across restarts and races, and frees itself with the VM.
import assert from "node:assert/strict";
import { test } from "node:test";
import { failedPrecondition } from "../../worker/core/errors.js";
import { requestPrint } from "../../worker/core/idempotency.js";
import { canonicalSpec, validateSpec } from "../../worker/core/spec.js";
import { rejectsWith } from "../helpers/errors.js";
import { LIMITS, specInput, until, utf8, World } from "./fakes.js";

const secret = (value: string) => [{ name: "token", value: utf8(value) }];

test("a create repeated with its key answers the same VM and makes no second one", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), { idempotencyKey: "req-1", secrets: secret("a") });
  assert.match(id, /^vm-[0-9a-f]{16}$/);
  const again = await w.service.createVm(specInput(), { idempotencyKey: "req-1", secrets: secret("a") });
  assert.equal(again, id);
  assert.equal(w.host.live().length, 1, "one VMM");
  assert.deepEqual(
    (await w.service.listVms()).map((vm) => vm.id),
    [id],
  );
  // Another key, or none, is another VM.
  const other = await w.service.createVm(specInput({ hostname: "b" }), { idempotencyKey: "req-2" });
  assert.notEqual(other, id);
  const record = w.records.record(id)!;
  assert.equal(record.idempotency?.key, "req-1");
  assert.ok(!w.records.saved.get(id)!.includes('"a"') && record.idempotency?.secretsHash, "a hash, never the secret");
});

test("the same key with another spec or other secrets is INVALID_ARGUMENT; the VM stays", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), { idempotencyKey: "k", secrets: secret("a") });
  await rejectsWith(
    w.service.createVm(specInput({ cpu: 2 }), { idempotencyKey: "k", secrets: secret("a") }),
    "INVALID_ARGUMENT",
    /"k" was used for a different request/,
  );
  await rejectsWith(
    w.service.createVm(specInput(), { idempotencyKey: "k", secrets: secret("b") }),
    "INVALID_ARGUMENT",
    /different request/,
  );
  await rejectsWith(w.service.createVm(specInput(), { idempotencyKey: "k" }), "INVALID_ARGUMENT", /different request/);
  assert.equal(await w.service.createVm(specInput(), { idempotencyKey: "k", secrets: secret("a") }), id, "the VM stays, its key too");
  // The same request with its secrets in another order is the same create.
  const two = [...secret("a"), { name: "z", value: utf8("1") }];
  const id2 = await w.service.createVm(specInput({ hostname: "two" }), { idempotencyKey: "k2", secrets: two });
  assert.equal(await w.service.createVm(specInput({ hostname: "two" }), { idempotencyKey: "k2", secrets: [...two].reverse() }), id2);
  assert.equal(w.host.live().length, 2);
});

test("ttl and placement make another request; waitReadyMs and the spec's spelling do not (core/idempotency.ts requestPrint)", async () => {
  const w = new World({ agents: true });
  const options = {
    idempotencyKey: "k",
    secrets: secret("a"),
    ttlSeconds: 60,
    placement: { host: "h1", labels: { zone: "a", rack: "2" } },
  };
  const id = await w.service.createVm(specInput({ hostname: "web" }), options);
  for (const [what, other] of [
    ["another ttl", { ...options, ttlSeconds: 61 }],
    ["no ttl", { ...options, ttlSeconds: undefined }],
    ["another host", { ...options, placement: { ...options.placement, host: "h2" } }],
    ["another label", { ...options, placement: { ...options.placement, labels: { zone: "b", rack: "2" } } }],
    ["no placement", { ...options, placement: undefined }],
  ] as const) {
    await rejectsWith(w.service.createVm(specInput({ hostname: "web" }), other), "INVALID_ARGUMENT", /different request/).catch((err) => {
      throw new Error(`${what}: ${(err as Error).message}`);
    });
  }
  // The VM it makes is the same: a longer wait, labels in another order, the hostname in capitals.
  const same = { ...options, waitReadyMs: 5_000, placement: { host: "h1", labels: { rack: "2", zone: "a" } } };
  assert.equal(await w.service.createVm(specInput({ hostname: "WEB" }), same), id);
  // No placement is one thing however it is spelled: absent, an empty host, no labels.
  const bare = await w.service.createVm(specInput({ hostname: "bare" }), { idempotencyKey: "bare" });
  assert.equal(
    await w.service.createVm(specInput({ hostname: "bare" }), { idempotencyKey: "bare", placement: { host: "", labels: {} } }),
    bare,
  );
  assert.equal(w.host.live().length, 2);
});

test("a worker and a gateway print a request alike: the gateway's canonical spec is the worker's valid one", () => {
  const inputs = [
    specInput(),
    specInput({ hostname: "MiXeD.Example", cmdline: "  console=ttyS0  ", group: "Ring", dataDiskBytes: 0n }),
    specInput({ dataDiskBytes: 64n * 1024n * 1024n, allowedDomains: ["b.example", "a.example"] }),
  ];
  for (const input of inputs) {
    const options = { ttlSeconds: 30, placement: { labels: { zone: "a" } } };
    assert.deepEqual(requestPrint(canonicalSpec(input), options), requestPrint(validateSpec(input, LIMITS), options), input.hostname);
  }
  const base = requestPrint(canonicalSpec(inputs[0]!), {});
  assert.equal(requestPrint(canonicalSpec(inputs[0]!), { ttlSeconds: 0, placement: { host: "" } }).requestHash, base.requestHash);
  assert.notEqual(requestPrint(canonicalSpec(inputs[0]!), { ttlSeconds: 1 }).requestHash, base.requestHash);
  // A label cannot pass for the host, nor one label's value run into the next one's key.
  const a = requestPrint(canonicalSpec(inputs[0]!), { placement: { host: "zone", labels: {} } });
  const b = requestPrint(canonicalSpec(inputs[0]!), { placement: { labels: { zone: "" } } });
  assert.notEqual(a.requestHash, b.requestHash);
  const c = requestPrint(canonicalSpec(inputs[0]!), { placement: { labels: { a: "b,c", d: "e" } } });
  const d = requestPrint(canonicalSpec(inputs[0]!), { placement: { labels: { a: "b", "c,d": "e" } } });
  assert.notEqual(c.requestHash, d.requestHash);
});

test("getVm and listVms show the key a VM was made with, and nothing derived from its secrets", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), { idempotencyKey: "client's key #1", secrets: secret("s3cret") });
  const plain = await w.service.createVm(specInput({ hostname: "plain" }), { secrets: secret("s3cret") });
  const view = await w.service.getVm(id);
  assert.equal(view.idempotencyKey, "client's key #1");
  assert.equal((await w.service.getVm(plain)).idempotencyKey, "", "no key: empty");
  assert.equal((await w.service.listVms()).find((vm) => vm.id === id)?.idempotencyKey, "client's key #1");
  const record = w.records.record(id)!.idempotency!;
  const shown = JSON.stringify(view, (_key, value) => (typeof value === "bigint" ? String(value) : value));
  for (const derived of [record.secretsSalt, record.secretsHash, record.requestHash!, "s3cret"]) {
    assert.ok(!shown.includes(derived), `the view holds no ${derived.slice(0, 8)}…`);
  }
  assert.equal(view.host, "", "a lone worker is on no fleet host");
  const member = new World({ hostId: "h7" });
  const onH7 = await member.service.createVm(specInput(), {});
  assert.equal((await member.service.getVm(onH7)).host, "h7");
  assert.deepEqual(
    (await member.service.listVms()).map((vm) => vm.host),
    ["h7"],
  );
});

test("a record from a worker before request prints (no requestHash) is compared by its spec alone", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), { idempotencyKey: "old", secrets: secret("a"), ttlSeconds: 60 });
  const record = w.records.record(id)!;
  delete record.idempotency!.requestHash;
  await w.records.save(record);
  await w.restart();
  assert.equal(
    await w.service.createVm(specInput(), { idempotencyKey: "old", secrets: secret("a"), ttlSeconds: 5 }),
    id,
    "ttl unknown: not held against it",
  );
  await rejectsWith(
    w.service.createVm(specInput({ cpu: 2 }), { idempotencyKey: "old", secrets: secret("a") }),
    "INVALID_ARGUMENT",
    /different/,
  );
  await rejectsWith(w.service.createVm(specInput(), { idempotencyKey: "old", secrets: secret("b") }), "INVALID_ARGUMENT", /different/);
});

test("a key is 1-128 bytes of printable ASCII; empty is none", async () => {
  const w = new World();
  await rejectsWith(w.service.createVm(specInput(), { idempotencyKey: "x".repeat(129) }), "INVALID_ARGUMENT", /idempotencyKey/);
  await rejectsWith(w.service.createVm(specInput(), { idempotencyKey: "tab\there" }), "INVALID_ARGUMENT", /printable ASCII/);
  await rejectsWith(w.service.createVm(specInput(), { idempotencyKey: "ü" }), "INVALID_ARGUMENT", /printable ASCII/);
  const a = await w.service.createVm(specInput(), { idempotencyKey: "" });
  const b = await w.service.createVm(specInput({ hostname: "b" }), { idempotencyKey: "" });
  assert.notEqual(a, b);
  assert.equal(w.records.record(a)!.idempotency, undefined);
  assert.ok(await w.service.createVm(specInput({ hostname: "c" }), { idempotencyKey: `${"x".repeat(127)} ` }));
});

test("two creates racing with one key: one VM, both answered its id", async () => {
  const w = new World();
  const ids = await Promise.all(Array.from({ length: 5 }, () => w.service.createVm(specInput(), { idempotencyKey: "race" })));
  assert.equal(new Set(ids).size, 1);
  assert.equal(w.host.live().length, 1);
  // A racer with another spec is refused, not queued.
  const first = w.service.createVm(specInput({ hostname: "r2" }), { idempotencyKey: "race2" });
  await rejectsWith(w.service.createVm(specInput({ hostname: "other" }), { idempotencyKey: "race2" }), "INVALID_ARGUMENT", /different/);
  await first;
});

test("a create in flight that fails fails its waiters too, and frees its key for a retry", async () => {
  const w = new World();
  w.store.failures.failNext("ensurePaths", failedPrecondition("the binary cache is down"));
  const both = [0, 1].map(() => w.service.createVm(specInput(), { idempotencyKey: "retry-me" }));
  for (const each of both) await rejectsWith(each, "FAILED_PRECONDITION", /binary cache/);
  assert.equal(w.host.live().length, 0);
  const id = await w.service.createVm(specInput({ cpu: 2 }), { idempotencyKey: "retry-me" });
  assert.equal(w.host.live().length, 1);
  assert.equal(await w.service.createVm(specInput({ cpu: 2 }), { idempotencyKey: "retry-me" }), id);
});

test("a VM in any status but deleted keeps its key; deleting it frees the key", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), { idempotencyKey: "k" });
  w.host.byId(id)!.crash({ signal: "SIGSEGV" }); // the VMM dies: the VM is failed, still there
  await until(async () => (await w.service.getVm(id)).status === "failed", "the VM failed");
  assert.equal(await w.service.createVm(specInput(), { idempotencyKey: "k" }), id);
  await w.service.deleteVm(id);
  const next = await w.service.createVm(specInput({ cpu: 2 }), { idempotencyKey: "k" });
  assert.notEqual(next, id, "a new VM under the freed key, with any spec");
});

test("a restarted worker still deduplicates: recovery rebuilds the key index from the records", async () => {
  const w = new World();
  const id = await w.service.createVm(specInput(), { idempotencyKey: "durable", secrets: secret("a") });
  const result = await w.restart();
  assert.deepEqual(result.adopted, [id]);
  assert.equal(await w.service.createVm(specInput(), { idempotencyKey: "durable", secrets: secret("a") }), id);
  await rejectsWith(w.service.createVm(specInput(), { idempotencyKey: "durable", secrets: secret("b") }), "INVALID_ARGUMENT", /different/);
  assert.equal(w.host.live().length, 1);
  await w.service.deleteVm(id);
  await w.restart();
  assert.notEqual(await w.service.createVm(specInput(), { idempotencyKey: "durable", secrets: secret("a") }), id);
});

test("a claim from a warm pool goes through the same dedup", async () => {
  const machine = validateSpec(specInput({ hostname: "pooled" }), LIMITS);
  const w = new World({ pools: [{ name: "guest", spec: machine, hot: 1, disk: false }] });
  await w.service.startPools();
  await until(() => w.service.poolStats()[0]?.ready === 1, "a pooled VM ready");
  const ids = await Promise.all([0, 1].map(() => w.service.createVm(specInput(), { idempotencyKey: "claim", secrets: secret("a") })));
  assert.equal(ids[0], ids[1]);
  assert.equal((await w.service.getVm(ids[0]!)).origin, "pool");
  assert.equal(w.records.record(ids[0]!)!.idempotency?.key, "claim");
  assert.deepEqual(w.service.poolStats()[0]!.claims, { pool: 1, snapshot: 0, boot: 0 }, "one claim, not two");
  await until(() => w.service.poolStats()[0]?.ready === 1, "the pool refilled");
  assert.equal(await w.service.createVm(specInput(), { idempotencyKey: "claim", secrets: secret("a") }), ids[0]);
  assert.deepEqual(w.service.poolStats()[0]!.claims, { pool: 1, snapshot: 0, boot: 0 }, "the repeat took no pooled VM");
  await w.service.closePools();
});
