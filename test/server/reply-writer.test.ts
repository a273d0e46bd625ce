/**
 * Large READ replies (src/server/reply-writer.ts): every reply must carry the image's bytes, whole
 * and in order, in simple and structured replies, pipelined with small reads, after writes, and
 * for a client that stops reading for a while (its socket fills up; the budget gets the bytes of
 * a reply back only once the kernel has them).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChunkType, Command, decodeChunk, ReplyFlag } from '../../src/nbd-protocol/index.ts';
import { MiB, pattern, readAt, sameBytes, sparseImage, stopQuietly, writeAt } from '../helpers/clients.ts';
import { RawClient } from '../helpers/raw-client.ts';
import { type RunningServer, startServer, tempDir } from '../helpers/server.ts';

const SIZE = 48 * MiB;

interface Got {
  error: number;
  data: Buffer[];
}

/** The replies to `count` requests, in whatever order they come: cookie -> error and data. */
async function collect(c: RawClient, count: number): Promise<Map<bigint, Got>> {
  const got = new Map<bigint, Got>();
  let done = 0;
  while (done < count) {
    const m = await c.next();
    if (m.kind === 'simpleReply') {
      got.set(m.cookie, { error: m.error, data: m.data === undefined ? [] : [m.data] });
      done += 1;
    } else if (m.kind === 'chunk') {
      const entry = got.get(m.cookie) ?? { error: 0, data: [] };
      got.set(m.cookie, entry);
      const chunk = decodeChunk(m.type, m.data);
      if (chunk.chunk === 'OFFSET_DATA') entry.data.push(chunk.data);
      else if (m.type !== ChunkType.NONE) entry.error = -1;
      if ((m.flags & ReplyFlag.DONE) !== 0) done += 1;
    } else throw new Error(`unexpected ${m.kind}`);
  }
  return got;
}

/**
 * Send `reads` pipelined, run `between` (if given) before taking replies, then check that every
 * reply succeeded and holds exactly the image's bytes.
 */
async function expectReads(
  c: RawClient,
  image: string,
  reads: readonly (readonly [number, number])[],
  between?: () => Promise<unknown>,
): Promise<void> {
  const cookies = reads.map(([offset, length]) => c.sendRequest(Command.READ, { offset, length }));
  await between?.();
  const got = await collect(c, reads.length);
  reads.forEach(([offset, length], i) => {
    const r = got.get(cookies[i] as bigint);
    expect(r?.error, `read ${i}`).toBe(0);
    expect(sameBytes(Buffer.concat(r?.data ?? []), readAt(image, offset, length)), `read ${i}`).toBe('equal');
  });
}

describe('large READ replies', () => {
  const dir = tempDir();
  const image = join(dir.path, 'disk.img');
  let srv: RunningServer;

  beforeAll(async () => {
    sparseImage(image, SIZE);
    // Written through the page cache: the reads below find every page cached.
    for (let i = 0; i < SIZE / MiB; i++) writeAt(image, i * MiB, pattern(MiB, i + 7));
    srv = await startServer([`disk=${image}`]);
  });

  afterAll(async () => {
    await stopQuietly(srv);
    dir.cleanup();
  });

  for (const structured of [true, false]) {
    it(`pipelined reads of every size, ${structured ? 'structured' : 'simple'} replies`, async () => {
      const c = await RawClient.open(srv.port, 'disk', { structured });
      const reads = [
        [0, 65_536],
        [65_536 * 3 + 1, 65_536 + 1],
        [MiB - 17, MiB],
        [5 * MiB, 3 * MiB + 5],
        [SIZE - 2 * MiB, 2 * MiB],
        [123, 4096],
        [7 * MiB + 9, 200_000],
        [SIZE - 65_536, 65_536],
      ] as const;
      await expectReads(c, image, reads);
      await c.disconnect();
    });
  }

  it('a client that stops reading: replies cut by a full socket arrive whole and in order', async () => {
    const c = await RawClient.open(srv.port, 'disk');
    // Several rounds: where the socket fills up (mid-buffer, or between replies) is up to timing.
    for (let round = 0; round < 4; round++) {
      c.socket.pause(); // the server's sends fill the socket buffers and come back short
      const reads: [number, number][] = [];
      for (let i = 0; i < 64; i++) {
        const length = i % 5 === 0 ? 4096 : MiB + 1000 * i + 7 * round;
        reads.push([((i * 5 + round) % 44) * MiB + i * 4096, length]);
      }
      await expectReads(c, image, reads, async () => {
        await new Promise((r) => setTimeout(r, 300));
        c.socket.resume();
      });
    }
    await c.disconnect();
  });

  it('a read after an acknowledged write returns the written bytes', async () => {
    const c = await RawClient.open(srv.port, 'disk');
    for (let round = 0; round < 4; round++) {
      const data = pattern(MiB + 4096, 100 + round);
      const offset = 9 * MiB + round * 4096;
      const w = await c.request(Command.WRITE, { offset, data });
      expect(w.error).toBe(0);
      const r = await c.request(Command.READ, { offset, length: data.length });
      expect(r.error).toBe(0);
      expect(sameBytes(r.data ?? Buffer.alloc(0), data)).toBe('equal');
    }
    await c.disconnect();
  });
});
