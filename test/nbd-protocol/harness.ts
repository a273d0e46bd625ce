/**
 * Shared by the protocol tests: wire builders (inputs are built by hand from the spec's layouts,
 * not by the serializer under test) and the split harness (pg-protocol's pattern): a session is
 * parsed whole, split in two at every offset, and one byte at a time; one byte at a time also
 * checks that each message comes out exactly when its last byte arrives.
 */
import { expect } from 'vitest';
import { NbdProtocolError } from '../../src/nbd-protocol/index.ts';

export const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
export const u16 = (v: number): Buffer => hex(v.toString(16).padStart(4, '0'));
export const u32 = (v: number): Buffer => hex(v.toString(16).padStart(8, '0'));
export const u64 = (v: bigint): Buffer => hex(v.toString(16).padStart(16, '0'));
export const str = (s: string): Buffer => Buffer.from(s, 'utf8');

export const pattern = (n: number, seed = 1, step = 13): Buffer => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * step + seed) & 0xff;
  return b;
};

export interface PullParser<M> {
  push(b: Buffer): void;
  next(): M | undefined;
}

export interface Frame<M> {
  bytes: Buffer;
  expected: M;
}

export interface Session<M, P extends PullParser<M>> {
  make: () => P;
  frames: Frame<M>[];
  /** What the owner does between two messages (phase switches). */
  after?: (m: M, p: P) => void;
}

function drain<M, P extends PullParser<M>>(s: Session<M, P>, p: P, out: M[]): void {
  for (let m = p.next(); m !== undefined; m = p.next()) {
    out.push(m);
    s.after?.(m, p);
  }
}

export function parseChunks<M, P extends PullParser<M>>(s: Session<M, P>, chunks: Buffer[]): M[] {
  const p = s.make();
  const out: M[] = [];
  for (const c of chunks) {
    p.push(c);
    drain(s, p, out);
  }
  return out;
}

export function expectEverySplit<M, P extends PullParser<M>>(s: Session<M, P>): void {
  const whole = Buffer.concat(s.frames.map((f) => f.bytes));
  const expected = s.frames.map((f) => f.expected);
  expect(parseChunks(s, [whole])).toStrictEqual(expected);
  for (let i = 0; i <= whole.length; i++) {
    expect(parseChunks(s, [whole.subarray(0, i), whole.subarray(i)]), `split at ${i}`).toStrictEqual(expected);
  }
  let end = 0;
  const ends = s.frames.map((f) => (end += f.bytes.length));
  const p = s.make();
  const out: M[] = [];
  for (let i = 0; i < whole.length; i++) {
    p.push(whole.subarray(i, i + 1));
    drain(s, p, out);
    expect(out.length, `messages after byte ${i + 1}`).toBe(ends.filter((e) => e <= i + 1).length);
  }
  expect(out).toStrictEqual(expected);
}

export function catchError(fn: () => unknown): NbdProtocolError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(NbdProtocolError);
    return err as NbdProtocolError;
  }
  throw new Error('expected an NbdProtocolError, nothing was thrown');
}
