/**
 * Framing replies without a chunk per read (src/client/reply-reader.ts) with the client's matching
 * of replies to requests (pending-replies.ts), without a server: a stream of pipelined replies
 * (simple, structured data, holes, block status, errors, payloads larger than the scratch) is fed
 * in reads of every size, cut at every offset, through `next()`/`filled()` as a socket with
 * `onread` does and through `push()` as 'data' events do; every request must settle with exactly
 * its bytes, and a READ answered by one chunk must land in the buffer given by `allocate`.
 */
import { describe, expect, it } from 'vitest';
import { type Pending, PendingReplies } from '../../src/client/pending-replies.ts';
import { ReplyReader } from '../../src/client/reply-reader.ts';
import { Command, NbdError, serialize } from '../../src/nbd-protocol/index.ts';

function bytes(seed: number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
}

interface Expect {
  cookie: bigint;
  type: number;
  offset: number;
  length: number;
  /** What the request must resolve with, or the error code it must reject with. */
  value?: unknown;
  error?: string;
}

/** A stream of replies and what each request must settle with. */
function script(big: number): { wire: Buffer; expects: Expect[] } {
  const parts: Buffer[] = [];
  const expects: Expect[] = [];
  // a write, answered with a simple reply
  parts.push(serialize.simpleReply(0, 1n));
  expects.push({ cookie: 1n, type: Command.WRITE, offset: 0, length: 4096, value: undefined });
  // a small read in one data chunk
  const small = bytes(2, 300);
  parts.push(serialize.offsetDataHeader(2n, true, 1000, small.length), small);
  expects.push({ cookie: 2n, type: Command.READ, offset: 1000, length: 300, value: small });
  // a read larger than the scratch: data, a hole, data, then the final NONE chunk
  const a = bytes(3, big);
  const c = bytes(4, 100);
  parts.push(serialize.offsetDataHeader(3n, false, 0, a.length), a);
  parts.push(serialize.offsetHoleChunk(3n, false, big, 50));
  parts.push(serialize.offsetDataHeader(3n, false, big + 50, c.length), c);
  parts.push(serialize.noneChunk(3n));
  expects.push({
    cookie: 3n,
    type: Command.READ,
    offset: 0,
    length: big + 150,
    value: Buffer.concat([a, Buffer.alloc(50), c]),
  });
  // a read answered in two data chunks, the second first
  const d = bytes(5, 40);
  const e = bytes(6, 24);
  parts.push(serialize.offsetDataHeader(4n, false, 4096 + 40, e.length), e);
  parts.push(serialize.offsetDataHeader(4n, true, 4096, d.length), d);
  expects.push({ cookie: 4n, type: Command.READ, offset: 4096, length: 64, value: Buffer.concat([d, e]) });
  // block status, larger than the scratch (gathered), then an error reply to a read
  const extents = Array.from({ length: Math.ceil(big / 8) }, (_, i) => ({ length: 512 * (i + 1), flags: i & 3 }));
  parts.push(serialize.blockStatusChunk(5n, true, 7, extents));
  expects.push({ cookie: 5n, type: Command.BLOCK_STATUS, offset: 0, length: 1, value: new Map([[7, extents]]) });
  parts.push(serialize.errorChunk(6n, true, NbdError.EPERM, 'not here'));
  expects.push({ cookie: 6n, type: Command.READ, offset: 0, length: 512, error: 'EPERM' });
  // simple replies to reads (a server without structured replies): with data, and an error
  const f = bytes(7, big + 3);
  parts.push(serialize.simpleReply(0, 7n), f);
  expects.push({ cookie: 7n, type: Command.READ, offset: 0, length: f.length, value: f });
  parts.push(serialize.simpleReply(NbdError.ENOSPC, 8n));
  expects.push({ cookie: 8n, type: Command.READ, offset: 0, length: 512, error: 'ENOSPC' });
  return { wire: Buffer.concat(parts), expects };
}

type Outcome = { value?: unknown; error?: string };

function rig(expects: Expect[], scratchSize: number) {
  const allocated = new Map<number, Buffer>();
  const replies = new PendingReplies((n) => {
    const b = Buffer.alloc(n, 0xee); // old bytes, as a pooled buffer holds
    allocated.set(n, b);
    return b;
  });
  const outcomes = new Map<bigint, Outcome>();
  for (const x of expects) {
    const p: Pending = {
      type: x.type,
      offset: x.offset,
      length: x.length,
      resolve: (value) => outcomes.set(x.cookie, { value }),
      reject: (err) => outcomes.set(x.cookie, { error: (err as { code: string }).code }),
    };
    if (x.type === Command.BLOCK_STATUS) p.extents = new Map();
    replies.add(x.cookie, p);
  }
  return { reader: new ReplyReader(replies, { scratchSize }), outcomes, allocated, replies };
}

