// A 3-node etcd cluster in three microVMs of one group, partitioned Jepsen-style: boots a worker in
// a throwaway network namespace, starts etcd in each VM through the guest agent, runs writes and
// reads against all three nodes from a driver inside the worker's namespace, cuts the leader off
// from the other two, heals, and checks that the majority elected a new leader and kept accepting
// writes, that the isolated node acknowledged nothing, that all three converge, and that every
// acknowledged write survived. Writes report.json, report.txt and timeline.svg.
// Run as root, after examples/etcd-cluster/build-guest (scripts/setup runs it):
//   npm run build && node dist/examples/etcd-cluster/etcd-cluster.js [report dir]
import { type ResultPromise, execa } from "execa";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { VmSpecInput } from "../../worker/core/api.js";
import { parseVmSpecJson } from "../../worker/core/spec.js";
import { type WorkerClient, connectWorker } from "../../worker/rpc/worker-client.js";
import { REPO_ROOT } from "../../test/helpers/repo.js";
import { destroyWorker, startWorker, type WorkerProcess } from "../../test/helpers/worker-process.js";
import { type ClusterNode, isolate, Nemesis } from "../lib/nemesis.js";
import { renderTimeline } from "../lib/timeline.js";
import type { DriverLine, Endpoint, OpLine, ReadbackLine, StatusLine } from "./driver.js";

export const ETCD_GUEST_SPEC = join(REPO_ROOT, ".cache", "etcd-guest", "spec.json");
const DRIVER = fileURLToPath(new URL("./driver.js", import.meta.url));
const NODES = ["n1", "n2", "n3"] as const;
const GROUP = "etcd";
/** How long the majority may take to elect a leader before the example gives up and heals. */
const MAX_ELECTION_MS = 40_000;
/** The partition lasts at least this long past the new leader's election. */
const AFTER_ELECTION_MS = 8000;

export interface EtcdClusterOptions {
  /** Where the report goes (made if missing); default: a fresh temporary directory. */
  reportDir?: string;
  /** How long the leader stays cut off, at least (longer when the majority is slow to elect a leader). */
  partitionMs?: number;
  /** Progress lines; default: console.log. */
  log?: (line: string) => void;
}

export interface EtcdClusterReport {
  nodes: { name: string; vmId: string; ip: string }[];
  /** Milliseconds since the run started (the origin of every other time here). */
  bootedMs: number;
  clusterFormedMs: number;
  partition: { isolated: string; majority: string[]; startMs: number; endMs: number };
  oldLeader: string;
  /** The first leader a majority node named during the partition, and when, after the cut. */
  newLeader?: string;
  timeToNewLeaderMs?: number;
  writes: {
    attempted: number;
    acknowledged: number;
    failed: number;
    unknown: number;
    /** Acknowledged writes whose key was missing or held another value on the final read-back. */
    lost: number;
    lostKeys: string[];
    /** By majority nodes, started and acknowledged within the partition. */
    acknowledgedDuringPartition: number;
    /** By the isolated node, started and answered within the partition. */
    isolatedAttemptedDuringPartition: number;
    isolatedAcknowledgedDuringPartition: number;
  };
  reads: { attempted: number; ok: number; failed: number; unknown: number };
  finalRevisions: Record<string, number>;
  converged: boolean;
  readBackThrough: string;
  totalMs: number;
  files: { json: string; text: string; svg: string };
}

