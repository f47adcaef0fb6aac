// The peer of a unix socket connection, found through the kernel's socket diagnostics (ss -xp).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { parseSsUnix, unixPeerCredentials } from "../../worker/rpc/peer-cred.js";

test("ss -xpnH lines: inode, peer inode and the owning process", () => {
  const sockets = parseSsUnix(
    [
      'u_str ESTAB 0      0      /run/procurator/worker.sock 591230 * 592427 users:(("node",pid=8777,fd=21))',
      'u_str ESTAB 0      0                     * 592427 * 591230 users:(("pcr worker",pid=8784,fd=18))',
      "u_dgr UNCONN 0 0 * 1234 * 0",
      "garbage",
    ].join("\n"),
  );
  assert.deepEqual(sockets.get(591230), { peer: 592427, pid: 8777, command: "node" });
  assert.deepEqual(sockets.get(592427), { peer: 591230, pid: 8784, command: "pcr worker" });
  assert.deepEqual(sockets.get(1234), { peer: 0, pid: undefined, command: undefined });
});

test("a real connection: the peer is the connecting process, with its uid", async () => {
  const dir = mkdtempSync(join(tmpdir(), "pcr-peer-"));
  const path = join(dir, "s.sock");
  const accepted = new Promise<net.Socket>((resolve) => {
    const server = net.createServer((socket) => {
      server.close();
      resolve(socket);
    });
    server.listen(path);
  });
  const child = spawn(process.execPath, ["-e", `require("net").connect(${JSON.stringify(path)}); setTimeout(() => {}, 10000)`]);
  try {
    const socket = await accepted;
    const cred = await unixPeerCredentials(socket);
    assert.deepEqual(cred, { pid: child.pid, uid: process.getuid!(), command: "node" });
    socket.destroy();
  } finally {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});
