/**
 * Block status at 15 TiB, checked answer by answer against a model (issue 10): a sparse origin of
 * 15 TiB with a few data extents (first chunks, beyond 2^32 bytes, at 1 TiB, the last chunks),
 * 64 KiB chunks, four snapshots (a, c, d read-only; b writable) and, between them, origin writes
 * (first and last chunk, across the 4 GiB boundary, inside a chunk, a 1 MiB run, 120 scattered
 * 4 KiB writes), full-chunk trims, and private writes to b (a chunk the origin also changed, and
 * untouched ones). Then, with the model:
 * - `nbdinfo --map --json` of the whole device (nbdinfo walks it in requests the server caps) of
 *   the origin, and of every snapshot in base:allocation and qemu:allocation-depth, and of
 *   qemu:dirty-bitmap:FROM on every snapshot after FROM;
 * - BLOCK_STATUS requests of our own over ranges that start and end inside chunks (around 4 GiB,
 *   1 TiB, the end, random ones up to 2 GiB long), with all contexts selected at once, and with
 *   REQ_ONE: every extent returned must be exactly the model's over what it covers.
 * The model: a snapshot reads chunk C from the store iff the origin changed C after the snapshot
 * was taken, or (writable) the snapshot itself wrote C; such a chunk is data at depth 1, every
 * other chunk the origin's own allocation (unchanged since) at depth 2. The origin's allocation
 * is what was written, in 4 KiB filesystem blocks, less the trimmed chunks. Change tracking in
 * eras (era i ends when the i-th snapshot is taken): an origin change marks its 64 KiB blocks in
 * the current era, a write to snapshot i in eras i and i + 1 (it changed the snapshot and makes it
 * differ from the next one); dirty between FROM and TO is every block marked in an era after FROM's
 * and up to TO's.
 * Skipped, with the reason, where the temp dir's filesystem cannot hold a 15 TiB sparse file.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CommandFlag } from '../../src/nbd-protocol/index.ts';
import { hasTool, ok, run, writeAt } from '../helpers/clients.ts';
import { KiB, MiB, makeSparse, Rig, TRIM_ZEROES, tempDir } from '../helpers/snapshots.ts';
import { Intervals, type Run } from './intervals.ts';

const TiB = 2 ** 40;
const GiB = 2 ** 30;
const SIZE = 15 * TiB;
const CHUNK = 64 * KiB;
const FS_BLOCK = 4 * KiB;
const DATA = 0;
const HOLE = 3; // NBD_STATE_HOLE | NBD_STATE_ZERO
const LOCAL = 1;
const BACKING = 2;

const dir = tempDir('nbdsnap-scale-');
const image = join(dir.path, 'disk.img');
let skip: string | undefined;
try {
  makeSparse(image, SIZE);
} catch (err) {
  const code = (err as NodeJS.ErrnoException).code;
  if (code !== 'EFBIG' && code !== 'EINVAL') throw err;
  skip = `the filesystem of ${dir.path} cannot hold a 15 TiB sparse file (${code})`;
}
if (!hasTool('nbdinfo')) skip ??= 'nbdinfo is not installed';
if (!TRIM_ZEROES) skip ??= 'the native helper is not built (no holes, no SEEK_DATA)';
if (skip !== undefined) dir.cleanup(); // the suite's hooks do not run when it is skipped

/** What the server was asked to do, in order, and what the model derives from it. */
class Model {
  /** Allocated bytes of the origin file. */
  readonly origin = new Intervals();
  /** Per snapshot: the chunks it reads from the store. */
  readonly stored = new Map<string, Set<number>>();
  /** Per snapshot: its place in the order of snapshots (1, 2, ...). */
  readonly order = new Map<string, number>();
  /** Per era: the 64 KiB blocks marked changed in it. Era i ends when snapshot i is taken. */
  readonly eras = new Map<number, Set<number>>();

  snapshot(name: string): void {
    this.order.set(name, this.order.size + 1);
    this.stored.set(name, new Set());
  }

