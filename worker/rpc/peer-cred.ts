// Who is on the other end of a unix socket connection: the kernel's SO_PEERCRED (recorded when
// the peer connected, so nothing the peer names or binds can change it), through our native
// addon. One getsockopt, no process spawned; the command is the peer's /proc/<pid>/comm.
import { readFileSync } from "node:fs";
import type { Socket } from "node:net";
import { native } from "../native.js";

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
  /** The peer's own name for itself (/proc/<pid>/comm); informative, not an identity. */
  command: string;
}

/** The fd of a connected socket, or undefined (not open, or not backed by one fd). */
function socketFd(socket: Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === "number" && fd >= 0 ? fd : undefined;
}

function commandOf(pid: number): string {
  try {
    // comm is at most 15 bytes, chosen by the process: keep it printable for the audit line.
    return readFileSync(`/proc/${pid}/comm`, "utf8")
      .trim()
      .replace(/[^\x20-\x7e]/g, "?");
  } catch {
    return "";
  }
}

/** The peer's credentials, or undefined when the socket is not a connected unix socket. */
export function unixPeerCredentials(socket: Socket): PeerCredentials | undefined {
  const fd = socketFd(socket);
  if (fd === undefined) return undefined;
  try {
    const { pid, uid, gid } = native().peerCred(fd);
    return { pid, uid, gid, command: pid > 0 ? commandOf(pid) : "" };
  } catch {
    return undefined;
  }
}

/** How an audit line names the peer: `unix#3 pid=4242 uid=0 node`. */
export function describeUnixPeer(peer: string, cred: PeerCredentials | undefined): string {
  if (!cred) return peer;
  return `${peer} pid=${cred.pid} uid=${cred.uid}${cred.command ? ` ${cred.command}` : ""}`;
}
