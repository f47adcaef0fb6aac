// Unix sockets the worker listens on and QEMU connects to (a snapshot's stream, the in-QEMU delay's
// packets). A caged QEMU runs as the VM's own uid, and connecting needs write permission on the
// socket file: it is made connectable by anyone, as the VM's directory it lives in (0700, the
// VM's uid) already keeps everyone else out.
import { chmod, rm } from "node:fs/promises";
import type { Server } from "node:net";

export async function listenForVmm(server: Server, path: string): Promise<void> {
  await rm(path, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolve());
  });
  await chmod(path, 0o777);
}
