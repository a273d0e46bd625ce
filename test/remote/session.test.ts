/**
 * The reconnect / replay state machine (src/remote/session.ts) against a fake remote with a
 * volatile write cache: writes land in the cache, FLUSH makes them durable, a crash loses the
 * cache and every connection. What must hold: every request settles once; an acknowledged write
 * is durable after the next successful flush, crash or not; a request past its deadline fails
 * with EIO; nothing is sent again after it failed.
 */
import { describe, expect, it } from 'vitest';
import { Backoff } from '../../src/remote/backoff.ts';
import { ReplayLog } from '../../src/remote/replay-log.ts';
import { type RemoteLink, type RemoteOp, RemoteSession } from '../../src/remote/session.ts';

class Loss extends Error {}

/** A remote disk: `durable` survives a crash, `cache` (pending writes, in order) does not. */
class FakeRemote {
  durable: Buffer;
  cache: { offset: number; data: Buffer }[] = [];
  links = new Set<FakeLink>();
  up = true;
  size: number;
  /** Errors to answer for writes at these offsets (an error reply, not a loss). */
  refuseWritesAt = new Set<number>();
  /** Hold answers (a hung remote). */
  hung = false;
  sent: RemoteOp[] = [];

  constructor(size: number) {
    this.size = size;
    this.durable = Buffer.alloc(size);
  }
  view(): Buffer {
    const b = Buffer.from(this.durable);
    for (const w of this.cache) w.data.copy(b, w.offset);
    return b;
  }
  crash(): void {
    this.cache = [];
    for (const l of [...this.links]) l.kill();
  }
  async connect(): Promise<RemoteLink> {
    await Promise.resolve();
    if (!this.up) throw new Error('connection refused');
    const l = new FakeLink(this);
    this.links.add(l);
    return l;
  }
}

class FakeLink implements RemoteLink {
  readonly lost: Promise<Error>;
  private onLost: (e: Error) => void = () => undefined;
  private pending = new Set<(e: Error) => void>();
  private dead = false;
  private readonly remote: FakeRemote;
  constructor(remote: FakeRemote) {
    this.remote = remote;
    this.lost = new Promise((r) => {
      this.onLost = r;
    });
  }
  get size(): number {
    return this.remote.size;
  }
  kill(): void {
    if (this.dead) return;
    this.dead = true;
    this.remote.links.delete(this);
    const e = new Loss('connection lost');
    for (const p of this.pending) p(e);
    this.pending.clear();
    this.onLost(e);
  }
  send(op: RemoteOp): Promise<unknown> {
    if (this.dead) return Promise.reject(new Loss('dead'));
    this.remote.sent.push(op);
    return new Promise((resolve, reject) => {
      this.pending.add(reject);
      const answer = () => {
        if (this.dead || this.remote.hung) return;
        this.pending.delete(reject);
        const r = this.remote;
        switch (op.kind) {
          case 'write':
            if (r.refuseWritesAt.has(op.offset)) return reject(Object.assign(new Error('EIO'), { code: 'EIO' }));
            r.cache.push({ offset: op.offset, data: Buffer.from(op.data as Buffer) });
            return resolve(undefined);
          case 'flush':
            r.durable = r.view();
            r.cache = [];
            return resolve(undefined);
          case 'read':
            return resolve(r.view().subarray(op.offset, op.offset + op.length));
          default:
            return resolve(undefined);
        }
      };
      setImmediate(answer);
    });
  }
  destroy(): void {
    this.kill();
  }
  async close(): Promise<void> {
    this.kill();
  }
}

function session(remote: FakeRemote, link: RemoteLink, opts: { timeoutMs?: number; replayBudget?: number } = {}) {
  const events: string[] = [];
  const s = new RemoteSession(link, {
    connect: () => remote.connect(),
    isLoss: (e) => e instanceof Loss,
    timeoutMs: opts.timeoutMs ?? 5000,
    replayBudget: opts.replayBudget ?? 1 << 20,
    backoff: new Backoff({ initialMs: 5, maxMs: 20, jitter: 0 }),
    name: 'fake',
    onEvent: (e, d) => events.push(`${e}: ${d}`),
  });
  return { s, events };
}

const write = (s: RemoteSession, offset: number, byte: number, length = 512) =>
  s.submit({ kind: 'write', offset, length, flags: 0, data: Buffer.alloc(length, byte) });
const flush = (s: RemoteSession) => s.submit({ kind: 'flush', offset: 0, length: 0, flags: 0 });
const read = (s: RemoteSession, offset: number, length: number) =>
  s.submit({ kind: 'read', offset, length, flags: 0 }) as Promise<Buffer>;
