/**
 * What a remote session sends and what it sends it on: a request (`RemoteOp`), and a link, one
 * or several live connections to one export (pool.ts; a fake in the session's tests).
 */

export type OpKind = 'read' | 'write' | 'zero' | 'trim' | 'flush' | 'cache' | 'status';

export interface RemoteOp {
  kind: OpKind;
  offset: number;
  length: number;
  /** NBD command flags (FUA, NO_HOLE, FAST_ZERO...). */
  flags: number;
  data?: Buffer;
}

/** A set of live connections to one export. */
export interface RemoteLink {
  readonly size: number;
  /** Sends on one of its connections; rejects with `isLoss(err)` true if that connection ended. */
  send(op: RemoteOp): Promise<unknown>;
  /** Resolves once any connection of the set ended. */
  readonly lost: Promise<Error>;
  destroy(reason: string): void;
  close(): Promise<void>;
}
