// The store port: store paths present locally, boot files opened after checking (worker/store/).

export interface StorePort {
  /** Makes sure each path is in the local store: a cheap local check, then `nix copy --from` for what is missing. */
  ensurePaths(paths: string[]): Promise<{ fetched: string[]; bytes: number; seconds: number }>;
  /**
   * Opens a file the VMM will read (kernel, initrd, image) after checking it: through any symlinks
   * it must reach a regular file inside the store and inside the closure of its top-level path;
   * the last open follows no link. INVALID_ARGUMENT (naming `field`) otherwise.
   */
  openBootFile(field: string, path: string): Promise<BootFile>;
}

/** A checked boot file, held open until the VMM has its own descriptor. */
export interface BootFile {
  fd: number;
  /** The file itself, every symlink resolved. */
  realPath: string;
  /** Idempotent. */
  close(): Promise<void>;
}