  private mark(era: number, offset: number, length: number): void {
    const set = this.eras.get(era) ?? new Set<number>();
    this.eras.set(era, set);
    for (let c = Math.floor(offset / CHUNK); c * CHUNK < offset + length; c++) set.add(c);
  }

  /** An origin write or trim of [offset, offset + length). */
  originChange(offset: number, length: number, trim: boolean): void {
    if (trim) this.origin.remove(offset, offset + length);
    else this.origin.add(alignDown(offset, FS_BLOCK), alignUp(offset + length, FS_BLOCK));
    for (let c = Math.floor(offset / CHUNK); c * CHUNK < offset + length; c++) {
      for (const s of this.stored.values()) s.add(c);
    }
    this.mark(this.order.size + 1, offset, length);
  }

  /**
   * A write to writable snapshot `snap`: its chunks are its own, and for change tracking the
   * write changed the snapshot (its own era) and makes it differ from the next snapshot (the next
   * era), as blksnap marks both of its maps (src/snapshot/snapshot-export.ts).
   */
  privateWrite(snap: string, offset: number, length: number): void {
    for (let c = Math.floor(offset / CHUNK); c * CHUNK < offset + length; c++) this.stored.get(snap)?.add(c);
    const i = this.order.get(snap) as number;
    this.mark(i, offset, length);
    this.mark(i + 1, offset, length);
  }

  /** Expected extents over [lo, hi) of the origin (base:allocation). */
  originMap(lo: number, hi: number): Run[] {
    return this.origin.runs(lo, hi, DATA, HOLE);
  }

  /** Expected extents of snapshot `snap` over [lo, hi), base:allocation or allocation depth. */
  snapshotMap(snap: string, lo: number, hi: number, depth: boolean): Run[] {
    const store = chunkIntervals(this.stored.get(snap) ?? new Set());
    const out: Run[] = [];
    for (const [start, length, inStore] of store.runs(lo, hi, 1, 0)) {
      if (inStore === 1) push(out, start, length, depth ? LOCAL : DATA);
      else if (depth) push(out, start, length, BACKING);
      else for (const r of this.originMap(start, start + length)) push(out, ...r);
    }
    return out;
  }

  dirtyMap(from: string, to: string, lo: number, hi: number): Run[] {
    const a = this.order.get(from) as number;
    const b = this.order.get(to) as number;
    const blocks = new Set<number>();
    for (const [era, set] of this.eras) if (era > a && era <= b) for (const c of set) blocks.add(c);
    return chunkIntervals(blocks).runs(lo, hi, 1, 0);
  }
}

function alignDown(x: number, a: number): number {
  return Math.floor(x / a) * a;
}
function alignUp(x: number, a: number): number {
  return Math.ceil(x / a) * a;
}

function chunkIntervals(chunks: Set<number>): Intervals {
  const iv = new Intervals();
  for (const c of chunks) iv.add(c * CHUNK, Math.min(SIZE, (c + 1) * CHUNK));
  return iv;
}

/** Append [start, +length) of `flags`, merged with the last run if adjacent and alike. */
function push(out: Run[], start: number, length: number, flags: number): void {
  const last = out[out.length - 1];
  if (last !== undefined && last[2] === flags && last[0] + last[1] === start) last[1] += length;
  else out.push([start, length, flags]);
}

/** `nbdinfo --map[=CTX] --json URI`, adjacent entries of one type merged. */
async function nbdinfoMap(uri: string, context: string): Promise<Run[]> {
  const out = ok(await run('nbdinfo', [`--map=${context}`, '--json', uri], { timeoutMs: 60_000 }), 'nbdinfo');
  const merged: Run[] = [];
  for (const e of JSON.parse(out) as { offset: number; length: number; type: number }[]) {
    push(merged, e.offset, e.length, e.type);
  }
  return merged;
}

/** Extents from `offset`, cut at `end`, adjacent ones of one type merged. */
function asRuns(offset: number, end: number, extents: { length: number; flags: number }[]): Run[] {
  const out: Run[] = [];
  let pos = offset;
  for (const e of extents) {
    if (pos >= end) break;
    expect(e.length, `a zero-length extent at ${pos}`).toBeGreaterThan(0);
    const length = Math.min(e.length, end - pos);
    push(out, pos, length, e.flags);
    pos += length;
  }
  return out;
}

