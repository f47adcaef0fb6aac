// Long-lived nft and ip sessions (worker/net/session.ts) against the real tools in a namespace the test makes.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, describe, test } from "node:test";
import { IP_SESSION, NFT_SESSION, type SessionDialect, ToolSession } from "../../worker/net/session.js";
import { createNetns, deleteNetns, inNetns } from "../helpers/netns.js";

const skip = process.getuid?.() !== 0 ? "needs root for a network namespace" : false;

const addTable = (name: string) => JSON.stringify({ nftables: [{ add: { table: { family: "inet", name } } }] });

describe("tool sessions in a namespace", { skip }, () => {
  let ns: string;
  before(async () => {
    ns = await createNetns("pcr-ses");
  });
  after(async () => deleteNetns(ns));

  test("nft: transactions apply, a failing one says why and the session goes on", async () => {
    const nft = new ToolSession(NFT_SESSION, { netns: ns });
    try {
      assert.deepEqual(await nft.request([addTable("ses_a")]), { failed: false, stderr: "" });
      const pid = nft.pid;
      const bad = await nft.request([JSON.stringify({ nftables: [{ delete: { table: { family: "inet", name: "ses_missing" } } }] })]);
      assert.equal(bad.failed, true);
      assert.match(bad.stderr, /No such file or directory/);
      assert.doesNotMatch(bad.stderr, /pcr_sentinel/, "the sentinel's error is not the request's");
      assert.deepEqual(await nft.request([addTable("ses_b")]), { failed: false, stderr: "" });
      assert.equal(nft.pid, pid, "one process for all three");
      const tables = (await inNetns(ns, "nft", ["list", "tables"])).stdout;
      assert.match(tables, /ses_a/);
      assert.match(tables, /ses_b/);
    } finally {
      nft.close();
    }
  });

  test("ip: a batch makes a TAP; a failing line fails its request only", async () => {
    const ip = new ToolSession(IP_SESSION, { netns: ns });
    try {
      const made = await ip.request(["tuntap add dev pcr-ses0 mode tap", "link set dev pcr-ses0 up"]);
      assert.deepEqual(made, { failed: false, stderr: "" });
      const again = await ip.request(["link set dev pcr-nothere up"]);
      assert.equal(again.failed, true);
      assert.match(again.stderr, /pcr-nothere/);
      assert.doesNotMatch(again.stderr, /pcr~/);
      assert.equal((await ip.request(["link delete dev pcr-ses0"])).failed, false);
      assert.equal((await inNetns(ns, "ip", ["link", "show", "dev", "pcr-ses0"])).exitCode, 1);
    } finally {
      ip.close();
    }
  });

  test("requests made together run one after another, each with its own outcome", async () => {
    const nft = new ToolSession(NFT_SESSION, { netns: ns });
    try {
      const outcomes = await Promise.all([
        nft.request([addTable("ses_c1")]),
        nft.request(["delete table inet ses_missing2"]),
        nft.request([addTable("ses_c2")]),
      ]);
      assert.deepEqual(
        outcomes.map((outcome) => outcome.failed),
        [false, true, false],
      );
      assert.match(outcomes[1]!.stderr, /ses_missing2/);
    } finally {
      nft.close();
    }
  });

  test("a process that dies fails its request; the next request starts another", async () => {
    const nft = new ToolSession(NFT_SESSION, { netns: ns });
    try {
      await nft.request([addTable("ses_d")]);
      const first = nft.pid!;
      const pending = nft.request([addTable("ses_d2")]);
      process.kill(first, "SIGKILL");
      // It may have answered before the signal landed; if not, the reason names the signal.
      await pending.catch((err: Error) => assert.match(err.message, /nft session ended: killed by SIGKILL/));
      assert.equal((await nft.request([addTable("ses_d3")])).failed, false);
      assert.notEqual(nft.pid, first);
    } finally {
      nft.close();
    }
  });

  test("after its input budget the process is replaced (nft -i keeps every line in its history)", async () => {
    const nft = new ToolSession(NFT_SESSION, { netns: ns, maxInputBytes: 200 });
    try {
      await nft.request([addTable("ses_e")]);
      const first = nft.pid;
      await nft.request([addTable("ses_e")]);
      await nft.request([addTable("ses_e")]);
      assert.notEqual(nft.pid, first);
      assert.equal((await nft.request([addTable("ses_e2")])).failed, false);
    } finally {
      nft.close();
    }
  });

  test("a line break inside a line is refused before anything is written", async () => {
    const nft = new ToolSession(NFT_SESSION, { netns: ns });
    await assert.rejects(nft.request(["add table inet x\nflush ruleset"]), /line break/);
    assert.equal(nft.pid, undefined, "no process was started");
  });
});

test("a tool that never answers is killed after the timeout and its request fails", async () => {
  // `cat` echoes to stdout and never writes the sentinel's error.
  const silent: SessionDialect = { ...NFT_SESSION, command: "cat", args: [] };
  const session = new ToolSession(silent, { timeoutMs: 300 });
  await assert.rejects(session.request(["hello"]), /cat session ended: no answer within 300 ms/);
});

test("a missing binary fails the request with the reason", async () => {
  const session = new ToolSession({ ...NFT_SESSION, command: "pcr-no-such-tool" });
  await assert.rejects(session.request(["x"]), /pcr-no-such-tool session ended: .*ENOENT/);
});

test("an idle session does not keep Node running", { skip }, async () => {
  const script = `
    import { ToolSession, IP_SESSION } from ${JSON.stringify(new URL("../../worker/net/session.js", import.meta.url).href)};
    const ip = new ToolSession(IP_SESSION);
    const result = await ip.request(["link show dev lo"]);
    console.log(result.failed ? "failed" : "ok");`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout.on("data", (chunk: Buffer) => (out += chunk));
  const code = await new Promise<number | null>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the process did not exit within 10 s")), 10_000);
    child.once("exit", (exitCode) => {
      clearTimeout(timer);
      resolve(exitCode);
    });
  }).finally(() => child.kill("SIGKILL"));
  assert.equal(code, 0);
  assert.equal(out.trim(), "ok");
});