/** The etcd guest's spec, or why it cannot be used. */
export function etcdGuest(): { input: VmSpecInput } | { skip: string } {
  if (!existsSync(ETCD_GUEST_SPEC)) return { skip: `etcd guest missing: run examples/etcd-cluster/build-guest (no ${ETCD_GUEST_SPEC})` };
  return { input: parseVmSpecJson(readFileSync(ETCD_GUEST_SPEC, "utf8")) };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** etcd's flags for one member. TCG makes everything slow and bursty: generous raft timings. */
function etcdArgv(name: string, ip: string, cluster: string): string[] {
  return [
    "/mnt/image/bin/etcd",
    `--name=${name}`,
    "--data-dir=/tmp/etcd",
    "--listen-client-urls=http://0.0.0.0:2379",
    `--advertise-client-urls=http://${ip}:2379`,
    "--listen-peer-urls=http://0.0.0.0:2380",
    `--initial-advertise-peer-urls=http://${ip}:2380`,
    `--initial-cluster=${cluster}`,
    "--initial-cluster-state=new",
    "--initial-cluster-token=pcr-etcd-example",
    "--heartbeat-interval=300",
    "--election-timeout=3000",
    // A node cut off keeps campaigning with ever higher terms; pre-vote keeps it from deposing the
    // majority's leader when it comes back, so the heal is quiet.
    "--pre-vote=true",
    "--logger=zap",
    "--log-outputs=stderr",
    "--log-level=warn",
  ];
}

/** The driver inside the worker's namespace: its lines, and commands to it. */
class Driver {
  readonly ops: OpLine[] = [];
  readonly statuses: StatusLine[] = [];
  private readonly latest = new Map<string, StatusLine>();
  private readonly waiters: ((line: DriverLine) => void)[] = [];
  private stderr = "";

  private constructor(private readonly child: ResultPromise) {
    createInterface({ input: child.stdout! }).on("line", (text) => {
      let line: DriverLine;
      try {
        line = JSON.parse(text) as DriverLine;
      } catch {
        this.stderr += `${text}\n`; // not ours: keep it for errors
        return;
      }
      if (line.type === "op") this.ops.push(line);
      if (line.type === "status") {
        this.statuses.push(line);
        this.latest.set(line.node, line);
      }
      for (const waiter of [...this.waiters]) waiter(line);
    });
    child.stderr!.on("data", (chunk: Buffer) => {
      this.stderr += chunk.toString();
    });
  }

  static start(netns: string, endpoints: Endpoint[]): Driver {
    const child = execa("ip", ["netns", "exec", netns, process.execPath, DRIVER, JSON.stringify(endpoints)], {
      reject: false,
      buffer: false,
      stdin: "pipe",
    });
    return new Driver(child);
  }

  send(command: string): void {
    this.child.stdin!.write(`${command}\n`);
  }

  /** The newest status of each node, sampled after `sinceMs`. */
  current(sinceMs: number): StatusLine[] {
    return [...this.latest.values()].filter((status) => status.atMs >= sinceMs);
  }

  /** Resolves with the first line `match` accepts, or rejects after `timeoutMs`. */
  next<T>(what: string, timeoutMs: number, match: (line: DriverLine) => T | undefined): Promise<T> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`${what}: nothing in ${timeoutMs} ms${this.stderr ? `; driver: ${this.stderr.slice(-500)}` : ""}`));
      }, timeoutMs);
      const waiter = (line: DriverLine) => {
        const found = match(line);
        if (found === undefined) return;
        clearTimeout(timer);
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        resolve(found);
      };
      this.waiters.push(waiter);
    });
  }

  /** The leader every node named in each of its statuses of the last `windowMs` (at least three each). */
  stableLeader(windowMs: number): string | undefined {
    const from = Date.now() - windowMs;
    const recent = this.statuses.filter((status) => status.atMs >= from);
    if (NODES.some((node) => recent.filter((status) => status.node === node).length < 3)) return undefined;
    const leader = recent[0]!.leader;
    return leader && leader !== "0" && recent.every((status) => !status.error && status.leader === leader) ? leader : undefined;
  }

  /** Waits until every node's newest status (sampled after `sinceMs`) passes `check`. */
  async until(what: string, timeoutMs: number, sinceMs: number, check: (statuses: StatusLine[]) => boolean): Promise<StatusLine[]> {
    await this.next(what, timeoutMs, () => {
      const statuses = this.current(sinceMs);
      return statuses.length === NODES.length && check(statuses) ? statuses[0] : undefined;
    });
    return this.current(sinceMs);
  }

  async close(): Promise<void> {
    this.child.stdin!.end();
    const killer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await this.child;
    clearTimeout(killer);
  }
}

interface Member {
  name: string;
  vmId: string;
  ip: string;
  pid: number;
}

/** etcd's stderr in a VM (its last lines), for errors. */
async function etcdLog(client: WorkerClient, member: Member): Promise<string> {
  const out = await client.readProcess(member.vmId, member.pid, "stderr", 0, 1 << 20, 0).catch(() => undefined);
  return out ? Buffer.from(out.data).toString("utf8").split("\n").slice(-15).join("\n") : "(no log)";
}

