/**
 * The backup data path's parts without a server: the worker-thread SHA-256 against node's own
 * hash (updates of every size, across its 4 MiB batches, digests taken midway), records encoded
 * as parts (payload not copied) byte for byte as the format says, a file written with the
 * worker hash and background syncs that the reader accepts, and the buffer pool's reuse rule.
 */
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { BACKUP_MAGIC, encodeRecordParts, RecordType } from '../../src/backup/format.ts';
import { workerHasher } from '../../src/backup/hasher.ts';
import { BufferPool } from '../../src/backup/pipeline.ts';
import { RecordReader } from '../../src/backup/reader.ts';
import { PendingFile } from '../../src/backup/writer.ts';
import { tempDir } from '../helpers/server.ts';
import { MiB, prng } from './rig.ts';

const dir = tempDir('nbdsnap-backup-pipeline-');
afterAll(() => dir.cleanup());

describe('worker hasher', () => {
  it('gives the SHA-256 node gives, for updates of any size, midway and at the end', async () => {
    const rnd = prng(99);
    const h = workerHasher();
    const ref = createHash('sha256');
    const sizes = [0, 1, 31, 4 * MiB - 1, 2, 4 * MiB, 4 * MiB + 1, 100_000, 9 * MiB, 3];
    for (let i = 0; i < 40; i++) sizes.push(Math.floor(rnd() * 700_000));
    for (const [i, n] of sizes.entries()) {
      const b = randomBytes(n);
      h.update(b);
      ref.update(b);
      b.fill(0xaa); // the hasher copied it: changing the caller's buffer afterwards is harmless
      await h.settle();
      if (i % 13 === 5) expect((await h.digest()).toString('hex')).toBe(ref.copy().digest('hex'));
    }
    expect((await h.digest()).toString('hex')).toBe(ref.digest('hex'));
    await h.close();
  });
});

describe('record parts', () => {
  it('small records are one buffer, large ones head + the payload itself + CRC, as the format says', () => {
    for (const n of [0, 1, 4095, 4096, 65536, MiB]) {
      const payload = randomBytes(n);
      const { parts, crc } = encodeRecordParts({ type: RecordType.DATA, offset: 512, length: n, payload }, 7);
      const bytes = Buffer.concat(parts);
      expect(bytes.length).toBe(24 + n + 4);
      expect(bytes.toString('latin1', 0, 4)).toBe('DATA');
      expect(bytes.readUInt32LE(4)).toBe(n);
      expect(Number(bytes.readBigUInt64LE(8))).toBe(512);
      expect(Number(bytes.readBigUInt64LE(16))).toBe(n);
      expect(bytes.subarray(24, 24 + n).equals(payload)).toBe(true);
      expect(crc).toBe(crc32(bytes.subarray(0, 24 + n), 7));
      expect(bytes.readUInt32LE(24 + n)).toBe(crc);
      if (n >= 4096) expect(parts[1]).toBe(payload);
      else expect(parts.length).toBe(1);
    }
  });
});

describe.each([
  ['staging chunks (O_DIRECT, native hash)', true],
  ['the worker hash and background syncs', false],
])('writer with %s', (_name, staged) => {
  it('writes a file the reader accepts (every CRC, the end hash)', async () => {
    const path = join(dir.path, `big-${staged}.nbk`);
    const p = await PendingFile.create(path, BACKUP_MAGIC, { hashInWorker: true, staged });
    const w = p.writer;
    await w.add({ type: RecordType.HEAD, offset: 0, length: 80 * MiB, payload: Buffer.alloc(100) });
    const piece = randomBytes(MiB);
    for (let i = 0; i < 80; i++) {
      piece[0] = i;
      await w.add({ type: RecordType.DATA, offset: i * MiB, length: MiB, payload: Buffer.from(piece) });
    }
    const digest = await p.commit();
    expect(w.written).toBe(w.position);
    const r = await RecordReader.open(path, BACKUP_MAGIC, 'big.nbk');
    let n = 0;
    for (let rec = await r.next(); rec !== undefined; rec = await r.next()) {
      if (rec.type === 'DATA') {
        expect(rec.payload[0]).toBe(n);
        n++;
      }
    }
    await r.close();
    expect(n).toBe(80);
    // the reader checked every CRC and the end marker's hash; it is the writer's digest
    expect(r.end?.sha256.equals(digest)).toBe(true);
  });
});

describe('buffer pool', () => {
  it('gives a held buffer back only once the writer has written past it', () => {
    const pool = new BufferPool(16);
    const a = pool.take();
    const b = pool.take();
    expect(a).not.toBe(b);
    pool.hold(a, 100);
    pool.hold(b, 200);
    pool.release(99);
    const c = pool.take();
    expect(c).not.toBe(a);
    pool.release(150);
    expect(pool.take()).toBe(a);
    pool.give(c);
    expect(pool.take()).toBe(c);
    pool.release(200);
    expect(pool.take()).toBe(b);
  });
});
