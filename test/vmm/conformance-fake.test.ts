// The VMM contract (conformance.ts) on the in-memory fake backend: always runs, in milliseconds.
import { failedPrecondition } from "../../worker/core/errors.js";
import { createFakeBackend, type FakeBackend, FakeVmmHost } from "../../worker/vmm/fake/index.js";
import { vmmConformance } from "./conformance.js";

// One machine for every backend instance the suite builds: a second instance is a restarted worker.
const host = new FakeVmmHost();

vmmConformance({
  name: "fake",
  skip: false,
  backend: async () => createFakeBackend({ host }),
  spec: (_backend, id) => ({
    id,
    vmDir: `/fake/conformance/${id}`,
    kernel: "/nix/store/fake-kernel/bzImage",
    image: "/nix/store/fake-image/root.img",
    cmdline: "console=ttyS0",
    cpu: 1,
    memoryBytes: 256 * 1024 * 1024,
    consolePath: `/fake/conformance/${id}/console.log`,
  }),
  guestReady: async () => undefined,
  brokenLaunch: (backend, id) => {
    (backend as FakeBackend).failNextLaunch(failedPrecondition("fake VMM: kernel not found"));
    return {
      id,
      vmDir: `/fake/conformance/${id}`,
      kernel: "/nix/store/missing/bzImage",
      cmdline: "",
      cpu: 1,
      memoryBytes: 256 * 1024 * 1024,
      consolePath: `/fake/conformance/${id}/console.log`,
    };
  },
  bootTimeoutMs: 1000,
  graceMs: 1000,
});
