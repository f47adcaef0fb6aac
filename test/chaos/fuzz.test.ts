// Fuzzing a REAL worker (QEMU backend, networking, secrets on tmpfs): 10,000 fuzzed createVm specs
// through the client, and 10,000 malformed RPC frames through raw connections. Every answer is a
// typed error ("CODE: message" with a known code, never INTERNAL), the worker never exits, logs no
// error, and afterwards holds no more fds and leaves nothing behind.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { SecretInput, VmSpecInput } from "../../worker/core/api.js";
import { ERROR_CODES } from "../../worker/core/errors.js";
import { MessageTag } from "../../worker/rpc/protocol.js";
import { frameCorpus, frameMutator } from "../rpc/frame-fuzz.js";
import { RawPeer } from "../rpc/raw-peer.js";
import { destroyWorker, type WorkerProcess } from "../helpers/worker-process.js";
import { client, guestSpec, logTail, prng, report, SEED, settledFds, skip, startChaosWorker, waitFor } from "./harness.js";
import { checkInvariants, fdCount } from "./invariants.js";

const SPECS = 10_000;
const FRAMES = 10_000;
const PARALLEL = 16;
/** Codes a bad request may get; INTERNAL would be a bug (an input the worker did not validate). */
// ALREADY_EXISTS: two valid specs of one group may draw the same hostname.
const EXPECTED_CODES = new Set(["INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ALREADY_EXISTS"]);

const random = prng(SEED);
const mutate = frameMutator(random);
const int = (n: number) => Math.floor(random() * n);
const pick = <T>(values: readonly T[]): T => values[int(values.length)]!;
const chance = (p: number) => random() < p;

function randomText(max: number, alphabet = ""): string {
  const length = int(max + 1);
  let out = "";
  for (let i = 0; i < length; i++) {
    out += alphabet
      ? alphabet[int(alphabet.length)]
      : String.fromCodePoint(chance(0.9) ? int(0x80) : int(0x10ffff + 1 - 0x800) + (chance(0.5) ? 0 : 0));
  }
  return out.replace(/[\ud800-\udfff]/g, "x");
}

/** One field of the spec (or the call) made bad, sometimes several; a few specs stay valid. */
function fuzzedCall(): { spec: VmSpecInput; secrets: SecretInput[]; ttlSeconds: number } {
  const valid = guestSpec();
  const spec: VmSpecInput = { ...valid, hostname: `fz-${int(1e6)}` };
  let secrets: SecretInput[] = [];
  let ttlSeconds = chance(0.5) ? 0 : 1 + int(3);
  const badPath = () =>
    pick([
      "",
      "/etc/passwd",
      "/nix/store",
      "/nix/store/",
      `${valid.kernel}/../../../etc/passwd`,
      `${valid.kernel}/./x`,
      valid.kernel.replace("/nix/store/", "/nix/store//"),
      `${valid.kernel}\0`,
      "relative/path",
      `/nix/store/${randomText(40, "abcdefghijklmnopqrstuvwxyz0123456789")}-x`,
      randomText(200),
      `/nix/store/${"e".repeat(32)}-bad-base32`,
    ]);
  const mutations: (() => void)[] = [
    () =>
      (spec.hostname = pick(["", "-", "a_b", "x".repeat(64), `${"a".repeat(63)}.`.repeat(5), "bad host", "ünï", randomText(300), ".."])),
    () => (spec.group = pick(["fz", "fz", "Bad_Group", "x".repeat(64), "a.b", "-", randomText(20), "ünï"])),
    () => (spec.kernel = badPath()),
    () => (spec.initrd = badPath() || "/etc/hosts"),
    () => (spec.image = badPath() || "/dev/sda"),
    () =>
      (spec.cmdline = pick([
        "pcr.ip=1.2.3.4",
        "tsc_early_khz=1",
        "a\nb",
        "x".repeat(2000),
        `${randomText(100)}\u0001`,
        "pcr.hostname=evil quiet",
      ])),
    () => (spec.cpu = pick([0, 4096, 2 ** 32 - 1, 1000 + int(1e6)])),
    () => (spec.memoryBytes = pick([0n, 1n, 1024n, (1n << 64n) - 1n, 256n * 1024n * 1024n + 1n, 1n << 50n, BigInt(int(2 ** 31))])),
    () =>
      (spec.allowedDomains = pick([
        ["example.com"],
        ["*"],
        ["http://x.com"],
        ["1.2.3.4/33"],
        ["", ""],
        Array.from({ length: 300 }, (_, i) => `10.0.${i % 256}.1`),
        [randomText(300)],
      ])),
    () =>
      (secrets = pick([
        [{ name: "../escape", value: new Uint8Array(1) }],
        [{ name: "", value: new Uint8Array(1) }],
        [{ name: "a/b", value: new Uint8Array(1) }],
        [{ name: "x".repeat(300), value: new Uint8Array(1) }],
        [
          { name: "dup", value: new Uint8Array(1) },
          { name: "dup", value: new Uint8Array(2) },
        ],
        [{ name: ".", value: new Uint8Array(0) }],
        [{ name: "big", value: new Uint8Array(64 * 1024 * 1024 + 1) }]
          .slice(0, chance(0.01) ? 1 : 0)
          .concat([{ name: "..", value: new Uint8Array(1) }]),
      ])),
    () => (ttlSeconds = pick([2 ** 32 - 1, 10 * 365 * 24 * 3600])),
  ];
  if (!chance(0.01)) {
    const count = 1 + int(3);
    for (let i = 0; i < count; i++) pick(mutations)();
  }
  return { spec, secrets, ttlSeconds };
}

