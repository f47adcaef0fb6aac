// Pure parts of the network adapter: allowlist parsing, addresses, names, rule building.
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { WorkerError } from "../../worker/core/errors.js";
import { parseAllowlist } from "../../worker/net/allowlist.js";
import { tapName } from "../../worker/net/ip.js";
import { Ipam, macForIp, parseCidr } from "../../worker/net/ipam.js";
import { refreshAllowCommands, vmIdOf } from "../../worker/net/layout.js";

const invalid = (err: unknown) => err instanceof WorkerError && err.code === "INVALID_ARGUMENT";

test("allowlist: names, addresses and CIDRs are normalised", () => {
  const parsed = parseAllowlist([
    "Example.COM.",
    "api.example.com",
    "example.com",
    "10.1.2.3",
    "10.1.0.0/16",
    "10.1.9.9/32",
    "192.0.2.77/24",
  ]);
  assert.deepEqual(parsed.domains, ["api.example.com", "example.com"]);
  // 10.1.2.3 and 10.1.9.9 are inside 10.1.0.0/16; host bits of 192.0.2.77/24 are cleared.
  assert.deepEqual(parsed.cidrs.sort(), ["10.1.0.0/16", "192.0.2.0/24"]);
});

test("allowlist: wildcards and malformed entries are INVALID_ARGUMENT", () => {
  for (const bad of [
    "*.example.com",
    "exa*mple.com",
    "",
    "a..b",
    "-a.test",
    "a-.test",
    `${"x".repeat(64)}.test`,
    "1.2.3",
    "1.2.3.256",
    "1.2.3.4/33",
    "2001:db8::1",
    "example.com:443",
    "a_b.test",
    "1.2.3.04",
  ]) {
    assert.throws(() => parseAllowlist([bad]), invalid, JSON.stringify(bad));
  }
});

test("tap names fit IFNAMSIZ and stay distinct", () => {
  assert.equal(tapName("vm-0123456789"), "pcr-0123456789");
  const long = tapName("some-very-long-identifier-from-elsewhere");
  assert.ok(long.startsWith("pcr-") && long.length <= 15);
  assert.notEqual(long, tapName("some-very-long-identifier-from-elsewherf"));
});

test("per-VM object names map back to the VM id", () => {
  assert.equal(vmIdOf("egress_vm-abc"), "vm-abc");
  assert.equal(vmIdOf("guard_vm-abc"), "vm-abc");
  assert.equal(vmIdOf("forward"), undefined);
});

test("addresses: MAC is locally administered unicast and derived from the IP", () => {
  assert.equal(macForIp("10.213.1.2"), "02:50:0a:d5:01:02");
  assert.deepEqual(parseCidr("10.213.7.9/16"), { base: 0x0ad50000, prefixLength: 16 });
});

test("ipam: leases persist, a released address cools down while others are free, and they run out", async () => {
  const dir = await mkdtemp(join(tmpdir(), "pcr-ipam-"));
  try {
    const path = join(dir, "leases.json");
    const subnet = parseCidr("10.9.0.0/29")!; // .2 to .6 usable
    const ipam = await Ipam.open(subnet, path);
    const first = await ipam.allocate("a");
    assert.equal(first, "10.9.0.2");
    assert.equal(await ipam.allocate("a"), first);
    assert.equal(await ipam.allocate("b"), "10.9.0.3");
    const reopened = await Ipam.open(subnet, path);
    assert.equal(reopened.get("b"), "10.9.0.3");
    await reopened.release("a");
    // .2 was just released: the next VM gets a fresh address, not the one whose flows may linger.
    assert.equal(await reopened.allocate("c"), "10.9.0.4");
    for (const id of ["d", "e"]) await reopened.allocate(id);
    // Only the cooling address is left: used rather than refusing the VM.
    assert.equal(await reopened.allocate("f"), "10.9.0.2");
    await assert.rejects(reopened.allocate("g"), (err: unknown) => err instanceof WorkerError && err.code === "RESOURCE_EXHAUSTED");
    assert.deepEqual(Object.keys((JSON.parse(await readFile(path, "utf8")) as { leases: object }).leases).sort(), [
      "b",
      "c",
      "d",
      "e",
      "f",
    ]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("refreshing an address re-adds it with a fresh timeout in one transaction", () => {
  const commands = refreshAllowCommands("vm-x", [{ address: "1.2.3.4", timeoutSeconds: 40 }]);
  assert.deepEqual(
    commands.map((command) => Object.keys(command)[0]),
    ["add", "delete", "add"],
  );
  assert.deepEqual(refreshAllowCommands("vm-x", []), []);
});
