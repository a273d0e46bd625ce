/**
 * fio with its NBD engine (libnbd): /work/shared/bench/nbd-verify.fio runs 4 jobs, one
 * connection each, 16 writes in flight per connection, random 4 KiB writes over its own 16 MiB
 * each, then reads everything back and checks crc32c. Exercises multi-conn, out-of-order
 * replies and data integrity under load.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasTool, MiB, run, sparseImage, stopQuietly } from '../helpers/clients.ts';
import { type RunningServer, startServer, tempDir } from '../helpers/server.ts';

const JOB = '/work/shared/bench/nbd-verify.fio';
const SIZE = 64 * MiB;

describe.skipIf(!hasTool('fio') || !existsSync(JOB))('fio (nbd engine)', () => {
  const dir = tempDir();
  const image = join(dir.path, 'disk.img');
  let srv: RunningServer;

  beforeAll(async () => {
    sparseImage(image, SIZE);
    srv = await startServer([`disk=${image}`]);
  });

  afterAll(async () => {
    await stopQuietly(srv);
    dir.cleanup();
  });

  it('passes nbd-verify.fio: 4 connections, crc32c verify, err= 0', async () => {
    const report = join(dir.path, 'fio.json');
    const r = await run('fio', ['--filename=unused', '--output-format=json', `--output=${report}`, JOB], {
      env: { NBD_URI: srv.uri('disk') },
    });
    const text = readFileSync(report, 'utf8');
    expect(r.code, `fio failed:\n${r.stdout}\n${r.stderr}\n${text}`).toBe(0);
    // fio puts its warnings in front of the JSON.
    const json = JSON.parse(text.slice(text.indexOf('\n{') + 1));
    expect(json.jobs).toHaveLength(1); // group_reporting
    const job = json.jobs[0];
    expect(job.error).toBe(0);
    // Every byte of the 4 x 16 MiB was written, then read back and verified.
    expect(job.write.io_bytes).toBe(SIZE);
    expect(job.read.io_bytes).toBe(SIZE);
    expect(job.write.total_ios).toBe(SIZE / 4096);
    expect(r.stderr + r.stdout).not.toMatch(/verify: bad|crc32c: wanted/);
    // One connection per job (fio also opens one per job to probe the size first).
    const connected = srv
      .stderr()
      .split('\n')
      .filter((l) => l.includes('"msg":"connected"'));
    expect(connected.length).toBeGreaterThanOrEqual(4);
  });

  it('left fio verify headers in every 4 KiB block of the image file', () => {
    // fio starts each verified block with the verify magic 0xacca (little-endian).
    const data = readFileSync(image);
    let missing = 0;
    for (let o = 0; o < data.length; o += 4096) if (data[o] !== 0xca || data[o + 1] !== 0xac) missing++;
    expect(missing).toBe(0);
  });
});