/** "CODE: message" with a known code, or a protocol-level answer from the RPC layer itself. */
function typedReason(reason: string): boolean {
  const code = /^([A-Z_]+): /.exec(reason)?.[1];
  if (code) return (ERROR_CODES as readonly string[]).includes(code) && code !== "INTERNAL";
  return /^Method not implemented|^sendResultsTo other than caller/.test(reason);
}

function errorLines(logs: string): string[] {
  return logs.split("\n").filter((line) => /"level":(50|60)/.test(line));
}

describe("fuzzing a real worker", { skip }, () => {
  let worker: WorkerProcess;

  before(async () => {
    // At most 2 VMs: the rare fuzzed spec that is valid boots one, the rest get RESOURCE_EXHAUSTED.
    worker = await startChaosWorker(["--max-vms", "2"]);
  });

  after(async () => {
    if (worker) await destroyWorker(worker);
  });

  test(`${SPECS} fuzzed specs through createVm: typed errors, no crash, nothing left (seed ${SEED})`, { timeout: 600_000 }, async () => {
    const started = Date.now();
    const clients = await Promise.all(Array.from({ length: PARALLEL }, () => client(worker)));
    const warm = await clients[0]!.createVm(guestSpec());
    await clients[0]!.deleteVm(warm);
    const baselineFds = await settledFds(worker);
    const codes = new Map<string, number>();
    const untyped: string[] = [];
    let created = 0;
    let next = 0;
    await Promise.all(
      clients.map(async (c) => {
        while (next < SPECS) {
          next++;
          const { spec, secrets, ttlSeconds } = fuzzedCall();
          try {
            const id = await c.createVm(spec, { secrets, ttlSeconds });
            created++;
            codes.set("OK", (codes.get("OK") ?? 0) + 1);
            await c.deleteVm(id).catch((err: { code?: string }) => {
              if (err.code !== "NOT_FOUND") throw err; // a ttl of 1 s may have beaten us to it
            });
          } catch (err) {
            const code = (err as { code?: string }).code ?? "none";
            codes.set(code, (codes.get(code) ?? 0) + 1);
            if (!EXPECTED_CODES.has(code) && untyped.length < 10)
              untyped.push(
                `${code}: ${(err as Error).message} for ` +
                  JSON.stringify(spec, (_k, v) => (typeof v === "bigint" ? String(v) : v)).slice(0, 300),
              );
          }
        }
      }),
    );
    for (const c of clients) c.close();
    assert.deepEqual(untyped, [], logTail(worker));
    assert.ok(fdCount(worker.pid) !== undefined, "the worker is gone");
    assert.deepEqual(errorLines(worker.logs()).slice(0, 5), []);
    const { problems, snap } = await checkInvariants(worker, { baselineFds, fdSlack: 2 });
    assert.deepEqual(problems, [], logTail(worker));
    assert.equal(snap.vms.length, 0);
    report("fuzz-specs", {
      specs: SPECS,
      codes: Object.fromEntries(codes),
      created,
      leaks: problems.length,
      fds: { baseline: baselineFds, end: snap.fds },
      seed: SEED,
      wallMs: Date.now() - started,
    });
  });

  test(`${FRAMES} malformed RPC frames: typed errors or a dropped connection, the worker serves on (seed ${SEED})`, {
    timeout: 600_000,
  }, async () => {
    const started = Date.now();
    const baselineFds = await settledFds(worker);
    const corpus = frameCorpus({ getVm: "vm-0000000000", deleteVm: "vm-0000000001" });
    const figures = { frames: 0, connections: 0, returns: 0, exceptions: 0, aborted: 0, untyped: [] as string[] };
    const hostile = async () => {
      const frames = [corpus[0]!];
      for (let n = 1 + int(12); n > 0; n--) {
        const frame = pick(corpus);
        frames.push(chance(0.9) ? mutate(frame) : frame);
      }
      if (chance(0.1)) {
        const noise = Buffer.alloc(1 + int(4096));
        for (let i = 0; i < noise.length; i++) noise[i] = int(256);
        frames.push(noise);
      }
      figures.frames += frames.length;
      figures.connections++;
      const peer = await RawPeer.connect(worker.socket);
      peer.send(Buffer.concat(frames));
      await peer.waitClosed(250).catch(() => undefined);
      peer.close();
      for (const reply of peer.replies) {
        if (reply.tag === MessageTag.Abort) figures.aborted++;
        if (reply.tag !== MessageTag.Return) continue;
        figures.returns++;
      }
      for (let q = 0; q < 8; q++) {
        const answer = peer.returnFor(q);
        if (!answer?.exception) continue;
        figures.exceptions++;
        if (!typedReason(answer.reason) && figures.untyped.length < 10) figures.untyped.push(answer.reason);
      }
    };
    while (figures.frames < FRAMES) {
      await Promise.all(Array.from({ length: PARALLEL }, () => hostile()));
      assert.ok(fdCount(worker.pid) !== undefined, "the worker died");
    }
    assert.deepEqual(figures.untyped, []);
    const c = await client(worker);
    assert.deepEqual(await c.listVms(), []);
    c.close();
    assert.deepEqual(errorLines(worker.logs()).slice(0, 5), []);
    const fds = await waitFor("fds back to baseline", 5000, () => {
      const now = fdCount(worker.pid) ?? Infinity;
      return now <= baselineFds + 2 ? now : undefined;
    });
    const { problems } = await checkInvariants(worker, { baselineFds, fdSlack: 2 });
    assert.deepEqual(problems, [], logTail(worker));
    report("fuzz-frames", {
      ...figures,
      untyped: figures.untyped.length,
      leaks: problems.length,
      fds: { baseline: baselineFds, end: fds },
      seed: SEED,
      wallMs: Date.now() - started,
    });
  });
});
