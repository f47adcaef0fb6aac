// Many clients at once: listVms from 20 connections while VMs are created and deleted, the
// per-connection limit on calls in flight, and the server-side call deadline.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { WorkerClient } from "../../worker/rpc/worker-client.js";
import { destroyWorker, type WorkerProcess } from "../helpers/worker-process.js";
import { client, guestSpec, logTail, report, settledFds, skip, startChaosWorker } from "./harness.js";
import { checkInvariants } from "./invariants.js";

const CONNECTIONS = 20;
const CALLS_PER_CONNECTION = 10;
const VMS = 10;
const MAX_CALLS = 16;
// Long enough that no createVm of the busy first test nears it on a loaded 2-core host (p50 ~0.1 s).
const DEADLINE_MS = 4000;

describe("concurrent clients", { skip }, () => {
  let worker: WorkerProcess;

  before(async () => {
    worker = await startChaosWorker(["--max-calls-per-connection", String(MAX_CALLS), "--call-deadline-ms", String(DEADLINE_MS)]);
  });

  after(async () => {
    if (worker) await destroyWorker(worker);
  });

  test(`${CONNECTIONS} connections making ${CONNECTIONS * CALLS_PER_CONNECTION} concurrent listVms ` +
    `while ${VMS} VMs are created and deleted: all succeed`, {
    timeout: 300_000,
  }, async () => {
    const started = Date.now();
    const baselineFds = await settledFds(worker);
    const clients: WorkerClient[] = await Promise.all(Array.from({ length: CONNECTIONS }, () => client(worker)));
    const creator = await client(worker);
    let creating = true;
    const created: string[] = [];
    // Two lanes of create-then-delete (2 VMs at most: the host has 2 cores).
    const lanes = Promise.all(
      [0, 1].map(async (lane) => {
        for (let i = lane; i < VMS; i += 2) {
          const id = await creator.createVm(guestSpec({ hostname: `conc-${i}`, ...(i % 3 ? { group: "conc" } : {}) }));
          created.push(id);
          await creator.deleteVm(id);
        }
      }),
    ).finally(() => (creating = false));

    let waves = 0;
    let calls = 0;
    let failures: string[] = [];
    let maxWaveMs = 0;
    let sawVms = 0;
    while (creating || waves < 3) {
      const t = performance.now();
      const results = await Promise.allSettled(clients.flatMap((c) => Array.from({ length: CALLS_PER_CONNECTION }, () => c.listVms())));
      maxWaveMs = Math.max(maxWaveMs, performance.now() - t);
      waves++;
      calls += results.length;
      for (const result of results) {
        if (result.status === "rejected") failures.push(String(result.reason));
        else sawVms = Math.max(sawVms, result.value.length);
      }
      failures = failures.slice(0, 10);
    }
    await lanes;
    creator.close();
    for (const c of clients) c.close();
    assert.deepEqual(failures, []);
    assert.equal(created.length, VMS);
    const { problems, snap } = await checkInvariants(worker, { baselineFds, fdSlack: 2 });
    assert.deepEqual(problems, [], logTail(worker));
    assert.equal(snap.vms.length, 0);
    report("concurrent-listVms", {
      connections: CONNECTIONS,
      concurrentCalls: CONNECTIONS * CALLS_PER_CONNECTION,
      waves,
      calls,
      failed: 0,
      vmsCreated: VMS,
      maxVmsSeenInOneList: sawVms,
      maxWaveMs: Math.round(maxWaveMs),
      fdsEnd: snap.fds,
      fdsBaseline: baselineFds,
      wallMs: Date.now() - started,
    });
  });

  test(`more than ${MAX_CALLS} calls in flight on one connection get RESOURCE_EXHAUSTED; other connections are unaffected`, {
    timeout: 60_000,
  }, async () => {
    const busy = await client(worker);
    const other = await client(worker);
    // Long polls for events that never come: each holds a call slot for 1 s.
    const far = 1n << 60n;
    const calls = Array.from({ length: MAX_CALLS + 24 }, () =>
      busy.events(far, 1, 1000).then(
        (value) => ({ status: "fulfilled" as const, value }),
        (reason: unknown) => ({ status: "rejected" as const, reason }),
      ),
    );
    assert.deepEqual(await other.listVms(), []);
    const results = await Promise.all(calls);
    const ok = results.filter((result) => result.status === "fulfilled").length;
    const refused = results.filter(
      (result) => result.status === "rejected" && (result.reason as { code?: string }).code === "RESOURCE_EXHAUSTED",
    ).length;
    assert.equal(ok, MAX_CALLS);
    assert.equal(refused, 24);
    // The limit is on calls in flight, not a ban: the same connection works again.
    assert.deepEqual(await busy.listVms(), []);
    busy.close();
    other.close();
    report("per-connection-limit", { limit: MAX_CALLS, sent: calls.length, ok, refused });
  });

  test(`a call running past the ${DEADLINE_MS} ms deadline gets DEADLINE_EXCEEDED; the connection goes on`, {
    timeout: 60_000,
  }, async () => {
    const c = await client(worker);
    const t = performance.now();
    await assert.rejects(c.events(1n << 60n, 1, 10_000), (err: { code?: string; message?: string }) => {
      assert.equal(err.code, "DEADLINE_EXCEEDED", err.message);
      return true;
    });
    const ms = performance.now() - t;
    assert.ok(ms >= DEADLINE_MS - 50 && ms < DEADLINE_MS + 1000, `answered after ${Math.round(ms)} ms`);
    assert.deepEqual(await c.listVms(), []);
    c.close();
    report("call-deadline", { deadlineMs: DEADLINE_MS, answeredAfterMs: Math.round(ms) });
  });
});
