// A real worker in its own namespace plus an "upstream" namespace the guest can ping across the
// bridge (198.18.0.10, allowed by the VM's allowedDomains), and console helpers for tick workloads.
import { execa } from "execa";
import type { VmSpecInput } from "../../worker/core/api.js";
import { type WorkerClient, connectWorker } from "../../worker/rpc/worker-client.js";
import { createNetns, deleteNetns } from "../helpers/netns.js";
import { destroyWorker, startWorker, type WorkerProcess } from "../helpers/worker-process.js";

export const PEER_IP = "198.18.0.10";
const WORKER_ARGS = ["--uplink", "up0", "--http-listen", "off"];

/**
 * The guest's workload: one TICK line per round with a ping to the peer and one 4 KiB read and
 * write of the data disk (page cache dropped, write fsync'd, so both reach the device).
 */
export const TICK_SCRIPT = [
  "i=0",
  "while :; do",
  "i=$((i+1))",
  `p=$(ping -c 1 -W 1 ${PEER_IP} 2>/dev/null | grep -o 'time=[0-9.]*' || echo lost)`,
  "echo 3 >/proc/sys/vm/drop_caches",
  "if dd if=/dev/vdb of=/dev/null bs=4096 count=1 skip=$((i%1000)) 2>/dev/null; then r=ok; else r=err; fi",
  "if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 seek=$((i%1000+2000)) conv=fsync 2>/dev/null; then w=ok; else w=err; fi",
  'echo "TICK $i $p r=$r w=$w"',
  "sleep 0.2",
  "done",
].join("\n");

export interface Tick {
  n: number;
  rttMs?: number;
  lost: boolean;
  read: "ok" | "err";
  write: "ok" | "err";
}

export function parseTicks(text: string): Tick[] {
  return [...text.matchAll(/^TICK (\d+) (time=([\d.]+)|lost) r=(ok|err) w=(ok|err)/gm)].map((m) => ({
    n: Number(m[1]),
    rttMs: m[3] ? Number(m[3]) : undefined,
    lost: m[2] === "lost",
    read: m[4] as "ok" | "err",
    write: m[5] as "ok" | "err",
  }));
}

export class GuestWorld {
  private constructor(
    public worker: WorkerProcess,
    public client: WorkerClient,
    readonly upstream: string,
  ) {}

  /** SIGKILLs the worker (its VMs keep running) and starts a new one on the same state. */
  async restartAfterKill(): Promise<void> {
    this.client.close();
    await this.worker.stop("SIGKILL");
    const { stateDir, runtimeDir, netns } = this.worker;
    this.worker = await startWorker({ reuse: { stateDir, runtimeDir, netns }, extraArgs: WORKER_ARGS });
    this.client = await connectWorker(this.worker.socket);
  }

  static async create(): Promise<GuestWorld> {
    const worker = await startWorker({ extraArgs: WORKER_ARGS });
    const upstream = await createNetns("pcr-u");
    try {
      await execa("ip", ["-n", worker.netns, "link", "add", "up0", "type", "veth", "peer", "name", "dn0", "netns", upstream]);
      await execa("ip", ["-n", worker.netns, "addr", "add", "198.18.0.1/24", "dev", "up0"]);
      await execa("ip", ["-n", worker.netns, "link", "set", "up0", "up"]);
      await execa("ip", ["-n", upstream, "addr", "add", `${PEER_IP}/24`, "dev", "dn0"]);
      await execa("ip", ["-n", upstream, "link", "set", "dn0", "up"]);
      return new GuestWorld(worker, await connectWorker(worker.socket), upstream);
    } catch (err) {
      await destroyWorker(worker);
      await deleteNetns(upstream);
      throw err;
    }
  }

  async createVm(spec: VmSpecInput, script: string, dataDiskBytes = 0n): Promise<string> {
    const input: VmSpecInput = {
      ...spec,
      cmdline: `${spec.cmdline} pcr.cmd=${Buffer.from(script).toString("base64")}`,
      allowedDomains: [PEER_IP],
      dataDiskBytes,
    };
    return this.client.createVm(input);
  }

  /** Console bytes from `from` to now. */
  async console(id: string, from = 0n): Promise<{ text: string; end: bigint }> {
    let offset = from;
    let text = "";
    for (;;) {
      const chunk = await this.client.read(id, offset, 1024 * 1024);
      if (chunk.data.length === 0) return { text, end: offset };
      text += Buffer.from(chunk.data).toString("utf8");
      offset = chunk.nextOffset;
    }
  }

  /** Waits until `count` ticks arrived after `from`; returns them (with the console end). */
  async ticks(id: string, from: bigint, count: number, timeoutMs = 60_000): Promise<{ ticks: Tick[]; end: bigint }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { text, end } = await this.console(id, from);
      const ticks = parseTicks(text);
      if (ticks.length >= count) return { ticks, end };
      if (Date.now() > deadline) throw new Error(`only ${ticks.length} of ${count} ticks in ${timeoutMs} ms:\n${text.slice(-2000)}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  /** Runs a command in the worker's namespace (tc, nft). */
  async inWorkerNs(command: string, args: string[]) {
    return execa("ip", ["netns", "exec", this.worker.netns, command, ...args], { reject: false });
  }

  async destroy(): Promise<void> {
    this.client.close();
    await destroyWorker(this.worker);
    await deleteNetns(this.upstream);
  }
}