/** The model's runs over the span the answer covers (an answer may stop short of the range). */
function covered(answer: Run[], model: (lo: number, hi: number) => Run[]): Run[] {
  const first = answer[0];
  const last = answer[answer.length - 1];
  if (first === undefined || last === undefined) return [];
  return model(first[0], last[0] + last[1]);
}

let seed = 10;
function random(): number {
  seed = (seed + 0x6d2b79f5) | 0;
  let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
  return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
}

describe.skipIf(skip !== undefined)(
  `block status of a 15 TiB origin and its snapshots${skip ? ` (skipped: ${skip})` : ''}`,
  () => {
    const model = new Model();
    const rig = new Rig(dir.path, {
      devices: { disk: image },
      stores: [join(dir.path, 'store.img')],
      chunkSize: '64K',
    });
    const SNAPS = ['a', 'b', 'c', 'd'];

    beforeAll(async () => {
      // data already in the origin file
      for (const [offset, length] of [
        [0, 192 * KiB],
        [4 * GiB + 4 * KiB, 8 * KiB],
        [TiB, CHUNK],
        [SIZE - 128 * KiB, 128 * KiB],
      ] as const) {
        writeAt(image, offset, Buffer.alloc(length, 0xa5));
        model.origin.add(offset, offset + length);
      }
      makeSparse(join(dir.path, 'store.img'), 128 * MiB);
      await rig.start();
      const origin = await rig.open('disk');
      const write = async (offset: number, length: number) => {
        await origin.write(offset, Buffer.alloc(length, 0x5a));
        model.originChange(offset, length, false);
      };
      const trim = async (offset: number, length: number) => {
        await origin.trim(offset, length);
        model.originChange(offset, length, true);
      };
      const scattered = async (n: number) => {
        for (let i = 0; i < n; i++) await write(Math.floor((random() * SIZE) / FS_BLOCK) * FS_BLOCK, FS_BLOCK);
      };
      const snapshot = async (name: string, writable = false) => {
        await origin.flush();
        await rig.createSnapshot('disk', name, writable);
        model.snapshot(name);
      };

      await snapshot('a');
      await write(0, 4 * KiB); // the first chunk, partly
      await write(4 * GiB - 4 * KiB, 8 * KiB); // across 2^32 bytes: chunks 65535 and 65536
      await write(SIZE - 4 * KiB, 4 * KiB); // the last chunk
      await write(7 * TiB + 12 * KiB, 512); // inside a chunk, not block aligned
      await scattered(40);
      await snapshot('b', true);
      await write(4 * GiB + 3 * CHUNK + 51_200, 1000);
      await write(TiB + 32 * KiB, CHUNK); // half over data, half over a hole
      await trim(SIZE - 128 * KiB, CHUNK); // a chunk of data becomes a hole
      await write(10 * TiB, MiB); // a run of 16 chunks
      await scattered(40);
      // private writes to the writable snapshot: a chunk the origin changed after b (b holds a copy),
      // one across 2^32 the origin changed before b, and untouched ones
      const b = await rig.open('disk@b');
      for (const [offset, length] of [
        [10 * TiB + CHUNK + 512, 4 * KiB],
        [4 * GiB - 2 * KiB, 4 * KiB],
        [5 * CHUNK, 4 * KiB],
        [12 * TiB + 7 * FS_BLOCK, FS_BLOCK],
        [SIZE - 3 * CHUNK, CHUNK],
      ] as const) {
        await b.write(offset, Buffer.alloc(length, 0x77));
        model.privateWrite('b', offset, length);
      }
      await b.flush();
      await snapshot('c');
      await write(0, CHUNK); // the whole first chunk
      await write(4 * GiB - CHUNK, 2 * CHUNK);
      await trim(2 * CHUNK, CHUNK); // origin data in the first chunks
      await scattered(40);
      await snapshot('d');
      await write(4 * GiB + 4 * KiB, 4 * KiB);
      await write(SIZE - CHUNK, CHUNK);
      await write(TiB - 4 * KiB, 8 * KiB);
      await origin.flush();
    }, 60_000);

    afterAll(async () => {
      await rig.stop();
      dir.cleanup();
    });

    it('the origin: base:allocation of the whole device', async () => {
      expect(await nbdinfoMap(rig.uri('disk'), 'base:allocation')).toEqual(model.originMap(0, SIZE));
    });

    it('every snapshot: base:allocation and qemu:allocation-depth of the whole device', async () => {
      for (const s of SNAPS) {
        expect(await nbdinfoMap(rig.uri(`disk@${s}`), 'base:allocation'), `disk@${s} base:allocation`).toEqual(
          model.snapshotMap(s, 0, SIZE, false),
        );
        expect(
          await nbdinfoMap(rig.uri(`disk@${s}`), 'qemu:allocation-depth'),
          `disk@${s} qemu:allocation-depth`,
        ).toEqual(model.snapshotMap(s, 0, SIZE, true));
      }
    });

    it('qemu:dirty-bitmap between every two points, whole device', async () => {
      for (const [from, to] of [
        ['a', 'b'],
        ['a', 'c'],
        ['b', 'c'],
        ['a', 'd'],
        ['b', 'd'],
        ['c', 'd'],
      ] as const) {
        expect(
          await nbdinfoMap(rig.uri(`disk@${to}`), `qemu:dirty-bitmap:${from}`),
          `qemu:dirty-bitmap:${from} on disk@${to}`,
        ).toEqual(model.dirtyMap(from, to, 0, SIZE));
      }
    });

    it('ranges that start and end inside chunks, every context at once, and REQ_ONE', async () => {
      const ranges: [number, number][] = [
        [1000, 200_000],
        [4 * GiB - 100_000, 300_000],
        [4 * GiB - 1, 2],
        [TiB - 12_345, 4 * GiB - 4096],
        [10 * TiB + 32 * KiB + 5, MiB + 3],
        [SIZE - 300_001, 299_000],
        [SIZE - 1, 1],
        [SIZE - 4 * GiB + 512, 4 * GiB - 512],
      ];
      for (let i = 0; i < 12; i++) {
        const length = 1 + Math.floor(random() * 2 * GiB);
        ranges.push([Math.floor(random() * (SIZE - length)), length]);
      }
      for (const s of SNAPS) {
        const dirty = SNAPS.slice(0, SNAPS.indexOf(s));
        const contexts = ['base:allocation', 'qemu:allocation-depth', ...dirty.map((f) => `qemu:dirty-bitmap:${f}`)];
        const c = await rig.open(`disk@${s}`, contexts);
        for (const [offset, length] of ranges) {
          for (const flags of [0, CommandFlag.REQ_ONE]) {
            const answer = await c.blockStatus(offset, length, flags);
            const what = `disk@${s} [${offset}, +${length})${flags ? ' REQ_ONE' : ''}`;
            for (const ctx of contexts) {
              const extents = answer.get(ctx);
              expect(extents, `${what}: no ${ctx} answer`).toBeDefined();
              if (flags !== 0) expect(extents?.length, `${what} ${ctx}: REQ_ONE`).toBe(1);
              const got = asRuns(offset, offset + length, extents ?? []);
              expect(got[0]?.[0], `${what} ${ctx}: starts at the offset`).toBe(offset);
              const want =
                ctx === 'base:allocation'
                  ? (lo: number, hi: number) => model.snapshotMap(s, lo, hi, false)
                  : ctx === 'qemu:allocation-depth'
                    ? (lo: number, hi: number) => model.snapshotMap(s, lo, hi, true)
                    : (lo: number, hi: number) => model.dirtyMap(ctx.slice('qemu:dirty-bitmap:'.length), s, lo, hi);
              const expected = covered(got, want);
              // a single extent (REQ_ONE) may stop short of a run of the model, never cross one
              if (flags !== 0) expect(got, `${what} ${ctx}`).toEqual(expected.slice(0, 1));
              else expect(got, `${what} ${ctx}`).toEqual(expected);
            }
          }
        }
        await c.close();
      }
    });
  },
);
