/**
 * Receiving without copies: transient chunks (a read buffer the owner reuses) are never referred
 * to by what the parser yields, and a WRITE payload can be received in place (`receiveInto`,
 * `payloadSpace`, `payloadFilled`). A seeded random walk plays the server's read loop (reads of
 * random sizes into one reused buffer or into the payload's space) over a stream of pipelined
 * requests and checks every yielded request byte for byte, after the read buffer was overwritten.
 */
import { describe, expect, it } from 'vitest';
import { BufferList, Command, type RequestMessage, ServerParser, serialize } from '../../src/nbd-protocol/index.ts';

function seq(from: number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (from + i) & 0xff;
  return b;
}

describe('BufferList: transient chunks', () => {
  it('takeOwned copies out of a transient chunk but not out of an owned one', () => {
    const owned = seq(0, 8);
    const reused = seq(8, 8);
    const l = new BufferList();
    l.push(owned);
    l.push(reused, true);
    const a = l.takeOwned(4);
    owned[0] = 0xee;
    expect(a[0]).toBe(0xee); // a view of the owned chunk
    l.skip(4);
    const b = l.takeOwned(4);
    reused.fill(0);
    expect(b).toEqual(seq(8, 4)); // a copy: the reused chunk was overwritten
  });

  it('detach copies what is left of transient chunks, and nothing else', () => {
    const reused = seq(0, 10);
    const owned = seq(10, 5);
    const l = new BufferList();
    l.push(reused, true);
    l.push(owned);
    l.skip(3);
    expect(l.detach()).toBe(7);
    reused.fill(0);
    expect(l.take(12)).toEqual(seq(3, 12));
    expect(l.detach()).toBe(0);
  });

  it('a consumed transient chunk needs no copy', () => {
    const reused = seq(0, 4);
    const l = new BufferList();
    l.push(reused, true);
    l.skip(4);
    expect(l.detach()).toBe(0);
    expect(l.length).toBe(0);
  });
});

describe('ServerParser: payloads received in place', () => {
  const transmission = { phase: 'transmission' as const };
  const write = (cookie: bigint, offset: number, data: Buffer): Buffer =>
    Buffer.concat([serialize.request(0, Command.WRITE, cookie, offset, data.length), data]);

  it('copies the queued part of the payload, then takes the rest where the owner puts it', () => {
    const p = new ServerParser(transmission);
    const data = seq(0, 100);
    const bytes = write(7n, 4096, data);
    p.push(bytes.subarray(0, 28 + 30));
    expect(p.next()).toBeUndefined();
    expect(p.awaiting).toBe(100);
    const target = Buffer.alloc(100);
    const space = p.receiveInto(target);
    expect(space.length).toBe(70);
    expect(p.buffered).toBe(30);
    bytes.copy(space, 0, 58, 58 + 50);
    p.payloadFilled(50);
    expect(p.next()).toBeUndefined();
    expect(p.payloadSpace()?.length).toBe(20);
    // The last bytes arrive the usual way (a read into the reused buffer), with the next request.
    p.push(Buffer.concat([bytes.subarray(108), serialize.request(0, Command.FLUSH, 8n, 0, 0)]));
    const w = p.next() as RequestMessage;
    expect(w.cookie).toBe(7n);
    expect(w.data).toBe(target);
    expect(w.data).toEqual(data);
    expect((p.next() as RequestMessage).type).toBe(Command.FLUSH);
    expect(p.payloadSpace()).toBeUndefined();
  });

  it('refuses a buffer of the wrong length, no awaited payload, or too many bytes', () => {
    const p = new ServerParser(transmission);
    expect(() => p.receiveInto(Buffer.alloc(4))).toThrow(RangeError);
    p.push(serialize.request(0, Command.WRITE, 1n, 0, 10));
    expect(p.next()).toBeUndefined();
    expect(() => p.receiveInto(Buffer.alloc(9))).toThrow(RangeError);
    p.receiveInto(Buffer.alloc(10));
    expect(() => p.payloadFilled(11)).toThrow(RangeError);
  });

  it('a random read loop over pipelined requests yields every payload exactly', () => {
    let state = 0x9e3779b9;
    const rand = (n: number): number => {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      return (state >>> 0) % n;
    };
    const sent: { cookie: bigint; data?: Buffer }[] = [];
    const parts: Buffer[] = [];
    for (let i = 0; i < 200; i++) {
      const cookie = BigInt(i + 1);
      if (rand(4) === 0) {
        parts.push(serialize.request(0, Command.READ, cookie, 0, 4096));
        sent.push({ cookie });
      } else {
        const data = seq(i, [1, 100, 4096, 70_000, 300_000][rand(5)] as number);
        parts.push(write(cookie, i * 512, data));
        sent.push({ cookie, data });
      }
    }
    const stream = Buffer.concat(parts);
    const p = new ServerParser(transmission);
    const reused = Buffer.alloc(65536);
    const got: RequestMessage[] = [];
    let at = 0;
    while (at < stream.length) {
      let into = p.payloadSpace();
      if ((into === undefined || into.length === 0) && p.awaiting > 0 && rand(2) === 0) {
        into = p.receiveInto(Buffer.alloc(p.awaiting));
      }
      const inPlace = into !== undefined && into.length > 0;
      const room = inPlace ? (into as Buffer).length : reused.length;
      const n = Math.min(1 + rand(room), stream.length - at);
      if (inPlace) {
        stream.copy(into as Buffer, 0, at, at + n);
        p.payloadFilled(n);
      } else {
        stream.copy(reused, 0, at, at + n);
        p.push(reused.subarray(0, n), true);
      }
      at += n;
      for (let m = p.next(); m !== undefined; m = p.next()) got.push(m as RequestMessage);
      p.detach();
      reused.fill(0xa5); // the next read overwrites the buffer
    }
    expect(got.map((r) => r.cookie)).toEqual(sent.map((s) => s.cookie));
    for (const [i, r] of got.entries()) {
      const want = sent[i]?.data;
      if (want !== undefined) expect(r.data?.equals(want), `request ${i}`).toBe(true);
    }
  });
});
