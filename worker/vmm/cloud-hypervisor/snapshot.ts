// Cloud Hypervisor snapshots for pools. vm.snapshot writes a directory (config.json: the VmConfig;
// state.json: the devices; memory-ranges: guest RAM), and vm.restore takes the VM back from
// config.json as it is: the saved VM's TAP, console file, vsock socket and boot-file descriptors.
// A restored VM needs its own, and the REST RestoreConfig cannot say so (its net_fds replace only
// descriptor-backed nets; our TAPs go by name). So each restore gets a directory of its own in its
// vmDir: config.json rewritten for the new VM, the saved files beside it as symbolic links.
import { lstat, mkdir, readFile, readdir, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { failedPrecondition } from "../../core/errors.js";
import type { ChVmConfig } from "./backend.js";

export const SNAPSHOT_CONFIG = "config.json";
/** config.json is a few KiB; anything far larger is not Cloud Hypervisor's. */
const MAX_CONFIG_BYTES = 1024 * 1024;

// What the rewrite reads of the saved config. Cloud Hypervisor writes every field of its VmConfig
// (defaults included): the rest passes through untouched.
const device = z.object({ id: z.string() }).passthrough();
const savedConfigSchema = z
  .object({
    cpus: z.object({ boot_vcpus: z.number().int(), max_vcpus: z.number().int() }).passthrough(),
    memory: z.object({ size: z.number().int(), shared: z.boolean().optional() }).passthrough(),
    payload: z.object({ kernel: z.string().optional(), initramfs: z.string().nullish(), cmdline: z.string().nullish() }).passthrough(),
    disks: z.array(device).nullish(),
    net: z.array(device).nullish(),
    fs: z.array(device).nullish(),
    serial: z.object({ mode: z.string(), file: z.string().nullish() }).passthrough(),
    vsock: z.object({ cid: z.number().int(), socket: z.string() }).passthrough().nullish(),
  })
  .passthrough();
type SavedConfig = z.infer<typeof savedConfigSchema>;

/**
 * The saved VmConfig with everything that belongs to one VM taken from `fresh` (what vm.create
 * would get for the new VM): boot files, disks' paths, TAP and MAC, virtio-fs socket, console
 * file, vsock socket. The machine must be the same one: vCPUs, memory and devices.
 */
export function restoredConfig(savedJson: unknown, fresh: ChVmConfig): SavedConfig {
  const parsed = savedConfigSchema.safeParse(savedJson);
  if (!parsed.success)
    throw failedPrecondition(`the snapshot's ${SNAPSHOT_CONFIG} is not a Cloud Hypervisor VmConfig: ${parsed.error.message}`);
  const saved = structuredClone(parsed.data);
  const differs = (what: string, was: unknown, now: unknown) => {
    if (JSON.stringify(was) !== JSON.stringify(now))
      throw failedPrecondition(
        `the snapshot is of another machine: its ${what} is ${JSON.stringify(was)}, this VM's ${JSON.stringify(now)}`,
      );
  };
  differs("vCPU count", [saved.cpus.boot_vcpus, saved.cpus.max_vcpus], [fresh.cpus.boot_vcpus, fresh.cpus.max_vcpus]);
  differs("memory size", saved.memory.size, fresh.memory.size);
  differs("memory sharing", saved.memory.shared ?? false, fresh.memory.shared);
  const { initramfs: _savedInitramfs, ...payload } = saved.payload;
  saved.payload = { ...payload, ...fresh.payload };
  saved.disks = replaceDevices("disks", saved.disks, fresh.disks, (disk) => ({ path: disk.path }));
  saved.net = replaceDevices("net", saved.net, fresh.net, (net) => ({ tap: net.tap, mac: net.mac }));
  saved.fs = replaceDevices("fs", saved.fs, fresh.fs, (fs) => ({ socket: fs.socket }));
  if (saved.serial.mode !== fresh.serial.mode) differs("serial mode", saved.serial.mode, fresh.serial.mode);
  saved.serial = { ...saved.serial, file: fresh.serial.file };
  differs("vsock", saved.vsock ? saved.vsock.cid : null, fresh.vsock ? fresh.vsock.cid : null);
  if (saved.vsock && fresh.vsock) saved.vsock = { ...saved.vsock, socket: fresh.vsock.socket };
  return saved;
}

/** The saved devices of one kind, each with the new VM's fields for the device of its id. */
function replaceDevices<T extends { id: string }>(
  kind: string,
  saved: SavedConfig["net"],
  fresh: T[] | undefined,
  fields: (device: T) => object,
): SavedConfig["net"] {
  const savedIds = (saved ?? []).map((device) => device.id).sort();
  const freshIds = (fresh ?? []).map((device) => device.id).sort();
  if (savedIds.join() !== freshIds.join())
    throw failedPrecondition(`the snapshot is of another machine: its ${kind} are [${savedIds}], this VM's [${freshIds}]`);
  if (!saved) return saved;
  return saved.map((device) => ({ ...device, ...fields(fresh!.find((mine) => mine.id === device.id)!) }));
}

/**
 * Makes `restoreDir` a snapshot directory vm.restore can take for the new VM: config.json
 * rewritten (restoredConfig), every other saved file linked. Returns its file:// URL.
 */
export async function prepareRestoreDir(snapshotDir: string, restoreDir: string, fresh: ChVmConfig): Promise<string> {
  const names = await readdir(snapshotDir).catch((err: Error) => {
    throw failedPrecondition(`cannot read the snapshot ${snapshotDir}: ${err.message}`);
  });
  if (!names.includes(SNAPSHOT_CONFIG)) throw failedPrecondition(`the snapshot ${snapshotDir} has no ${SNAPSHOT_CONFIG}`);
  const configPath = join(snapshotDir, SNAPSHOT_CONFIG);
  if ((await lstat(configPath)).size > MAX_CONFIG_BYTES) throw failedPrecondition(`${configPath} is larger than ${MAX_CONFIG_BYTES} bytes`);
  let saved: unknown;
  try {
    saved = JSON.parse(await readFile(configPath, "utf8"));
  } catch (err) {
    throw failedPrecondition(`${configPath} is not JSON: ${(err as Error).message}`);
  }
  const config = restoredConfig(saved, fresh);
  await rm(restoreDir, { recursive: true, force: true });
  // Readable by the VMM, which may be caged as a uid of its own (its directory keeps others out).
  await mkdir(restoreDir, { mode: 0o755 });
  await writeFile(join(restoreDir, SNAPSHOT_CONFIG), JSON.stringify(config), { mode: 0o644 });
  for (const name of names) if (name !== SNAPSHOT_CONFIG) await symlink(join(snapshotDir, name), join(restoreDir, name));
  return `file://${restoreDir}`;
}
