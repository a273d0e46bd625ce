/**
 * Write payloads kept by the replay log without a copy: the buffer pool's hold / release
 * (src/block/buffer-pool.ts), and the session keeping the caller's pooled buffer itself
 * (src/remote/session.ts) until a flush covers it, while other buffers are copied.
 */
import { describe, expect, it } from 'vitest';
import * as pool from '../../src/block/buffer-pool.ts';
import { Backoff } from '../../src/remote/backoff.ts';
import { type RemoteLink, type RemoteOp, RemoteSession } from '../../src/remote/session.ts';

/** A length no other test of this file takes, so the pool's free list for it is ours. */
let nextLength = 64 * 1024;
const fresh = (): Buffer => {
  nextLength += 4096;
  return pool.take(nextLength);
};

describe('buffer pool: hold and release', () => {
  it('a held buffer given back by its owner is not reused until released', () => {
    const b = fresh();
    expect(pool.hold(b)).toBe(true);
    pool.give(b); // the owner is done with it
    expect(pool.take(b.length)).not.toBe(b);
    pool.release(b);
    expect(pool.take(b.length)).toBe(b); // now free
  });

  it('released before its owner gives it back: reused only after that', () => {
    const b = fresh();
    expect(pool.hold(b)).toBe(true);
    pool.release(b);
    expect(pool.take(b.length)).not.toBe(b);
    pool.give(b);
    expect(pool.take(b.length)).toBe(b);
  });

  it('given back twice while held: still not reused before the release', () => {
    const b = fresh();
    pool.hold(b);
    pool.give(b);
    pool.give(b);
    expect(pool.take(b.length)).not.toBe(b);
    pool.release(b);
    expect(pool.take(b.length)).toBe(b);
  });

  it('holds only whole pooled buffers, once: a slice, a small or foreign buffer, or a second hold is refused', () => {
    const b = fresh();
    expect(pool.hold(b.subarray(0, 4096))).toBe(false);
    expect(pool.hold(Buffer.alloc(b.length))).toBe(false);
    expect(pool.hold(pool.take(512))).toBe(false); // below the pooled size
    expect(pool.hold(b)).toBe(true);
    expect(pool.hold(b)).toBe(false);
    pool.release(b);
    pool.give(b);
    expect(pool.hold(b)).toBe(false); // idle in the pool
  });
});

/** A remote that answers every request at once and records what it was sent. */
class RecordingLink implements RemoteLink {
  readonly size = 1 << 24;
  readonly lost = new Promise<Error>(() => undefined);
  sent: RemoteOp[] = [];
  send(op: RemoteOp): Promise<unknown> {
    this.sent.push(op);
    return new Promise((resolve) => setImmediate(() => resolve(undefined)));
  }
  destroy(): void {}
  async close(): Promise<void> {}
}

function session(link: RecordingLink): RemoteSession {
  return new RemoteSession(link, {
    connect: async () => link,
    isLoss: () => false,
    timeoutMs: 5000,
    replayBudget: 1 << 22,
    backoff: new Backoff({ initialMs: 5, maxMs: 20, jitter: 0 }),
    name: 'recording',
  });
}

describe('RemoteSession: the replay log keeps pooled payloads without a copy', () => {
  it('sends and keeps the caller’s pooled buffer, and frees it once a flush covered it', async () => {
    const link = new RecordingLink();
    const s = session(link);
    const b = fresh();
    b.fill(7);
    await s.submit({ kind: 'write', offset: 0, length: b.length, flags: 0, data: b });
    expect(link.sent[0]?.data).toBe(b); // not a copy
    pool.give(b); // the server gives the payload back once answered
    expect(s.logBytes).toBe(b.length);
    expect(pool.take(b.length)).not.toBe(b); // still the log's
    await s.submit({ kind: 'flush', offset: 0, length: 0, flags: 0 });
    expect(s.logBytes).toBe(0);
    expect(pool.take(b.length)).toBe(b); // released by the flush
    await s.close();
  });

  it('copies what it cannot hold (a slice), and the copy carries the bytes', async () => {
    const link = new RecordingLink();
    const s = session(link);
    const b = fresh();
    b.fill(9);
    const slice = b.subarray(0, 8192);
    await s.submit({ kind: 'write', offset: 0, length: slice.length, flags: 0, data: slice });
    const sent = link.sent[0]?.data as Buffer;
    expect(sent).not.toBe(slice);
    b.fill(1); // the caller reuses its buffer once answered: the log's copy keeps the old bytes
    expect(sent[0]).toBe(9);
    await s.close();
  });

  it('at close, nothing goes back to the pool before the link is closed (it may still be sending)', async () => {
    const link = new RecordingLink();
    let closed: () => void = () => undefined;
    link.close = () =>
      new Promise<void>((r) => {
        closed = r;
      });
    const s = session(link);
    const b = fresh();
    const w = s.submit({ kind: 'write', offset: 0, length: b.length, flags: 0, data: b });
    pool.give(b);
    const closing = s.close();
    await expect(w).rejects.toMatchObject({ code: 'ESHUTDOWN' });
    expect(pool.take(b.length)).not.toBe(b); // the link has not closed yet
    closed();
    await closing;
    expect(pool.take(b.length)).toBe(b);
  });

  it('a closed session releases what it held', async () => {
    const link = new RecordingLink();
    const s = session(link);
    const b = fresh();
    await s.submit({ kind: 'write', offset: 0, length: b.length, flags: 0, data: b });
    pool.give(b);
    await s.close();
    expect(pool.take(b.length)).toBe(b);
  });
});
