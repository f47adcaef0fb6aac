// Who is on the other end of a unix socket connection. Node has no SO_PEERCRED, so this asks the
// kernel's socket diagnostics through `ss -xp`: our end's inode (fstat of the fd) names the peer's
// inode, whose line carries the peer process. It costs one `ss` run (~20 ms), so callers ask
// lazily, once per connection, and only for what they audit.
import { execFile } from "node:child_process";
import { fstatSync, readFileSync } from "node:fs";
import type { Socket } from "node:net";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

export interface PeerCredentials {
  pid: number;
  uid: number;
  command: string;
}

/** The inode of our end of a connected unix socket, or undefined (not a unix socket, closed). */
function localInode(socket: Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) return undefined;
  try {
    return fstatSync(fd).ino;
  } catch {
    return undefined;
  }
}

/** Parses `ss -xpnH` output: inode -> peer inode and the owning process of that socket. */
export function parseSsUnix(text: string): Map<number, { peer: number; pid?: number; command?: string }> {
  const sockets = new Map<number, { peer: number; pid?: number; command?: string }>();
  for (const line of text.split("\n")) {
    const fields = line.trim().split(/\s+/);
    // Netid State Recv-Q Send-Q Local-Address Local-Port Peer-Address Peer-Port [users:((...))]
    if (fields.length < 8) continue;
    const inode = Number(fields[5]);
    const peer = Number(fields[7]);
    if (!Number.isInteger(inode) || !Number.isInteger(peer)) continue;
    const users = /users:\(\("((?:[^"\\]|\\.)*)",pid=(\d+),/.exec(line);
    sockets.set(inode, { peer, pid: users ? Number(users[2]) : undefined, command: users?.[1] });
  }
  return sockets;
}

export async function unixPeerCredentials(socket: Socket): Promise<PeerCredentials | undefined> {
  const inode = localInode(socket);
  if (inode === undefined) return undefined;
  const { stdout } = await execFileAsync("ss", ["-xpnH"], { timeout: 2_000, maxBuffer: 16 * 1024 * 1024 });
  const sockets = parseSsUnix(stdout);
  const peerInode = sockets.get(inode)?.peer;
  const peer = peerInode === undefined ? undefined : sockets.get(peerInode);
  if (!peer?.pid) return undefined;
  const status = readFileSync(`/proc/${peer.pid}/status`, "utf8");
  const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
  return { pid: peer.pid, uid, command: peer.command ?? "" };
}
