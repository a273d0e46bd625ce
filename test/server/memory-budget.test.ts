/**
 * The memory budget's rules, without a server: small requests fill the budget, big ones (over a
 * quarter) stop at three quarters, a request larger than the budget is granted when nothing is
 * reserved, and waiters are woken in order as bytes come back, a big one not blocking small ones.
 */
import { describe, expect, it } from 'vitest';
import { Command, ServerParser, serialize } from '../../src/nbd-protocol/index.ts';
import { MemoryBudget } from '../../src/server/memory-budget.ts';

const MiB = 1024 * 1024;

describe('MemoryBudget', () => {
  it('grants small requests up to the limit, then refuses', () => {
    const b = new MemoryBudget(64 * MiB);
    for (let i = 0; i < 8; i++) expect(b.tryTake(8 * MiB)).toBe(true);
    expect(b.used).toBe(64 * MiB);
    expect(b.tryTake(1)).toBe(false);
    b.give(8 * MiB);
    expect(b.tryTake(8 * MiB)).toBe(true);
  });

  it('keeps a quarter for small requests whatever big ones hold', () => {
    const b = new MemoryBudget(64 * MiB);
    expect(b.tryTake(32 * MiB)).toBe(true); // a stalled 32 MiB WRITE
    expect(b.tryTake(32 * MiB)).toBe(false); // a second one would pass three quarters
    expect(b.tryTake(17 * MiB)).toBe(false);
    expect(b.tryTake(16 * MiB)).toBe(true); // small: up to the limit
    expect(b.tryTake(16 * MiB)).toBe(true);
    expect(b.used).toBe(64 * MiB);
  });

  it('grants a request larger than the budget only when nothing is reserved', () => {
    const b = new MemoryBudget(16 * MiB);
    expect(b.tryTake(MiB)).toBe(true);
    expect(b.tryTake(32 * MiB)).toBe(false);
    b.give(MiB);
    expect(b.tryTake(32 * MiB)).toBe(true);
    expect(b.tryTake(1)).toBe(false);
    b.give(32 * MiB);
    expect(b.used).toBe(0);
    expect(b.peak).toBe(32 * MiB);
  });

  it('wakes waiters in order, and a big waiter does not block small ones', () => {
    const b = new MemoryBudget(64 * MiB);
    expect(b.tryTake(40 * MiB)).toBe(true);
    expect(b.tryTake(16 * MiB)).toBe(true);
    expect(b.tryTake(8 * MiB)).toBe(true);
    const woken: string[] = [];
    const waiter = (name: string, n: number) => () => {
      if (!b.tryTake(n)) return false;
      woken.push(name);
      return true;
    };
    b.wait(waiter('big', 32 * MiB));
    b.wait(waiter('small1', 8 * MiB));
    b.wait(waiter('small2', 8 * MiB));
    expect(b.waiting).toBe(3);
    b.give(16 * MiB); // 48 used: the big one would pass three quarters, the small ones fit
    expect(woken).toEqual(['small1', 'small2']);
    expect(b.waiting).toBe(1);
    b.give(40 * MiB); // 24 used: 24 + 32 is still over 48
    expect(woken).toEqual(['small1', 'small2']);
    b.give(8 * MiB); // 16 + 32 = 48
    expect(woken).toEqual(['small1', 'small2', 'big']);
    expect(b.waiting).toBe(0);
  });

  it('forgets a cancelled waiter', () => {
    const b = new MemoryBudget(MiB * 4);
    expect(b.tryTake(4 * MiB)).toBe(true);
    let called = 0;
    const w = () => {
      called += 1;
      return true;
    };
    b.wait(w);
    b.cancel(w);
    b.give(4 * MiB);
    expect(called).toBe(0);
  });
});

describe('ServerParser.awaiting', () => {
  it('is the payload length of a WRITE whose payload is still arriving, else 0', () => {
    const p = new ServerParser({ phase: 'transmission' });
    const header = serialize.request(0, Command.WRITE, 1n, 0, MiB);
    p.push(header.subarray(0, 10));
    expect(p.next()).toBeUndefined();
    expect(p.awaiting).toBe(0); // the header is not complete yet
    p.push(header.subarray(10));
    p.push(Buffer.alloc(4096));
    expect(p.next()).toBeUndefined();
    expect(p.awaiting).toBe(MiB);
    p.push(Buffer.alloc(MiB - 4096));
    const req = p.next();
    expect(req).toMatchObject({ kind: 'request', type: Command.WRITE, length: MiB });
    expect(p.awaiting).toBe(0);
  });

  it('is 0 for a WRITE over the maximum payload (skipped, never held)', () => {
    const p = new ServerParser({ phase: 'transmission', maxPayload: MiB });
    p.push(serialize.request(0, Command.WRITE, 1n, 0, 2 * MiB));
    p.push(Buffer.alloc(4096));
    expect(p.next()).toBeUndefined();
    expect(p.awaiting).toBe(0);
  });
});
