// examples/etcd-cluster end to end: a real worker, three real QEMU guests running etcd in one
// group, the leader partitioned from the other two and healed. The majority elects a new leader
// and keeps acknowledging writes, the isolated node acknowledges none, no acknowledged write is
// lost, all three converge, and the timeline SVG is well-formed and shows the partition.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { type EtcdClusterReport, etcdGuest, formatReport, runEtcdCluster } from "../../examples/etcd-cluster/etcd-cluster.js";
import { allElements, parseXml } from "./xml.js";

const guest = etcdGuest();
const skip = process.getuid?.() !== 0 ? "needs root (network namespaces, QEMU)" : "skip" in guest ? guest.skip : false;

describe("examples/etcd-cluster: a partitioned etcd cluster", { skip }, () => {
  const reportDir = mkdtempSync(join(tmpdir(), "pcr-etcd-test-"));
  after(() => rmSync(reportDir, { recursive: true, force: true }));
  let run: EtcdClusterReport | undefined;
  const ran = (): EtcdClusterReport => run ?? assert.fail("the example did not run to the end");

  test("runs: boots three VMs, forms a cluster, partitions its leader, heals, cleans up", async (t) => {
    run = await runEtcdCluster({ reportDir, log: () => undefined });
    assert.equal(run.nodes.length, 3);
    for (const line of formatReport(run).trimEnd().split("\n")) t.diagnostic(line);
  });

  test("the majority elected a new leader during the partition", () => {
    const report = ran();
    assert.ok(report.newLeader, "no new leader during the partition");
    assert.ok(report.partition.majority.includes(report.newLeader), `${report.newLeader} is not in the majority`);
    assert.ok(report.timeToNewLeaderMs! < report.partition.endMs - report.partition.startMs);
  });

  test("writes were acknowledged during the partition; the isolated node acknowledged none", () => {
    const report = ran();
    assert.ok(report.writes.acknowledgedDuringPartition > 0, "no write acknowledged during the partition");
    assert.ok(report.writes.isolatedAttemptedDuringPartition > 0, "the isolated node was not written to during the partition");
    assert.equal(report.writes.isolatedAcknowledgedDuringPartition, 0);
  });

  test("no acknowledged write was lost; all three converge to the same revision", () => {
    const report = ran();
    assert.equal(report.writes.lost, 0, `lost: ${report.writes.lostKeys.join(", ")}`);
    assert.ok(report.converged, `revisions ${JSON.stringify(report.finalRevisions)}`);
    const revisions = Object.values(report.finalRevisions);
    assert.equal(revisions.length, 3);
    assert.ok(revisions.every((revision) => revision > 1 && revision === revisions[0]));
  });

  test("the report files: text table, JSON, and a well-formed SVG with the partition window", () => {
    const report = ran();
    const text = readFileSync(report.files.text, "utf8");
    assert.match(text, /writes lost \(must be 0\)\s+0\n/);
    assert.match(text, /verdict\s+as expected\n/);
    assert.equal((JSON.parse(readFileSync(report.files.json, "utf8")) as EtcdClusterReport).writes.lost, 0);
    const svg = parseXml(readFileSync(report.files.svg, "utf8"));
    const bands = allElements(svg).filter((e) => e.attrs.class === "fault-window");
    assert.equal(bands.length, 1);
    assert.match(bands[0]!.attrs["data-label"]!, new RegExp(`partition: ${report.partition.isolated}`));
    const marks = allElements(svg).filter((e) => e.attrs.class?.startsWith("op "));
    assert.ok(marks.length > 50, `${marks.length} operations drawn`);
    assert.ok(marks.some((m) => m.attrs.class === "op op-ok"));
  });
});
