// The peer of a unix socket connection comes from the kernel (SO_PEERCRED), never from text a
// client controls.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { describeUnixPeer, unixPeerCredentials } from "../../worker/rpc/peer-cred.js";

async function acceptOne(path: string): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve) => {
    const server = net.createServer((socket) => {
      server.close();
      resolve(socket);
    });
    server.listen(path, () => chmodSync(path, 0o777));
  });
}

test("a real connection: the peer is the connecting process, with its uid and gid", async () => {
  const dir = mkdtempSync(join(tmpdir(), "pcr-peer-"));
  const path = join(dir, "s.sock");
  const accepted = acceptOne(path);
  const child = spawn(process.execPath, ["-e", `require("net").connect(${JSON.stringify(path)}); setTimeout(() => {}, 10000)`]);
  try {
    const socket = await accepted;
    const cred = unixPeerCredentials(socket);
    assert.deepEqual(cred, { pid: child.pid, uid: process.getuid!(), gid: process.getgid!(), command: "node" });
    assert.equal(describeUnixPeer("unix#1", cred), `unix#1 pid=${child.pid} uid=${process.getuid!()} node`);
    socket.destroy();
  } finally {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});

// The attack that forged `ss -xp` output: a client binds its own socket to a path that reads like
// another process's line. The kernel's credentials do not care what the path says.
test("a client that binds its socket to a path forging another process is still named by its real pid and uid", {
  skip: process.getuid?.() !== 0 ? "needs root to become uid 65534" : false,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), "pcr-peer-"));
  chmodSync(dir, 0o755);
  const path = join(dir, "s.sock");
  const forged = join(dir, `x 4242 * 0 users:(("sshd",pid=1,fd=3))`);
  const accepted = acceptOne(path);
  const script = [
    "use Socket; use POSIX;",
    "socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die $!;",
    "bind($s, pack_sockaddr_un($ARGV[0])) or die $!;",
    "POSIX::setgid(65534); POSIX::setuid(65534) or die $!;",
    "connect($s, pack_sockaddr_un($ARGV[1])) or die $!;",
    "sleep 10;",
  ].join(" ");
  const child = spawn("perl", ["-e", script, forged, path], { stdio: ["ignore", "ignore", "inherit"] });
  try {
    const socket = await accepted;
    const cred = unixPeerCredentials(socket);
    assert.equal(cred?.pid, child.pid);
    assert.equal(cred?.uid, 65534);
    assert.equal(cred?.gid, 65534);
    assert.equal(cred?.command, "perl");
    assert.doesNotMatch(describeUnixPeer("unix#1", cred), /sshd|pid=1 /);
    socket.destroy();
  } finally {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});
