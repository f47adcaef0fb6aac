// The guest agent in a real guest: QEMU (TCG here) boots the test guest with the agent's
// virtio-serial port, and the worker's channel runs commands in it, moves files, runs processes
// (with a terminal too), survives the agent's death, and breaks (only itself) when the guest
// writes junk into the port.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { AgentChannel } from "../../worker/agent/channel.js";
import { AGENT_CHUNK_BYTES } from "../../worker/ports/agent.js";
import type { VmLaunchSpec, VmmHandle } from "../../worker/ports/index.js";
import { detectAccelerator } from "../../worker/vmm/accel.js";
import { createQemuBackend } from "../../worker/vmm/qemu/backend.js";
import { rejectsWith } from "../helpers/errors.js";
import { guestLaunchSpec, testGuest } from "../helpers/repo.js";
import { waitFor } from "../helpers/vm.js";

const guest = testGuest();
const skip = "skip" in guest ? guest.skip : false;
const log = pino({ level: process.env.PCR_TEST_LOG ?? "silent" });

describe("the agent in a real guest", { skip, concurrency: false }, () => {
  const root = mkdtempSync(join(tmpdir(), "pcr-agent-guest-"));
  let spec: VmLaunchSpec;
  let handle: VmmHandle;
  let channel: AgentChannel;

  before(async () => {
    if (!("spec" in guest)) return;
    const { accel } = await detectAccelerator({ probeTimeoutMs: 10_000, probeKernel: { kernel: guest.spec.kernel } });
    const backend = createQemuBackend({ accel, logger: log });
    spec = guestLaunchSpec(guest.spec, root, backend, "vm-agent");
    spec.agentSocket = join(spec.vmDir, "agent.sock");
    handle = await backend.launch(spec);
    channel = new AgentChannel({ socketPath: spec.agentSocket, log });
    channel.start();
    await channel.whenReady(90_000);
  });
  after(async () => {
    channel?.close();
    await handle?.kill().catch(() => undefined);
    rmSync(root, { recursive: true, force: true });
  });

  test("a command runs inside the guest (its hostname, its init)", async () => {
    const result = await channel.exec({ argv: ["/bin/sh", "-c", "hostname; cat /proc/1/comm"] });
    assert.equal(result.exitCode, 0);
    assert.equal(result.stdout.toString(), "pcr-guest\ninit\n"); // no pcr.hostname given
    assert.ok((channel.hello?.uptimeMs ?? 0) > 0, "the hello carries the guest's uptime");
  });

  test("stdin in, exit code out", async () => {
    const result = await channel.exec({ argv: ["/bin/sh", "-c", "wc -c; exit 7"], stdin: Buffer.alloc(1000, 0x61) });
    assert.equal(result.exitCode, 7);
    assert.equal(result.stdout.toString().trim(), "1000");
  });

  test("a file written in chunks reads back with its mode and its sha256", async () => {
    const data = randomBytes(AGENT_CHUNK_BYTES + 50_000);
    const path = "/tmp/pcr-files/deep/data.bin";
    for (let offset = 0; offset < data.length; offset += AGENT_CHUNK_BYTES) {
      const chunk = data.subarray(offset, offset + AGENT_CHUNK_BYTES);
      await channel.writeFile({ path, offset, data: chunk, mode: 0o640, truncate: offset === 0 });
    }
    const stat = await channel.stat(path);
    assert.deepEqual([stat.type, stat.size, stat.mode], ["file", data.length, 0o640]);
    const sum = await channel.exec({ argv: ["/bin/sh", "-c", `sha256sum ${path}; stat -c %a ${path}`] });
    assert.equal(sum.stdout.toString(), `${createHash("sha256").update(data).digest("hex")}  ${path}\n640\n`);
    const parts: Buffer[] = [];
    for (let offset = 0; ; ) {
      const chunk = await channel.readFile(path, offset, AGENT_CHUNK_BYTES);
      parts.push(Buffer.from(chunk.data));
      offset += chunk.data.length;
      if (chunk.eof) break;
    }
    assert.ok(Buffer.concat(parts).equals(data));
  });

  test("stat and list of /etc", async () => {
    const etc = await channel.stat("/etc");
    assert.deepEqual([etc.name, etc.type], ["etc", "dir"]);
    const listing = await channel.list("/etc", 0);
    assert.equal(listing.truncated, false);
    const names = listing.entries.map((entry) => entry.name);
    assert.deepEqual(names, [...names].sort());
    for (const name of ["group", "hosts", "passwd"]) assert.ok(names.includes(name), `/etc/${name} listed`);
    const passwd = listing.entries.find((entry) => entry.name === "passwd");
    assert.equal(passwd?.type, "file");
    assert.ok((passwd?.size ?? 0) > 0);
  });

  test("a terminal: stty size after a resize", async () => {
    const { pid } = await channel.startProcess({ argv: ["/bin/sh", "-c", "read line; stty size"], tty: { rows: 24, cols: 80 } });
    await channel.resizeProcess(pid, 50, 120);
    await channel.writeProcess(pid, Buffer.from("go\n"), false);
    let text = "";
    for (let offset = 0; ; ) {
      const out = await channel.readProcess(pid, "stdout", offset, AGENT_CHUNK_BYTES, 10_000);
      text += Buffer.from(out.data).toString();
      offset = out.nextOffset;
      if (out.eof) break;
    }
    assert.match(text, /^50 120\r$/m);
    assert.deepEqual(await channel.waitProcess(pid, 10_000), { pid, running: false, exitCode: 0, signal: 0 });
  });

  test("a process's output read by offset, and its exit status", async () => {
    const { pid } = await channel.startProcess({ argv: ["/bin/sh", "-c", "echo line1; echo line2; echo line3 >&2; exit 5"] });
    assert.deepEqual(await channel.waitProcess(pid, 10_000), { pid, running: false, exitCode: 5, signal: 0 });
    const fromSix = await channel.readProcess(pid, "stdout", 6, 1024, 10_000);
    assert.deepEqual([Buffer.from(fromSix.data).toString(), fromSix.offset, fromSix.nextOffset], ["line2\n", 6, 12]);
    const end = await channel.readProcess(pid, "stdout", 12, 1024, 10_000);
    assert.deepEqual([end.data.length, end.eof], [0, true]);
    assert.equal(Buffer.from((await channel.readProcess(pid, "stderr", 0, 1024, 10_000)).data).toString(), "line3\n");
  });

  test("the agent killed inside the guest: its calls fail, then work again once init restarts it", async () => {
    const oldPid = channel.hello?.pid;
    const sleeper = channel.exec({ argv: ["/bin/sleep", "60"], timeoutMs: 120_000 });
    await channel.exec({ argv: ["/bin/sh", "-c", `kill -9 ${oldPid}`] }).catch(() => undefined);
    await rejectsWith(sleeper, "UNAVAILABLE", /restarted/);
    await waitFor("the new agent", 30_000, async () => (channel.hello?.pid !== oldPid ? true : undefined));
    assert.equal((await channel.exec({ argv: ["/bin/echo", "back"] })).stdout.toString(), "back\n");
  });

  const sh = async (script: string) =>
    Buffer.from((await channel.exec({ argv: ["/bin/sh", "-c", script] })).stdout)
      .toString()
      .trim();

  test("personalize: a request with any bad field changes nothing; a good one sets name, machine id, clock and seed", async () => {
    const good = {
      hostname: "tenant-1.example",
      seed: randomBytes(64),
      machineId: "0123456789abcdef0123456789abcdef",
      nowMs: Date.now() + 3_600_000,
    };
    const identity = () => sh("hostname; cat /etc/machine-id 2>/dev/null");
    const clock = async () => Number(await sh("date +%s"));
    const before = await identity();
    const clockBefore = await clock();
    for (const bad of [
      { ...good, hostname: "Not_A_Label" },
      { ...good, hostname: "a".repeat(64) },
      { ...good, hostname: "trailing.dot." },
      { ...good, hostname: `${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(63)}` },
      { ...good, seed: randomBytes(8) },
      { ...good, machineId: "../../etc/passwd" },
      { ...good, nowMs: -1 },
      { ...good, address: "10.0.0.5/24" },
      { ...good, address: "10.0.0.5/24", gateway: "10.0.0.1", dns: "10.0.0.1", mac: "not-a-mac" },
      { ...good, address: "fe80::1/64", gateway: "10.0.0.1", dns: "10.0.0.1", mac: "52:54:00:00:00:01" },
      { ...good, linkUp: true, address: "10.0.0.5/24", gateway: "10.0.0.1", dns: "10.0.0.1", mac: "52:54:00:00:00:01" },
    ]) {
      await rejectsWith(channel.personalize(bad, 10_000), "INVALID_ARGUMENT", /./);
    }
    assert.equal(await identity(), before, "a refused request changed nothing");
    assert.ok(Math.abs((await clock()) - clockBefore) < 30, "nor the clock (the good request would move it an hour)");
    const random = await sh("head -c 32 /dev/urandom | od -An -tx1");
    await channel.personalize(good, 10_000);
    const [hostname, machineId, now] = (await sh("hostname; cat /etc/machine-id; date +%s")).split("\n");
    assert.equal(hostname, "tenant-1.example");
    assert.equal(machineId, good.machineId);
    assert.ok(Math.abs(Number(now) - good.nowMs / 1000) < 30, `the clock was set: ${now}`);
    assert.notEqual(await sh("head -c 32 /dev/urandom | od -An -tx1"), random);
    await channel.personalize({ ...good, nowMs: Date.now() }, 10_000); // the clock back for the tests after
  });

  test("junk the guest writes into the port breaks that channel only; the VM runs on", async () => {
    const port = (await channel.exec({ argv: ["/bin/sh", "-c", "grep -l pcr.agent /sys/class/virtio-ports/*/name"] })).stdout
      .toString()
      .trim()
      .split("/")[4];
    assert.match(port ?? "", /^vport\d+p\d+$/);
    // The port opens once at a time: the command kills the agent that started it (it lives on in
    // its own process group), then writes junk before init restarts the agent.
    const junk = `kill -9 ${channel.hello?.pid}; sleep 0.3; printf 'junk junk junk junk junk' > /dev/${port}`;
    await channel.exec({ argv: ["/bin/sh", "-c", junk], timeoutMs: 10_000 }).catch(() => undefined);
    await waitFor("the channel to break", 30_000, async () => (channel.state === "broken" ? true : undefined));
    assert.match(channel.brokenReason ?? "", /magic|schema|frame/);
    assert.equal(await handle.runState(), "running");
    assert.ok(existsSync(spec.consolePath) && readFileSync(spec.consolePath, "utf8").includes("pcr-guest: ready"));
  });
});
