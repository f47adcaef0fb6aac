// Boot files travel to the VMM as inherited descriptors: the child sees the i-th one as fd 3+i,
// and opens it again through /proc/self/fd, which reaches the very file the store checked.
import type { VmLaunchSpec } from "../ports/index.js";

/** The first descriptor after stdin, stdout and stderr. */
const FIRST_PASSED_FD = 3;

/**
 * The spec as the VMM process must see it (kernel, initrd, image as /proc/self/fd/N) and the
 * descriptors to pass, in order. Without bootFds the spec is returned as it is.
 */
export function handOverBootFiles(spec: VmLaunchSpec): { spec: VmLaunchSpec; fds: number[] } {
  if (!spec.bootFds) return { spec, fds: [] };
  const fds: number[] = [];
  const pass = (fd: number | undefined, path: string | undefined): string | undefined => {
    if (fd === undefined || path === undefined) return path;
    fds.push(fd);
    return `/proc/self/fd/${FIRST_PASSED_FD + fds.length - 1}`;
  };
  const { kernel, initrd, image } = spec.bootFds;
  return {
    spec: { ...spec, kernel: pass(kernel, spec.kernel)!, initrd: pass(initrd, spec.initrd), image: pass(image, spec.image) },
    fds,
  };
}

/** A path the worker itself can read the (passed) kernel through. */
export function workerSidePath(fd: number | undefined, path: string): string {
  return fd === undefined ? path : `/proc/self/fd/${fd}`;
}
