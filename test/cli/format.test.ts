// The CLI's VM table: a HOST column only when some VM is on a fleet host; hosts from the worker
// (or a gateway) are its text, shown printable.
import assert from "node:assert/strict";
import { test } from "node:test";
import { formatVmTable, vmToJson } from "../../cli/format.js";
import { sampleVm } from "../rpc/fake-worker.js";
import type { VmView } from "../../worker/core/api.js";

test("list-vms: no HOST column from a lone worker; one, with - for VMs without a host, through a fleet", () => {
  const lone = formatVmTable([
    { ...sampleVm(1), host: "" },
    { ...sampleVm(3), host: undefined },
  ]);
  assert.doesNotMatch(lone.split("\n")[0]!, /HOST\b(?!NAME)/);
  const fleet = formatVmTable([
    { ...sampleVm(1), host: "h1" },
    { ...sampleVm(3), host: "" },
  ]);
  const [header, first, second] = fleet.split("\n");
  const column = header!.indexOf("HOST ");
  assert.ok(column > header!.indexOf("ORIGIN") && column < header!.indexOf("FAILURE"), header);
  assert.equal(first!.slice(column).split(/\s+/)[0], "h1");
  assert.equal(second!.slice(column).split(/\s+/)[0], "-");
});

test("a host with terminal control characters (a hostile gateway's) is printed inert", () => {
  const table = formatVmTable([{ ...sampleVm(1), host: "h1\u001b[2Jx" }]);
  assert.ok(!table.includes("\u001b"), JSON.stringify(table));
});

test("every text column from the server is printed inert: id, hostname, status, ip, origin too", () => {
  const hostile = "x\u001b]0;owned\u0007\u001b[2J\nfake row\t";
  const vm = { ...sampleVm(1), id: hostile, hostname: hostile, ip: hostile, origin: hostile } as unknown as VmView;
  const table = formatVmTable([vm]);
  const lines = table.trimEnd().split("\n");
  assert.equal(lines.length, 2, "a header and one row");
  // biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
  assert.ok(!/[\u0000-\u001f\u007f]/.test(lines.join("")), JSON.stringify(table));
});

test("get-vm's JSON has the host and the idempotency key", () => {
  const json = vmToJson({ ...sampleVm(1), host: "h1", idempotencyKey: "key 1" });
  assert.equal(json.host, "h1");
  assert.equal(json.idempotencyKey, "key 1");
});
