// Resource limits for one RPC connection; every one is checked before memory is committed.
export interface RpcLimits {
  /** Largest framed message accepted, header included. */
  maxMessageBytes: number;
  /** Most segments one message may declare. */
  maxSegments: number;
  /** Words a reader may visit in one message (pointer amplification guard), as in C++ capnp. */
  traversalLimitWords: number;
  /** Deepest struct/list nesting a reader follows. */
  nestingLimit: number;
  /** Calls a peer may have running on us at once; beyond it calls get an `overloaded` exception. */
  maxOutstandingCalls: number;
  /** Answers returned but never finished by the peer; beyond it the peer is misbehaving and is dropped. */
  maxUnfinishedAnswers: number;
  /** Bytes queued for a slow reader before we stop reading its requests. */
  maxWriteBufferBytes: number;
  /**
   * Longest a call may run on us before it is answered `DEADLINE_EXCEEDED`; 0 means no deadline.
   * The work itself is not cancelled: its late result is dropped.
   */
  callDeadlineMs: number;
  /** A message whose first bytes arrived must be whole within this (slow-sender guard); 0 means no limit. */
  frameTimeoutMs: number;
}

/**
 * The largest legitimate message is a createVm with its secrets (at most 4 MiB of values, see
 * core/secrets.ts) or a listVms answer; twice that is the default, not the 64 MiB a peer could
 * otherwise make us hold per connection.
 */
export const DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024;

export const DEFAULT_LIMITS: RpcLimits = {
  maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
  maxSegments: 512,
  traversalLimitWords: 8 * 1024 * 1024,
  nestingLimit: 64,
  maxOutstandingCalls: 256,
  maxUnfinishedAnswers: 16_384,
  maxWriteBufferBytes: 64 * 1024 * 1024,
  callDeadlineMs: 0,
  frameTimeoutMs: 30_000,
};

/**
 * Bytes of incomplete messages held across all connections of one server: one slow peer, or
 * many, cannot make the process hold more than this however many connections they open.
 */
export class ByteBudget {
  private used = 0;
  private highWater = 0;

  constructor(readonly maxBytes: number) {}

  get usedBytes(): number {
    return this.used;
  }

  /** The most held at once since the last reset. */
  get highWaterBytes(): number {
    return this.highWater;
  }

  resetHighWater(): void {
    this.highWater = this.used;
  }

  /** Takes `bytes` if they fit; false (nothing taken) otherwise. */
  take(bytes: number): boolean {
    if (this.used + bytes > this.maxBytes) return false;
    this.used += bytes;
    this.highWater = Math.max(this.highWater, this.used);
    return true;
  }

  give(bytes: number): void {
    this.used = Math.max(0, this.used - bytes);
  }
}

export function withDefaults(limits: Partial<RpcLimits> | undefined): RpcLimits {
  return { ...DEFAULT_LIMITS, ...limits };
}
