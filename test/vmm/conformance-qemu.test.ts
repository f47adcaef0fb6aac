// The VMM contract (conformance.ts) on QEMU booting the bundled test guest (TCG here): two boots.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";
import pino from "pino";
import type { VmLaunchSpec, VmmBackend } from "../../worker/ports/index.js";
import { detectAccelerator } from "../../worker/vmm/accel.js";
import { createQemuBackend } from "../../worker/vmm/qemu/backend.js";
import { guestLaunchSpec, testGuest } from "../helpers/repo.js";
import { vmmConformance } from "./conformance.js";

const READY = "pcr-guest: ready";
const guest = testGuest();
const logger = pino({ level: process.env.PCR_TEST_LOG ?? "silent" });

function skipReason(): string | false {
  if ("skip" in guest) return guest.skip;
  if (process.getuid?.() !== 0) return "not root: the QEMU conformance suite runs QEMU as the worker does, as root";
  if (spawnSync("qemu-system-x86_64", ["--version"]).status !== 0) return "qemu-system-x86_64 not found";
  return false;
}

const skip = skipReason();
const root = skip ? "" : mkdtempSync(join(tmpdir(), "pcr-conformance-qemu-"));
after(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

function spec(backend: VmmBackend, id: string, overrides: Partial<VmLaunchSpec> = {}): VmLaunchSpec {
  if (!("spec" in guest)) throw new Error("no test guest");
  return guestLaunchSpec(guest.spec, root, backend, id, overrides);
}

/** Polls the console file until the guest says it is ready (its ACPI handling is up by then). */
async function waitForReady(path: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const content = existsSync(path) ? readFileSync(path, "utf8") : "";
    if (content.includes(READY)) return;
    if (Date.now() > deadline) throw new Error(`console ${path} has no "${READY}" after ${timeoutMs} ms; tail: ${content.slice(-500)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

vmmConformance({
  name: "qemu",
  skip,
  backend: async () => {
    const { accel } = await detectAccelerator({
      probeTimeoutMs: 10_000,
      probeKernel: "spec" in guest ? { kernel: guest.spec.kernel } : undefined,
    });
    return createQemuBackend({ accel, logger });
  },
  spec: (backend, id) => spec(backend, id),
  guestReady: (launched) => waitForReady(launched.consolePath, 90_000),
  // QEMU cannot open the root image: it exits at start, before the guest exists (no boot is spent).
  brokenLaunch: (backend, id) => spec(backend, id, { image: join(root, "no-such-image.raw") }),
  bootTimeoutMs: 10_000,
  graceMs: 10_000,
});