const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
const outcome = (p: Promise<unknown>) =>
  p.then(
    () => 'ok',
    (e: { code?: string }) => e.code ?? 'error',
  );

describe('RemoteSession', () => {
  it('acknowledged writes lost with the remote cache are sent again before the next flush', async () => {
    const remote = new FakeRemote(8192);
    const { s } = session(remote, await remote.connect());
    await write(s, 0, 0xaa);
    await write(s, 1024, 0xbb);
    expect(s.logBytes).toBe(1024); // kept until a flush covers them
    remote.crash(); // the cache is gone: the remote now reads zeros there
    expect(remote.view()[0]).toBe(0);
    await flush(s);
    expect(remote.durable[0]).toBe(0xaa);
    expect(remote.durable[1024]).toBe(0xbb);
    expect(s.logBytes).toBe(0);
    await s.close();
  });

  it('a flush covers nothing it did not see: writes after it stay logged', async () => {
    const remote = new FakeRemote(8192);
    const { s } = session(remote, await remote.connect());
    await write(s, 0, 1);
    await flush(s);
    expect(s.logBytes).toBe(0);
    await write(s, 512, 2);
    expect(s.logBytes).toBe(512);
    await s.close();
  });

  it('a flush in flight at a loss is sent again after the replay, and covers the replayed writes', async () => {
    const remote = new FakeRemote(8192);
    const { s } = session(remote, await remote.connect());
    await write(s, 0, 0x11);
    const f = flush(s);
    remote.crash(); // the flush is not answered; the write's cache is gone
    await f;
    expect(remote.durable[0]).toBe(0x11);
    const kinds = remote.sent.map((o) => o.kind);
    expect(kinds).toEqual(['write', 'flush', 'write', 'flush']);
    await s.close();
  });

  it('replays overlapping writes in order: the later one wins', async () => {
    const remote = new FakeRemote(8192);
    const { s } = session(remote, await remote.connect());
    await write(s, 0, 1, 1024);
    await write(s, 512, 2, 1024);
    await write(s, 0, 3, 512);
    remote.crash();
    await flush(s);
    const d = remote.durable;
    expect([d[0], d[511], d[512], d[1535], d[1536]]).toEqual([3, 3, 2, 2, 0]);
    await s.close();
  });

  it('requests in flight at a loss are answered after the reconnect', async () => {
    const remote = new FakeRemote(8192);
    const { s, events } = session(remote, await remote.connect());
    await write(s, 0, 7);
    const r = read(s, 0, 512);
    const w = write(s, 512, 8);
    remote.crash(); // before any answer
    expect((await r)[0]).toBe(7); // the logged write was sent again before the read
    await w;
    expect(remote.view()[512]).toBe(8);
    expect(events.some((e) => e.startsWith('lost'))).toBe(true);
    expect(events.some((e) => e.startsWith('reconnected'))).toBe(true);
    await s.close();
  });

  it('a remote that stays away fails every request with EIO at its deadline, then works again', async () => {
    const remote = new FakeRemote(8192);
    const { s } = session(remote, await remote.connect(), { timeoutMs: 60 });
    remote.up = false;
    remote.crash();
    const results = await Promise.all([outcome(read(s, 0, 512)), outcome(write(s, 0, 9)), outcome(flush(s))]);
    expect(results).toEqual(['EIO', 'EIO', 'EIO']);
    expect(s.outstanding).toBe(0);
    remote.up = true;
    await tick(40); // back-off at most 20 ms
    await write(s, 0, 5);
    await flush(s);
    expect(remote.durable[0]).toBe(5);
    // The write that failed with EIO was never sent again.
    expect(remote.sent.filter((o) => o.kind === 'write' && (o.data as Buffer)[0] === 9)).toHaveLength(0);
    await s.close();
  });

  it('a hung remote: the request fails at its deadline and the connection is made again', async () => {
    const remote = new FakeRemote(8192);
    const { s } = session(remote, await remote.connect(), { timeoutMs: 60 });
    remote.hung = true;
    expect(await outcome(read(s, 0, 512))).toBe('EIO');
    remote.hung = false;
    await tick(40);
    expect((await read(s, 0, 512)).length).toBe(512);
    await s.close();
  });

  it('an acknowledged write refused when sent again fails the next flush, once', async () => {
    const remote = new FakeRemote(8192);
    const { s } = session(remote, await remote.connect());
    await write(s, 1024, 4);
    remote.refuseWritesAt.add(1024);
    remote.crash();
    expect(await outcome(flush(s))).toBe('EIO');
    expect(await outcome(flush(s))).toBe('ok');
    await s.close();
  });

  it('an error reply fails its request and is not sent again', async () => {
    const remote = new FakeRemote(8192);
    const { s } = session(remote, await remote.connect());
    remote.refuseWritesAt.add(0);
    expect(await outcome(write(s, 0, 1))).toBe('EIO');
    expect(s.logBytes).toBe(0);
    await s.close();
  });

  it('keeps the log within its budget by flushing by itself', async () => {
    const remote = new FakeRemote(1 << 20);
    const { s } = session(remote, await remote.connect(), { replayBudget: 4096 });
    let peak = 0;
    const writes = [];
    for (let i = 0; i < 64; i++) {
      writes.push(write(s, i * 1024, i + 1, 1024));
      peak = Math.max(peak, s.logBytes);
    }
    await Promise.all(writes);
    expect(peak).toBeLessThanOrEqual(4096);
    expect(remote.sent.filter((o) => o.kind === 'flush').length).toBeGreaterThan(0);
    remote.crash();
    await flush(s);
    for (let i = 0; i < 64; i++) expect(remote.durable[i * 1024]).toBe(i + 1);
    await s.close();
  });

  it('flushes by itself from half its budget on, while writes go on', async () => {
    const remote = new FakeRemote(1 << 20);
    const { s } = session(remote, await remote.connect(), { replayBudget: 4096 });
    await write(s, 0, 1, 1024);
    expect(remote.sent.some((o) => o.kind === 'flush')).toBe(false); // under half: no flush
    await write(s, 1024, 2, 1024); // half: a flush starts, and covers both
    const third = write(s, 2048, 3, 1024); // not held back by that flush
    expect(remote.sent.map((o) => o.kind)).toEqual(['write', 'write', 'flush', 'write']);
    await third;
    await tick(5);
    expect(remote.durable[0]).toBe(1);
    expect(remote.durable[1024]).toBe(2);
    expect(s.logBytes).toBe(1024); // the third, acknowledged after the flush was sent, stays logged
    await s.close();
  });

  it('a remote that comes back with another size fails everything', async () => {
    const remote = new FakeRemote(8192);
    const { s } = session(remote, await remote.connect());
    remote.size = 4096;
    remote.crash();
    expect(await outcome(read(s, 0, 512))).toBe('EIO');
    expect(s.state).toBe('failed');
    expect(await outcome(write(s, 0, 1))).toBe('EIO');
    await s.close();
  });

  it('close fails what is waiting with ESHUTDOWN', async () => {
    const remote = new FakeRemote(8192);
    const { s } = session(remote, await remote.connect());
    remote.up = false;
    remote.crash();
    const r = outcome(read(s, 0, 512));
    await s.close();
    expect(await r).toBe('ESHUTDOWN');
    expect(await outcome(read(s, 0, 512))).toBe('ESHUTDOWN');
  });
});

