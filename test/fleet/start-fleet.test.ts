// scripts/start-fleet's program (examples/local-fleet): a fleet comes up, answers through its
// gateway, and Ctrl-C removes every namespace, bridge and process it made.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { connectWorker } from "../../worker/rpc/worker-client.js";
import { DIST, testGuest } from "../helpers/repo.js";

const guest = testGuest();

test("start-fleet: two hosts and a gateway up, a VM through it, everything gone after Ctrl-C", {
  skip: "skip" in guest && guest.skip,
}, async () => {
  const child = execa(process.execPath, [join(DIST, "examples", "local-fleet", "local-fleet.js"), "--hosts", "2", "--fake"], {
    reject: false,
    all: true,
    buffer: false,
  });
  let out = "";
  child.all!.on("data", (chunk: Buffer) => {
    out += chunk.toString();
  });
  try {
    const deadline = Date.now() + 60_000;
    while (!/gateway at (\S+)/.test(out)) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`no gateway; output:\n${out}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const namespaces = [...out.matchAll(/in namespace (\S+)/g)].map((match) => match[1]!);
    assert.equal(namespaces.length, 2);
    const client = await connectWorker(/gateway at (\S+)/.exec(out)![1]!);
    const id = await client.createVm((guest as { input: Parameters<typeof client.createVm>[0] }).input, { placement: { host: "host2" } });
    assert.equal((await client.getVm(id)).status, "running");
    client.close();
    child.kill("SIGINT");
    const result = await child;
    assert.equal(result.exitCode, 0, out);
    const left = (await execa("ip", ["netns", "list"])).stdout;
    for (const namespace of namespaces) assert.ok(!left.includes(namespace), `${namespace} removed`);
    const bridgeAddress = /NATS at nats:\/\/([\d.]+):/.exec(out)![1]!;
    assert.ok(!(await execa("ip", ["-o", "addr"])).stdout.includes(` ${bridgeAddress}/`), "its bridge removed");
  } finally {
    child.kill("SIGKILL");
  }
});
