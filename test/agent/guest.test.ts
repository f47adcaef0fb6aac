// The guest agent in a real guest: QEMU (TCG here) boots the test guest with the agent's
// virtio-serial port, and the worker's channel runs commands in it, survives the agent's death,
// and breaks (only itself) when the guest writes junk into the port.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { AgentChannel } from "../../worker/agent/channel.js";
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

  test("the agent killed inside the guest: its calls fail, then work again once init restarts it", async () => {
    const oldPid = channel.hello?.pid;
    const sleeper = channel.exec({ argv: ["/bin/sleep", "60"], timeoutMs: 120_000 });
    await channel.exec({ argv: ["/bin/sh", "-c", `kill -9 ${oldPid}`] }).catch(() => undefined);
    await rejectsWith(sleeper, "UNAVAILABLE", /restarted/);
    await waitFor("the new agent", 30_000, async () => (channel.hello?.pid !== oldPid ? true : undefined));
    assert.equal((await channel.exec({ argv: ["/bin/echo", "back"] })).stdout.toString(), "back\n");
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
