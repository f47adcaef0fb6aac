// A cage adapter for tests that run something caged beside the cage's own tests (test/cage/).
import { pino } from "pino";
import { createCage } from "../../worker/cage/cage.js";
import type { CagePort } from "../../worker/ports/index.js";

/** uids from `firstUid` (a hundred of them: keep ranges of test files apart), modest limits. */
export function testCage(runtimeDir: string, firstUid: number): CagePort {
  return createCage({
    uidRange: { first: firstUid, last: firstUid + 99 },
    memoryOverheadBytes: 256 * 1024 ** 2,
    pidsMax: 256,
    nofile: 4096,
    runtimeDir,
    logger: pino({ level: "silent" }),
  });
}