/** Equality, cheap enough for thousands of rounds (vitest's deep equality is not, on buffers). */
function same(a: unknown, b: unknown): boolean {
  if (Buffer.isBuffer(a) && Buffer.isBuffer(b)) return a.equals(b);
  if (a instanceof Map && b instanceof Map) return JSON.stringify([...a]) === JSON.stringify([...b]);
  return a === b;
}

function check(expects: Expect[], r: ReturnType<typeof rig>, label: string): void {
  for (const x of expects) {
    const got = r.outcomes.get(x.cookie);
    expect(got, `${label}: cookie ${x.cookie} settled`).toBeDefined();
    if (x.error !== undefined) expect(got?.error, `${label}: cookie ${x.cookie}`).toBe(x.error);
    else expect(same(got?.value, x.value), `${label}: cookie ${x.cookie}`).toBe(true);
  }
  expect(r.replies.size, label).toBe(0);
}

/** Feed `wire` as a socket with onread would: reads of at most `step` bytes into `next()`. */
function readInSteps(reader: ReplyReader, wire: Buffer, step: (i: number) => number): void {
  let i = 0;
  for (let at = 0; at < wire.length; i++) {
    const into = reader.next();
    const n = wire.copy(into, 0, at, Math.min(wire.length, at + Math.max(1, Math.min(into.length, step(i)))));
    at += n;
    reader.filled(into, n);
  }
}

describe('ReplyReader with PendingReplies', () => {
  const scratchSize = 256;
  const { wire, expects } = script(700);

  it('settles every request exactly, in reads of every size (onread)', () => {
    for (const size of [1, 3, 7, 16, 20, 27, 28, 29, 64, 255, 256, 1000, wire.length]) {
      const r = rig(expects, scratchSize);
      readInSteps(r.reader, wire, () => size);
      check(expects, r, `reads of ${size}`);
    }
    let seed = 12345;
    const random = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return 1 + (seed % 300);
    };
    for (let round = 0; round < 50; round++) {
      const r = rig(expects, scratchSize);
      readInSteps(r.reader, wire, random);
      check(expects, r, `random reads, round ${round}`);
    }
  });

  it('settles every request exactly when the stream is cut at any offset (data events)', () => {
    for (let cut = 0; cut <= wire.length; cut++) {
      const r = rig(expects, scratchSize);
      r.reader.push(wire.subarray(0, cut));
      r.reader.push(wire.subarray(cut));
      check(expects, r, `cut at ${cut}`);
    }
  });

  it('reads a large single-chunk payload straight into the buffer from allocate', () => {
    const data = bytes(9, 10_000);
    const wire1 = Buffer.concat([serialize.offsetDataHeader(1n, true, 0, data.length), data]);
    const x: Expect = { cookie: 1n, type: Command.READ, offset: 0, length: data.length, value: data };
    const r = rig([x], 64 * 1024);
    const into = r.reader.next();
    const first = wire1.copy(into, 0, 0, 100); // the header and the first bytes land in the scratch
    r.reader.filled(into, first);
    const rest = r.reader.next();
    expect(rest.buffer).toBe(r.allocated.get(data.length)?.buffer); // the rest: the reply's own buffer
    expect(rest.length).toBe(wire1.length - 100);
    wire1.copy(rest, 0, 100);
    r.reader.filled(rest, rest.length);
    expect(r.outcomes.get(1n)?.value).toBe(r.allocated.get(data.length)); // no copy out of it
    check([x], r, 'direct');
  });

  it('breaks on a reply that does not fit the protocol', () => {
    const cases: [string, Buffer][] = [
      ['bad magic', Buffer.alloc(32, 0x11)],
      ['unknown cookie', serialize.simpleReply(0, 99n)],
      ['data outside the request', Buffer.concat([serialize.offsetDataHeader(1n, true, 4000, 200), bytes(1, 200)])],
      ['hole outside the request', serialize.offsetHoleChunk(1n, true, 0, 5000)],
    ];
    for (const [label, bad] of cases) {
      const r = rig([{ cookie: 1n, type: Command.READ, offset: 0, length: 4096 }], 256);
      expect(() => r.reader.push(bad), label).toThrow();
      r.reader.push(serialize.simpleReply(0, 1n)); // nothing more is taken once broken
      expect(r.outcomes.size, label).toBe(0);
    }
  });
});
