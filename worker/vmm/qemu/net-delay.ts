// Delay towards the guest inside QEMU, for hosts without sch_netem: two filter-redirectors on the
// VM's netdev. The first steals every packet going to the guest and writes it to a chardev socket
// the worker listens on; the worker holds each packet for the delay (± jitter, order kept) and
// writes it to a second chardev socket, where the second redirector injects it back on the path
// to the guest, after the first. Clearing removes the stealing filter first, flushes what is held,
// then removes the rest. Wire format on both sockets: 4-byte big-endian length, packet (the TAP's
// virtio-net header, then the frame).
// A delay aimed at chosen peers holds only IPv4 packets from their addresses; the rest pass at once.
import { rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { listenForVmm } from "./vmm-socket.js";
import { join } from "node:path";
import type { Logger } from "pino";
import { WorkerError, failedPrecondition } from "../../core/errors.js";

type Execute = (command: string, args?: Record<string, unknown>) => Promise<unknown>;

/** The netdev id the QEMU backend gives the VM's NIC (qemuArgv). */
export const NETDEV_ID = "n0";
const MAX_PACKET = 65536 + 4;
/** As netem's `limit` (1000 packets by default): past it, packets are dropped, not queued. */
export const MAX_HELD_PACKETS = 1000;
const MAX_HELD_BYTES = 16 * 1024 * 1024;
const DELAY_IDS = {
  outChardev: "pcr-delay-out",
  inChardev: "pcr-delay-in",
  outFilter: "pcr-delay-steal",
  inFilter: "pcr-delay-inject",
} as const;

interface Active {
  faultId: string;
  servers: Server[];
  out?: Socket;
  into?: Socket;
  timers: Set<NodeJS.Timeout>;
  /** When the last packet is due out: packets leave in order even with jitter. */
  lastDueMs: number;
  held: HeldPackets;
}

/** The packets held back, in order, bounded in count and bytes: what does not fit is dropped. */
export class HeldPackets {
  private readonly packets: Buffer[] = [];
  private bytes = 0;
  dropped = 0;

  constructor(
    private readonly maxPackets = MAX_HELD_PACKETS,
    private readonly maxBytes = MAX_HELD_BYTES,
  ) {}

  get size(): number {
    return this.packets.length;
  }

  /** False (and counted) when the queue is full. */
  add(packet: Buffer): boolean {
    if (this.packets.length >= this.maxPackets || this.bytes + packet.length > this.maxBytes) {
      this.dropped++;
      return false;
    }
    this.packets.push(packet);
    this.bytes += packet.length;
    return true;
  }

  take(): Buffer | undefined {
    const packet = this.packets.shift();
    if (packet) this.bytes -= packet.length;
    return packet;
  }

  drain(): Buffer[] {
    this.bytes = 0;
    return this.packets.splice(0);
  }
}

/** Reads length-prefixed packets from a byte stream. */
export class PacketReader {
  private buffer: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Buffer[] {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    const packets: Buffer[] = [];
    while (this.buffer.length >= 4) {
      const length = this.buffer.readUInt32BE(0);
      if (length > MAX_PACKET) throw new Error(`redirector packet of ${length} bytes`);
      if (this.buffer.length < 4 + length) break;
      packets.push(this.buffer.subarray(0, 4 + length)); // kept framed: written back as is
      this.buffer = this.buffer.subarray(4 + length);
    }
    return packets;
  }
}

/** The virtio-net header QEMU leaves before the frame: 12 bytes (VERSION_1, mergeable buffers), 10, or none. */
const VNET_HEADER_LENGTHS = [12, 10, 0];
const ETHER_IPV4 = 0x0800;

/**
 * Whether a framed packet (4-byte length, the TAP's virtio-net header, then the Ethernet frame) is
 * IPv4 from one of `cidrs`; every packet when `cidrs` is empty. Its bytes are the guest's peers':
 * a short or odd frame is simply not theirs (the worst a lie can do is be delayed or not).
 */
export function fromPeers(cidrs: string[]): (packet: Buffer) => boolean {
  if (cidrs.length === 0) return () => true;
  const ranges = cidrs.map((cidr) => {
    const [address, length = "32"] = cidr.split("/");
    const bits = Number(length);
    const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
    const base = address!.split(".").reduce((value, octet) => ((value << 8) | Number(octet)) >>> 0, 0);
    return { mask, network: (base & mask) >>> 0 };
  });
  return (packet) => {
    // Ethernet (14 bytes), then an IPv4 header (version 4) at least up to its source address.
    const ip = VNET_HEADER_LENGTHS.map((header) => 4 + header + 14).find(
      (at) => packet.length >= at + 20 && packet.readUInt16BE(at - 2) === ETHER_IPV4 && packet[at]! >> 4 === 4,
    );
    if (ip === undefined) return false;
    const source = packet.readUInt32BE(ip + 12);
    return ranges.some(({ mask, network }) => (source & mask) >>> 0 === network);
  };
}

export class QemuNetDelay {
  private active: Active | undefined;

  constructor(
    private readonly execute: Execute,
    private readonly vmDir: string,
    private readonly log: Logger,
  ) {}

  async start(faultId: string, ms: number, jitterMs: number, cidrs: string[] = []): Promise<void> {
    if (this.active) throw failedPrecondition(`a delay (${this.active.faultId}) is already active on this VM; clear it first`);
    const active: Active = { faultId, servers: [], timers: new Set(), lastDueMs: 0, held: new HeldPackets() };
    this.active = active;
    const ids = DELAY_IDS;
    try {
      const outPath = join(this.vmDir, "delay-out.sock");
      const inPath = join(this.vmDir, "delay-in.sock");
      const outConnected = this.listen(active, outPath, (socket) => (active.out = socket));
      const inConnected = this.listen(active, inPath, (socket) => (active.into = socket));
      await Promise.all([outConnected.listening, inConnected.listening]);
      for (const [id, path] of [
        [ids.outChardev, outPath],
        [ids.inChardev, inPath],
      ] as const) {
        await this.execute("chardev-add", {
          id,
          backend: { type: "socket", data: { addr: { type: "unix", data: { path } }, server: false } },
        });
      }
      await Promise.all([outConnected.connected, inConnected.connected]);
      // The injecting filter first, so that it sits after the stealing one on the path to the guest.
      await this.execute("object-add", {
        "qom-type": "filter-redirector",
        id: ids.inFilter,
        netdev: NETDEV_ID,
        queue: "tx",
        indev: ids.inChardev,
      });
      await this.execute("object-add", {
        "qom-type": "filter-redirector",
        id: ids.outFilter,
        netdev: NETDEV_ID,
        queue: "tx",
        outdev: ids.outChardev,
        position: `id=${ids.inFilter}`,
        insert: "before",
      });
      const reader = new PacketReader();
      const held = fromPeers(cidrs);
      active.out!.on("data", (chunk: Buffer) => {
        let packets: Buffer[];
        try {
          packets = reader.push(chunk);
        } catch (err) {
          // A stream we cannot frame: stop stealing rather than guess (the guest's traffic stalls until clear).
          this.log.error({ faultId, err: (err as Error).message }, "delay stream unreadable; dropping it");
          active.out?.destroy();
          return;
        }
        for (const packet of packets) {
          if (held(packet)) this.hold(active, packet, ms, jitterMs);
          else active.into?.write(packet);
        }
      });
      this.log.info({ faultId, ms, jitterMs }, "network delay inside QEMU");
    } catch (err) {
      await this.teardown(active);
      throw failedPrecondition(`cannot delay the VM's network inside QEMU: ${(err as Error).message}`);
    }
  }

  async stop(faultId: string): Promise<void> {
    const active = this.active;
    if (!active || active.faultId !== faultId) return;
    await this.teardown(active);
  }

  private hold(active: Active, packet: Buffer, ms: number, jitterMs: number): void {
    if (!active.held.add(packet)) {
      if (active.held.dropped === 1)
        this.log.warn({ faultId: active.faultId, limit: MAX_HELD_PACKETS }, "delay queue full: dropping packets");
      return;
    }
    const due = Math.max(Date.now() + ms + (jitterMs ? (Math.random() * 2 - 1) * jitterMs : 0), active.lastDueMs);
    active.lastDueMs = due;
    const timer = setTimeout(() => {
      active.timers.delete(timer);
      const next = active.held.take();
      if (next) active.into?.write(next);
    }, due - Date.now());
    active.timers.add(timer);
  }

  private async teardown(active: Active): Promise<void> {
    const ids = DELAY_IDS;
    // Each step runs even if one before failed; a failure is worth a line unless the VMM is gone.
    const quietly = (command: string, args: Record<string, unknown>) =>
      this.execute(command, args).catch((err: unknown) => {
        const gone = err instanceof WorkerError && err.code === "FAILED_PRECONDITION";
        this.log[gone ? "debug" : "warn"](
          { faultId: active.faultId, command, err: err instanceof Error ? err.message : String(err) },
          "network delay teardown step failed",
        );
      });
    await quietly("object-del", { id: ids.outFilter }); // stop stealing first
    for (const timer of active.timers) clearTimeout(timer);
    for (const packet of active.held.drain()) active.into?.write(packet); // what was held goes out now
    await new Promise((resolve) => setTimeout(resolve, 20)); // let QEMU read them before the injector goes
    await quietly("object-del", { id: ids.inFilter });
    await quietly("chardev-remove", { id: ids.outChardev });
    await quietly("chardev-remove", { id: ids.inChardev });
    active.out?.destroy();
    active.into?.destroy();
    for (const server of active.servers) server.close();
    await rm(join(this.vmDir, "delay-out.sock"), { force: true });
    await rm(join(this.vmDir, "delay-in.sock"), { force: true });
    if (this.active === active) this.active = undefined;
  }

  /**
   * Removes the filters and chardevs a previous worker left: with its end of the sockets gone, the
   * stealing filter would drop every packet to the guest.
   */
  static async reset(execute: Execute): Promise<string[]> {
    const removed: string[] = [];
    for (const [command, id] of [
      ["object-del", DELAY_IDS.outFilter],
      ["object-del", DELAY_IDS.inFilter],
      ["chardev-remove", DELAY_IDS.outChardev],
      ["chardev-remove", DELAY_IDS.inChardev],
    ] as const) {
      if (
        await execute(command, { id }).then(
          () => true,
          () => false,
        )
      )
        removed.push(`qemu:${id}`);
    }
    return removed;
  }

  /** A one-connection unix server: QEMU's chardev connects to it as a client. */
  private listen(active: Active, path: string, onConnect: (socket: Socket) => void) {
    let resolveConnected!: () => void;
    const connected = new Promise<void>((resolve) => (resolveConnected = resolve));
    const server = createServer((socket) => {
      socket.on("error", () => undefined); // QEMU going away mid-delay is not our error
      onConnect(socket);
      resolveConnected();
    });
    active.servers.push(server);
    const listening = listenForVmm(server, path);
    const timeout = new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error("QEMU did not connect to the delay socket")), 5_000).unref(),
    );
    const connectedInTime = Promise.race([connected, timeout]);
    // Not awaited when QEMU refused the chardev: its timeout must not become an unhandled rejection.
    connectedInTime.catch(() => undefined);
    return { listening, connected: connectedInTime };
  }
}