describe('Backoff', () => {
  it('tries at once, then doubles up to the cap, and starts over after a success', () => {
    const b = new Backoff({ initialMs: 50, maxMs: 400, jitter: 0.5 }, () => 0);
    expect([b.next(), b.next(), b.next(), b.next(), b.next(), b.next()]).toEqual([0, 50, 100, 200, 400, 400]);
    b.reset();
    expect(b.next()).toBe(0);
    const j = new Backoff({ initialMs: 100, maxMs: 1000, jitter: 0.5 }, () => 1);
    j.next();
    expect(j.next()).toBe(50);
  });
});

describe('ReplayLog', () => {
  it('batches pending entries in order, stopping at an overlap', () => {
    const log = new ReplayLog<string>();
    log.add(1, 0, 10, 10, 'a');
    log.add(2, 20, 10, 10, 'b');
    log.add(3, 5, 10, 10, 'c'); // overlaps a
    log.add(4, 40, 10, 10, 'd');
    expect(log.nextBatch().map((e) => e.item)).toEqual(['a', 'b']);
    log.setState(1, 'sent');
    log.setState(2, 'acked');
    expect(log.nextBatch()).toEqual([]); // c waits for a, in flight
    log.setState(1, 'acked');
    expect(log.nextBatch().map((e) => e.item)).toEqual(['c', 'd']);
  });

  it('a flush removes only what was acknowledged when it was sent', () => {
    const log = new ReplayLog<string>();
    log.add(1, 0, 10, 10, 'a');
    log.add(2, 20, 10, 10, 'b');
    log.setState(1, 'acked');
    const covers = log.covered();
    log.setState(2, 'acked');
    log.flushed(covers);
    expect([...log.values()].map((e) => e.item)).toEqual(['b']);
    expect(log.bytes).toBe(10);
    log.lost();
    log.flushed(log.covered()); // nothing acked on the new connection yet
    expect(log.size).toBe(1);
  });
});