const sameLeader = (statuses: StatusLine[]) => statuses.every((s) => !s.error && s.leader !== "0" && s.leader === statuses[0]!.leader);

export async function runEtcdCluster(options: EtcdClusterOptions = {}): Promise<EtcdClusterReport> {
  const log = options.log ?? ((line: string) => console.log(line));
  const partitionMs = options.partitionMs ?? 14_000;
  const guest = etcdGuest();
  if ("skip" in guest) throw new Error(guest.skip);
  const reportDir = options.reportDir ?? (await mkdtemp(join(tmpdir(), "pcr-etcd-cluster-")));
  await mkdir(reportDir, { recursive: true });
  const t0 = Date.now();
  const since = (ms: number) => ms - t0;

  let worker: WorkerProcess | undefined;
  let client: WorkerClient | undefined;
  let driver: Driver | undefined;
  const vmIds: string[] = [];
  try {
    worker = await startWorker({ extraArgs: ["--http-listen", "off"] });
    const rpc = await connectWorker(worker.socket);
    client = rpc;

    // 1. Three VMs in one group, each answering once its agent is up.
    log(`booting ${NODES.length} VMs in group ${GROUP}`);
    const created = await Promise.allSettled(
      NODES.map(async (name) => {
        const id = await rpc.createVm({ ...guest.input, hostname: name, group: GROUP }, { waitReadyMs: 120_000 });
        vmIds.push(id);
        return id;
      }),
    );
    const failed = created.find((result) => result.status === "rejected");
    if (failed) throw new Error(`createVm: ${(failed.reason as Error).message}`);
    const ids = created.map((result) => (result as PromiseFulfilledResult<string>).value);
    const views = await Promise.all(ids.map((id) => rpc.getVm(id)));
    const bootedMs = since(Date.now());
    log(`booted in ${(bootedMs / 1000).toFixed(1)} s: ${views.map((vm, i) => `${NODES[i]}=${vm.ip}`).join(" ")}`);

    // 2. etcd in each, through the agent.
    const cluster = views.map((vm, i) => `${NODES[i]}=http://${vm.ip}:2380`).join(",");
    const members: Member[] = [];
    for (const [i, vm] of views.entries()) {
      const pid = await rpc.startProcess(vm.id, { argv: etcdArgv(NODES[i]!, vm.ip, cluster) });
      members.push({ name: NODES[i]!, vmId: vm.id, ip: vm.ip, pid });
    }
    const byName = new Map(members.map((m) => [m.name, m]));
    const d = Driver.start(
      worker.netns,
      members.map((m) => ({ name: m.name, url: `http://${m.ip}:2379` })),
    );
    driver = d;
    try {
      await d.until("the cluster to elect a leader", 120_000, 0, sameLeader);
    } catch (err) {
      const logs = await Promise.all(members.map(async (m) => `--- ${m.name}\n${await etcdLog(rpc, m)}`));
      throw new Error(`${(err as Error).message}\n${logs.join("\n")}`);
    }
    const clusterFormedMs = since(Date.now());
    log(`cluster formed at ${(clusterFormedMs / 1000).toFixed(1)} s`);

    // 3. Workload; after a healthy stretch, cut the leader off from the other two.
    d.send("start");
    await sleep(5000);
    // A leader every node named in every sample of the last 2 s, so that the cut surely hits it.
    const oldLeaderId = await d.next("a stable leader", 60_000, () => d.stableLeader(2000));
    const memberIds = new Map(d.current(0).map((s) => [s.memberId!, s.node]));
    const isolated = byName.get(memberIds.get(oldLeaderId) ?? "");
    if (!isolated) throw new Error(`leader ${oldLeaderId} is none of ${[...memberIds.keys()].join(", ")}`);
    const majority = members.filter((m) => m !== isolated);
    log(`leader is ${isolated.name}; partitioning it from ${majority.map((m) => m.name).join(", ")}`);
    const majorityNames = new Set(majority.map((m) => m.name));
    const namesMajorityLeader = (line: DriverLine) =>
      line.type === "status" && majorityNames.has(line.node) && majorityNames.has(memberIds.get(line.leader ?? "") ?? "")
        ? line
        : undefined;
    // The nemesis cuts both sides: the leader from the two, each of the two from the leader.
    const nodes: ClusterNode[] = members.map((m) => ({ id: m.vmId, ip: m.ip, name: m.name }));
    const nemesis = new Nemesis(rpc);
    await nemesis.partition(nodes, isolate(nodes, nodes.find((node) => node.id === isolated.vmId)!));
    const partitionStart = Date.now();
    // Held for partitionMs, and at least AFTER_ELECTION_MS past the new leader's election: under
    // load a split vote can take a few election timeouts, and the majority's writes should show.
    const elected = await d.next("a new leader in the majority", MAX_ELECTION_MS, namesMajorityLeader).catch(() => undefined);
    await sleep(Math.max(partitionStart + partitionMs, (elected?.atMs ?? 0) + AFTER_ELECTION_MS) - Date.now());
    const partitionEnd = Date.now();
    await nemesis.heal();
    log("healed");
    await sleep(6000);
    d.send("stop");
    const stopped = await d.next("the workload to stop", 30_000, (line) => (line.type === "stopped" ? line : undefined));

    // 4. Convergence: the same leader and revision everywhere, then every key through the formerly isolated node.
    let converged = true;
    const finalStatuses = await d
      .until("the three nodes to converge", 60_000, stopped.atMs, (s) => sameLeader(s) && s.every((x) => x.revision === s[0]!.revision))
      .catch(() => {
        converged = false;
        return d.current(stopped.atMs);
      });
    let readback: ReadbackLine | undefined;
    for (let attempt = 0; attempt < 3 && !readback?.entries; attempt++) {
      d.send(`readback ${isolated.name}`);
      readback = await d.next("the read-back", 30_000, (line) => (line.type === "readback" ? line : undefined));
    }
    if (!readback?.entries) throw new Error(`read-back through ${isolated.name} failed: ${readback?.error}`);

    // 5. The figures.
    const during = (op: OpLine) => op.startMs >= partitionStart && op.endMs <= partitionEnd;
    const writes = d.ops.filter((op) => op.op === "write");
    const reads = d.ops.filter((op) => op.op === "read");
    const acked = writes.filter((op) => op.outcome === "ok");
    const lostKeys = acked.filter((op) => readback.entries![op.key] !== op.value).map((op) => op.key);
    const isolatedDuring = writes.filter((op) => op.node === isolated.name && during(op));
    const newLeaderStatus = d.statuses.find((s) => s.atMs >= partitionStart && s.atMs <= partitionEnd && namesMajorityLeader(s));
    const files = { json: join(reportDir, "report.json"), text: join(reportDir, "report.txt"), svg: join(reportDir, "timeline.svg") };
    const report: EtcdClusterReport = {
      nodes: members.map(({ name, vmId, ip }) => ({ name, vmId, ip })),
      bootedMs,
      clusterFormedMs,
      partition: { isolated: isolated.name, majority: [...majorityNames], startMs: since(partitionStart), endMs: since(partitionEnd) },
      oldLeader: isolated.name,
      newLeader: newLeaderStatus ? memberIds.get(newLeaderStatus.leader!) : undefined,
      timeToNewLeaderMs: newLeaderStatus ? newLeaderStatus.atMs - partitionStart : undefined,
      writes: {
        attempted: writes.length,
        acknowledged: acked.length,
        failed: writes.filter((op) => op.outcome === "fail").length,
        unknown: writes.filter((op) => op.outcome === "unknown").length,
        lost: lostKeys.length,
        lostKeys: lostKeys.slice(0, 50),
        acknowledgedDuringPartition: acked.filter((op) => majorityNames.has(op.node) && during(op)).length,
        isolatedAttemptedDuringPartition: isolatedDuring.length,
        isolatedAcknowledgedDuringPartition: isolatedDuring.filter((op) => op.outcome === "ok").length,
      },
      reads: {
        attempted: reads.length,
        ok: reads.filter((op) => op.outcome === "ok").length,
        failed: reads.filter((op) => op.outcome === "fail").length,
        unknown: reads.filter((op) => op.outcome === "unknown").length,
      },
      finalRevisions: Object.fromEntries(finalStatuses.map((s) => [s.node, s.revision ?? -1])),
      converged,
      readBackThrough: isolated.name,
      totalMs: since(Date.now()),
      files,
    };
    const svg = renderTimeline(
      d.ops.map((op) => ({ series: op.node, startMs: op.startMs, endMs: op.endMs, outcome: op.outcome })),
      [
        {
          label: `partition: ${isolated.name} (leader) | ${majority.map((m) => m.name).join(" ")}`,
          startMs: partitionStart,
          endMs: partitionEnd,
        },
      ],
      { title: "etcd, 3 nodes under QEMU/TCG: reads and writes by node (latency, log scale)", originMs: t0 },
    );
    await writeFile(files.svg, svg);
    await writeFile(files.json, `${JSON.stringify({ ...report, operations: d.ops, statuses: d.statuses }, null, 1)}\n`);
    await writeFile(files.text, formatReport(report));
    log(formatReport(report));
    return report;
  } finally {
    await driver?.close().catch(() => undefined);
    if (client) {
      const rpc = client;
      await Promise.allSettled(vmIds.map((id) => rpc.deleteVm(id)));
      rpc.close();
    }
    if (worker) await destroyWorker(worker);
  }
}

