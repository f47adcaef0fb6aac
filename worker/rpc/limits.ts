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
}

export const DEFAULT_LIMITS: RpcLimits = {
  maxMessageBytes: 64 * 1024 * 1024,
  maxSegments: 512,
  traversalLimitWords: 8 * 1024 * 1024,
  nestingLimit: 64,
  maxOutstandingCalls: 256,
  maxUnfinishedAnswers: 16_384,
  maxWriteBufferBytes: 64 * 1024 * 1024,
  callDeadlineMs: 0,
};

export function withDefaults(limits: Partial<RpcLimits> | undefined): RpcLimits {
  return { ...DEFAULT_LIMITS, ...limits };
}
