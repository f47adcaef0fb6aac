// The cage port: each VMM runs as a uid of its own, in namespaces with a root of its own, under a
// seccomp filter and in a cgroup with limits (worker/cage/). The core asks for a VM's cage before
// its VMM starts and gives it back once the VMM is gone; backends start their VMM inside it.

/** How one VMM is caged: what worker/process/supervisor.ts hands to the cage helper. */
export interface CageSpec {
  /** The helper binary (cage/pcr-cage.c). */
  helper: string;
  uid: number;
  gid: number;
  /** An empty directory the helper mounts the new root on. */
  root: string;
  /** Bound read-only at the same path. */
  readOnly: string[];
  /** Bound writable at the same path: the VM's directory. */
  readWrite: string[];
  /** Device nodes bound in (/dev/kvm, /dev/net/tun); /dev/null, zero, full, random and urandom always are. */
  devices: string[];
  /** cgroup directories the VMM joins before anything else. */
  cgroups: string[];
  /** RLIMIT_NOFILE. */
  nofile: number;
  /** TAPs the helper opens (as root) and leaves at these descriptors for the VMM. */
  taps?: { name: string; fd: number }[];
  /** TAPs the helper hands to the VMM's uid and gid, for a VMM that opens its TAP by name. */
  tapOwners?: string[];
}

export interface CageRequest {
  memoryBytes: number;
  vmDir: string;
  /** A directory of the VM's that its VMM must read (the secrets share): handed to its uid. */
  shared?: string;
  /** Store paths the VMM may read (the spec's kernel, initrd and image). */
  storePaths: string[];
}

export interface CagePort {
  /** A uid of its own, its cgroup with limits, and its directories handed over. Undone by release. */
  prepare(id: string, request: CageRequest): Promise<CageSpec>;
  /**
   * Once the VMM has made its files in the VM's directory (console, sockets): they become root's,
   * so that the VMM can no longer replace them with links the worker would follow.
   */
  seal(id: string): Promise<void>;
  /** Once the VM's VMM is gone: its cgroup and root removed, its uid free again. Idempotent. */
  release(id: string): Promise<void>;
  /**
   * After a restart, before any create: the uids of VMs that live on are taken; cgroups and roots
   * of any other VM are removed (what was removed is returned).
   */
  recover(live: { id: string; uid: number }[]): Promise<string[]>;
  /** The cpuThrottle fault on the VM's own cgroup: `percent` of one CPU, or no limit. */
  limitCpu(id: string, percent: number | undefined): Promise<void>;
  /** One line for --check. */
  describe(): Promise<string>;
}