/** What went against expectations: nothing, in a healthy run. */
export function problems(report: EtcdClusterReport): string[] {
  const w = report.writes;
  return [
    ...(report.newLeader ? [] : ["the majority elected no new leader during the partition"]),
    ...(w.acknowledgedDuringPartition > 0 ? [] : ["no write was acknowledged during the partition"]),
    ...(w.isolatedAcknowledgedDuringPartition > 0
      ? [`the isolated node acknowledged ${w.isolatedAcknowledgedDuringPartition} writes`]
      : []),
    ...(w.lost > 0 ? [`${w.lost} acknowledged writes lost`] : []),
    ...(report.converged ? [] : ["the nodes did not converge"]),
  ];
}

export function formatReport(report: EtcdClusterReport): string {
  const s = (ms: number | undefined) => (ms === undefined ? "-" : `${(ms / 1000).toFixed(1)} s`);
  const w = report.writes;
  const p = report.partition;
  const rows: [string, string][] = [
    ["VMs booted (agents ready)", s(report.bootedMs)],
    ["cluster formed", s(report.clusterFormedMs)],
    ["partition", `${p.isolated} | ${p.majority.join(" ")}, ${s(p.startMs)} to ${s(p.endMs)}`],
    ["old leader", report.oldLeader],
    ["new leader", report.newLeader ?? "none"],
    ["time to a new leader", s(report.timeToNewLeaderMs)],
    ["writes acknowledged during the partition", String(w.acknowledgedDuringPartition)],
    ["isolated node's writes during it (ok/tried)", `${w.isolatedAcknowledgedDuringPartition}/${w.isolatedAttemptedDuringPartition}`],
    ["writes: tried / acknowledged / failed / unknown", `${w.attempted} / ${w.acknowledged} / ${w.failed} / ${w.unknown}`],
    ["writes lost (must be 0)", String(w.lost)],
    [
      "reads: tried / ok / failed / unknown",
      `${report.reads.attempted} / ${report.reads.ok} / ${report.reads.failed} / ${report.reads.unknown}`,
    ],
    [
      "final revisions",
      Object.entries(report.finalRevisions)
        .map(([node, rev]) => `${node}=${rev}`)
        .join(" "),
    ],
    ["converged", report.converged ? "yes" : "NO"],
    ["verdict", problems(report).join("; ") || "as expected"],
    ["total run", s(report.totalMs)],
  ];
  const width = Math.max(...rows.map(([label]) => label.length));
  return `${rows.map(([label, value]) => `${label.padEnd(width)}  ${value}`).join("\n")}\n`;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error("run as root: the example makes network namespaces");
  const reportDir = process.argv[2] ?? process.env.PCR_REPORT_DIR;
  const report = await runEtcdCluster({ reportDir });
  console.log(`report: ${report.files.text}, ${report.files.json}, ${report.files.svg}`);
  if (problems(report).length) process.exitCode = 1;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    console.error(`etcd-cluster: ${(err as Error).stack ?? err}`);
    process.exit(1);
  });
}
