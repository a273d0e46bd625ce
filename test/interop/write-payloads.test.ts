/**
 * WRITE payloads however they arrive: a plain-socket connection reads a payload straight into its
 * own buffer and headers into one reused buffer (src/server/direct-read.ts), so every way a
 * payload can be cut must still land byte for byte. The raw client sends large and small WRITEs
 * pipelined in one buffer, cut at odd places, dribbled a few bytes at a time, a 32 MiB one, and
 * WRITEs that wait for the memory budget (`--max-buffer` smaller than the requests in flight);
 * then the image file is compared with what was sent.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Command, ReplyFlag, serialize } from '../../src/nbd-protocol/index.ts';
import { MiB, pattern, readAt, sameBytes, sparseImage, stopQuietly } from '../helpers/clients.ts';
import { RawClient } from '../helpers/raw-client.ts';
import { type RunningServer, startServer, tempDir } from '../helpers/server.ts';

const SIZE = 96 * MiB;

/** Header and payload of one WRITE, back to back. */
const writeBytes = (cookie: bigint, offset: number, data: Buffer): Buffer =>
  Buffer.concat([serialize.request(0, Command.WRITE, cookie, offset, data.length), data]);

describe('WRITE payloads cut every way', () => {
  const dir = tempDir();
  const image = join(dir.path, 'disk.img');
  let srv: RunningServer;

  beforeAll(async () => {
    sparseImage(image, SIZE);
    // 4 MiB of budget: the 32 MiB WRITE is served alone, 1 MiB ones wait for each other.
    srv = await startServer([`disk=${image}`, '--max-buffer', '4M']);
  });

  afterAll(async () => {
    await stopQuietly(srv);
    dir.cleanup();
  });

  /** Send `bytes` in pieces of the given sizes (cycled), each handed to the kernel on its own. */
  async function sendCut(c: RawClient, bytes: Buffer, sizes: number[]): Promise<void> {
    let at = 0;
    for (let i = 0; at < bytes.length; i++) {
      const n = sizes[i % sizes.length] as number;
      await c.send(bytes.subarray(at, at + n));
      at += n;
    }
  }

  /** The replies to `cookies` (requests without data in their reply), in any order: cookie -> error. */
  async function replies(c: RawClient, cookies: bigint[]): Promise<Map<bigint, number>> {
    const got = new Map<bigint, number>();
    while (got.size < cookies.length) {
      const m = await c.next();
      if (m.kind === 'simpleReply') got.set(m.cookie, m.error);
      else if (m.kind === 'chunk' && (m.flags & ReplyFlag.DONE) !== 0) got.set(m.cookie, m.type === 0 ? 0 : -1);
      else throw new Error(`unexpected ${m.kind}`);
    }
    return got;
  }

  /** Replies to `cookies`, in any order, all successful. */
  async function expectDone(c: RawClient, cookies: bigint[]): Promise<void> {
    const got = await replies(c, cookies);
    expect([...got.keys()].sort()).toEqual([...cookies].sort());
    for (const [cookie, error] of got) expect(error, `cookie ${cookie}`).toBe(0);
  }

  it('pipelined WRITEs of every size in one buffer, cut at odd places', async () => {
    const c = await RawClient.open(srv.port, 'disk');
    const sizes = [1, 511, 4096, 65_536 - 28, 65_536, 65_537, 300_000, MiB, 3 * MiB + 5];
    const writes = sizes.map((n, i) => ({
      cookie: BigInt(i + 1),
      offset: i * 4 * MiB + 13 * i,
      data: pattern(n, i + 1),
    }));
    const stream = Buffer.concat(writes.map((w) => writeBytes(w.cookie, w.offset, w.data)));
    const done = expectDone(
      c,
      writes.map((w) => w.cookie),
    );
    await sendCut(c, stream, [7, 28, 29, 1000, 65_536, 3, 200_000]);
    await done;
    for (const w of writes) expect(sameBytes(readAt(image, w.offset, w.data.length), w.data)).toBe('equal');
    await c.disconnect();
  });

  it('a WRITE dribbled a few bytes at a time, then a READ of it on the same connection', async () => {
    const c = await RawClient.open(srv.port, 'disk');
    const data = pattern(200_000, 42);
    const offset = 40 * MiB + 1;
    await sendCut(c, writeBytes(99n, offset, data), [3, 5, 28, 1, 4096, 17]);
    await expectDone(c, [99n]);
    const r = await c.request(Command.READ, { offset, length: data.length });
    expect(r.error).toBe(0);
    expect(sameBytes(r.data ?? Buffer.alloc(0), data)).toBe('equal');
    expect(sameBytes(readAt(image, offset, data.length), data)).toBe('equal');
    await c.disconnect();
  });

  it('a 32 MiB WRITE over the budget, then 1 MiB WRITEs that must wait for it', async () => {
    const c = await RawClient.open(srv.port, 'disk');
    const big = pattern(32 * MiB, 7);
    const small = Array.from({ length: 12 }, (_, i) => ({
      cookie: BigInt(200 + i),
      offset: 50 * MiB + i * MiB,
      data: pattern(MiB, 100 + i),
    }));
    const stream = Buffer.concat([
      writeBytes(100n, 0, big),
      ...small.map((w) => writeBytes(w.cookie, w.offset, w.data)),
      serialize.request(0, Command.FLUSH, 300n, 0, 0),
    ]);
    const done = expectDone(c, [100n, ...small.map((w) => w.cookie), 300n]);
    await sendCut(c, stream, [MiB + 3]);
    await done;
    expect(sameBytes(readAt(image, 0, big.length), big)).toBe('equal');
    for (const w of small) expect(sameBytes(readAt(image, w.offset, w.data.length), w.data)).toBe('equal');
    await c.disconnect();
  });

  it('several connections writing at once, each byte for byte', async () => {
    const clients = await Promise.all([1, 2, 3, 4].map(() => RawClient.open(srv.port, 'disk')));
    const jobs = clients.map(async (c, k) => {
      const writes = Array.from({ length: 8 }, (_, i) => ({
        cookie: BigInt(i + 1),
        offset: 64 * MiB + k * 8 * MiB + i * MiB,
        data: pattern(MiB - 4096 * i, 1000 + k * 10 + i),
      }));
      const done = expectDone(
        c,
        writes.map((w) => w.cookie),
      );
      await sendCut(c, Buffer.concat(writes.map((w) => writeBytes(w.cookie, w.offset, w.data))), [65_536 + k]);
      await done;
      return writes;
    });
    for (const writes of await Promise.all(jobs)) {
      for (const w of writes) expect(sameBytes(readAt(image, w.offset, w.data.length), w.data)).toBe('equal');
    }
    await Promise.all(clients.map((c) => c.disconnect()));
  });
});
