/**
 * The deadline check of a remote session (src/remote/deadlines.ts), without a server or timers:
 * late requests fail wherever they wait, exactly once, and only one late on the wire says the
 * remote hangs.
 */
import { describe, expect, it } from 'vitest';
import { expireLate, type Waiting } from '../../src/remote/deadlines.ts';
import { ReplayLog } from '../../src/remote/replay-log.ts';

interface R {
  id: string;
  deadline: number;
  settled: boolean;
}

const req = (id: string, deadline: number): R => ({ id, deadline, settled: false });

function rig() {
  const w: Waiting<R> = { queue: [], blocked: [], inflight: new Set(), log: new ReplayLog<R>() };
  const failed: string[] = [];
  const fail = (r: R) => {
    expect(r.settled, `${r.id} failed twice`).toBe(false);
    r.settled = true;
    failed.push(r.id);
  };
  return { w, failed, fail };
}

describe('expireLate', () => {
  it('fails the late requests wherever they wait, and keeps the others', () => {
    const { w, failed, fail } = rig();
    w.queue.push(req('q-late', 100), req('q-ok', 200));
    w.blocked.push(req('b-late', 50), req('b-ok', 101));
    const pendingLate = w.log.add(1, 0, 4096, 4096, req('log-pending-late', 90));
    w.log.add(2, 4096, 4096, 4096, req('log-ok', 300));
    expect(pendingLate.state).toBe('pending');
    expect(expireLate(w, 100, fail)).toBe(false); // nothing late was on the wire
    expect(failed.sort()).toEqual(['b-late', 'log-pending-late', 'q-late']);
    expect(w.queue.map((r) => r.id)).toEqual(['q-ok']);
    expect(w.blocked.map((r) => r.id)).toEqual(['b-ok']);
    expect([...w.log.values()].map((e) => e.item.id)).toEqual(['log-ok']);
    expect(w.log.bytes).toBe(4096);
    expect(expireLate(w, 100, fail)).toBe(false); // a second pass fails nothing again
    expect(failed).toHaveLength(3);
  });

  it('says the remote hangs when a late request was in flight or a late log entry was sent', () => {
    const a = rig();
    a.w.inflight.add(req('read', 10));
    expect(expireLate(a.w, 10, a.fail)).toBe(true);
    expect(a.w.inflight.size).toBe(0);

    const b = rig();
    b.w.log.add(1, 0, 512, 512, req('write', 10)).state = 'sent';
    expect(expireLate(b.w, 9, b.fail)).toBe(false); // not yet late
    expect(expireLate(b.w, 10, b.fail)).toBe(true);
    expect(b.failed).toEqual(['write']);

    const c = rig();
    c.w.log.add(1, 0, 512, 512, req('acked', 10)).state = 'acked'; // answered, waiting for a flush
    expect(expireLate(c.w, 10, c.fail)).toBe(false);
    expect(c.failed).toEqual(['acked']);
  });
});
