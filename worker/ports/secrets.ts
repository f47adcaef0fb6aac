// The secrets port: per-VM secrets on tmpfs, never anywhere else (worker/secrets/).

export interface SecretsPort {
  /** Writes the secrets to a fresh tmpfs directory (0700, files 0400); returns it. */
  write(vmId: string, secrets: { name: string; value: Uint8Array }[]): Promise<string>;
  /** Wipes and removes the directory. Idempotent. */
  wipe(vmId: string): Promise<void>;
  /** Removes directories of VMs not in `known`. */
  removeOrphans(known: Set<string>): Promise<string[]>;
}
