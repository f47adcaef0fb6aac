// Shared by the RPC fuzz tests (a server in a child process) and the chaos suite (a real worker):
// a seedable PRNG, a corpus of valid frames of every kind the worker answers, and a mutator.
import { MessageTag, bootstrapMessage, callMessage, finishMessage, releaseMessage, startMessage } from "../../worker/rpc/protocol.js";
import { Size, WORKER_INTERFACE_ID, WorkerMethod, writeSecrets, writeVmSpec } from "../../worker/rpc/worker-codec.js";

/** mulberry32: small, seedable, good enough for fuzzing. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Builder = Parameters<NonNullable<Parameters<typeof callMessage>[4]>>[0];

/** Valid frames: bootstrap, a call of each method (pipelined and on the import), finish, release, provide. */
export function frameCorpus(ids: { getVm: string; deleteVm: string } = { getVm: "vm-000001", deleteVm: "nope" }): Buffer[] {
  const target = { kind: "answer", questionId: 0 } as const;
  const spec = {
    hostname: "h",
    kernel: "/nix/store/k",
    initrd: "/nix/store/i",
    image: "/nix/store/r",
    cmdline: "c",
    cpu: 1,
    memoryBytes: 1n << 28n,
    allowedDomains: ["a.com", "10.0.0.0/8"],
  };
  const text = (value: string) => (b: Builder, at: number) => b.setText(b.initStruct(at, 0, 1), value);
  const provide = startMessage(MessageTag.Provide, 1, 2);
  return [
    bootstrapMessage(0),
    callMessage(1, target, WORKER_INTERFACE_ID, WorkerMethod.listVms, undefined),
    callMessage(2, { kind: "import", id: 0 }, WORKER_INTERFACE_ID, WorkerMethod.getVm, text(ids.getVm)),
    callMessage(3, target, WORKER_INTERFACE_ID, WorkerMethod.deleteVm, text(ids.deleteVm)),
    callMessage(4, target, WORKER_INTERFACE_ID, WorkerMethod.read, (b, at) => {
      const s = b.initStruct(at, Size.ReadParams[0], Size.ReadParams[1]);
      b.setText(s + 16, "vm-1");
      b.setU32(s + 8, 100);
    }),
    callMessage(5, target, WORKER_INTERFACE_ID, WorkerMethod.createVm, (b, at) => {
      const s = b.initStruct(at, Size.CreateVmParams[0], Size.CreateVmParams[1]);
      writeVmSpec(b, s + 8, spec);
      writeSecrets(b, s + 16, [{ name: "k", value: new Uint8Array([1, 2, 3]) }]);
      b.setU32(s, 60);
    }),
    callMessage(6, target, WORKER_INTERFACE_ID, WorkerMethod.events, (b, at) => {
      const s = b.initStruct(at, Size.EventsParams[0], Size.EventsParams[1]);
      b.setU32(s + 8, 5);
    }),
    finishMessage(1, true),
    releaseMessage(0, 1),
    provide.b.finish(),
  ];
}

const INTERESTING = [0, 1, 2, 3, 7, 0x7f, 0x80, 0xff];
/** Values that stress pointer decoding: list sizes near 2^29 elements, offsets off the end, far pointers. */
const INTERESTING32 = [0, 1, 0xffffffff, 0x7fffffff, 0x80000000, 0xfffffffc, (2 ** 29 - 1) * 8 + 7, 0xffff0000, 0x10000];

/** A mutator drawing from `random`: 1-4 of bit flips, interesting bytes and words, truncation, random words, inserted noise. */
export function frameMutator(random: () => number): (frame: Buffer) => Buffer {
  const int = (n: number) => Math.floor(random() * n);
  const pick = <T>(values: readonly T[]): T => values[int(values.length)]!;
  return (frame) => {
    let out = Buffer.from(frame);
    for (let m = 1 + int(4); m > 0; m--) {
      switch (int(6)) {
        case 0: // bit flip
          out[int(out.length)]! ^= 1 << int(8);
          break;
        case 1: // interesting byte
          out[int(out.length)] = pick(INTERESTING);
          break;
        case 2: // interesting 32-bit word at a word-aligned spot (pointer halves)
          if (out.length >= 8) out.writeUInt32LE(pick(INTERESTING32) >>> 0, 4 * int(Math.floor(out.length / 4)));
          break;
        case 3: // truncate (the rest of the stream then misframes)
          out = out.subarray(0, int(out.length));
          break;
        case 4: // random word
          if (out.length >= 8) {
            const at = 8 * int(Math.floor(out.length / 8));
            out.writeUInt32LE(int(2 ** 32), at);
            out.writeUInt32LE(int(2 ** 32), at + 4);
          }
          break;
        default: {
          // insert random bytes
          const noise = Buffer.alloc(1 + int(16));
          for (let i = 0; i < noise.length; i++) noise[i] = int(256);
          const at = int(out.length);
          out = Buffer.concat([out.subarray(0, at), noise, out.subarray(at)]);
        }
      }
    }
    return out;
  };
}
