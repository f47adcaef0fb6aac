// exec through the core (worker/core/service.ts, core/exec.ts) on the fake backend and FakeAgents.
import assert from "node:assert/strict";
import { test } from "node:test";
import { EXEC_LIMITS } from "../../worker/core/exec.js";
import { rejectsWith } from "../helpers/errors.js";
import { specInput, until, World } from "./fakes.js";

test("a running VM gets an agent channel on its own socket; exec goes through it; getVm shows it ready", async () => {
  const w = new World({ agents: true });
  const id = await w.service.createVm(specInput(), {});
  const connection = w.agents.connections.get(id)!;
  assert.equal(connection.socketPath, `${w.records.vmDir(id)}/agent.sock`);
  assert.equal(w.host.byId(id)!.spec.agentSocket, connection.socketPath, "the VMM serves that socket");
  assert.equal(w.records.record(id)!.agentSocket, connection.socketPath, "and the record keeps it for a restart");
  assert.equal(connection.transport, "virtio-serial");
  assert.equal(w.records.record(id)!.agentTransport, "virtio-serial");

  const result = await w.service.exec(id, { argv: ["echo", "hi"], env: ["A=b"], cwd: "/tmp", timeoutMs: 5 });
  assert.equal(Buffer.from(result.stdout).toString(), "echo hi");
  assert.deepEqual(connection.requests, [{ argv: ["echo", "hi"], env: ["A=b"], cwd: "/tmp", stdin: new Uint8Array(), timeoutMs: 5 }]);
  const view = await w.service.getVm(id);
  assert.equal(view.agentState, "ready");
  assert.ok(view.agentReadyMs !== undefined && view.agentReadyMs >= 0n);
});

test("the delete closes the channel; exec after it is NOT_FOUND", async () => {
  const w = new World({ agents: true });
  const id = await w.service.createVm(specInput(), {});
  await w.service.deleteVm(id);
  assert.equal(w.agents.connections.get(id)!.state, "closed");
  await rejectsWith(w.service.exec(id, { argv: ["true"] }), "NOT_FOUND", new RegExp(id));
});

test("a VM that stopped has no channel any more: FAILED_PRECONDITION", async () => {
  const w = new World({ agents: true });
  const id = await w.service.createVm(specInput(), {});
  w.host.byId(id)!.powerOffGuest();
  await until(async () => (await w.service.getVm(id)).status === "stopped", "stopped");
  assert.equal(w.agents.connections.get(id)!.state, "closed");
  await rejectsWith(w.service.exec(id, { argv: ["true"] }), "FAILED_PRECONDITION", /is stopped: no guest agent channel/);
});

test("a backend without an agent channel: FAILED_PRECONDITION naming the backend; the VM has state none", async () => {
  const w = new World({ agents: true, backend: { capabilities: { agent: false } } });
  const id = await w.service.createVm(specInput(), {});
  assert.equal(w.agents.connections.size, 0);
  assert.equal(w.host.byId(id)!.spec.agentSocket, undefined);
  await rejectsWith(
    w.service.exec(id, { argv: ["true"] }),
    "FAILED_PRECONDITION",
    /fake backend on this worker has no guest agent channel/,
  );
  assert.equal((await w.service.getVm(id)).agentState, "none");
});

test("bad requests are INVALID_ARGUMENT and never reach the guest", async () => {
  const w = new World({ agents: true });
  const id = await w.service.createVm(specInput(), {});
  const cases: [Parameters<typeof w.service.exec>[1], RegExp][] = [
    [{ argv: [] }, /argv is empty/],
    [{ argv: [""] }, /argv is empty/],
    [{ argv: ["sh"], env: ["NOEQUALS"] }, /is not NAME=value/],
    [{ argv: ["sh"], env: ["1A=x"] }, /is not NAME=value/],
    [{ argv: ["sh", "a\0b"] }, /NUL/],
    [{ argv: ["sh"], cwd: "relative" }, /not an absolute path/],
    [{ argv: ["sh"], stdin: new Uint8Array(EXEC_LIMITS.maxStdinBytes + 1) }, /stdin has/],
    [{ argv: ["sh"], timeoutMs: -1 }, /timeoutMs/],
    [{ argv: ["x".repeat(EXEC_LIMITS.maxTextBytes + 1)] }, /bytes \(at most/],
    [{ argv: Array.from({ length: EXEC_LIMITS.maxArgs + 1 }, () => "a") }, /entries/],
  ];
  for (const [request, message] of cases) await rejectsWith(w.service.exec(id, request), "INVALID_ARGUMENT", message);
  assert.equal(w.agents.connections.get(id)!.requests.length, 0);
});

test("a restarted worker re-attaches the channel of a VM it adopts", async () => {
  const w = new World({ agents: true });
  const id = await w.service.createVm(specInput(), {});
  const before = w.agents.connections.get(id)!;
  await w.restart();
  const after = w.agents.connections.get(id)!;
  assert.notEqual(after, before);
  assert.equal(after.socketPath, before.socketPath);
  assert.equal((await w.service.exec(id, { argv: ["echo", "again"] })).exitCode, 0);
});

test("a backend whose agent channel is a vsock: the channel is told so, now and after a restart", async () => {
  const w = new World({ agents: true, backend: { capabilities: { agent: "vsock" } } });
  const id = await w.service.createVm(specInput(), {});
  assert.equal(w.agents.connections.get(id)!.transport, "vsock");
  assert.equal(w.records.record(id)!.agentTransport, "vsock");
  await w.restart();
  assert.equal(w.agents.connections.get(id)!.transport, "vsock", "re-attached the same way");
});
