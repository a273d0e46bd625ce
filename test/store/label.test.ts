/**
 * Store labels, without a server: encode/decode of a copy and of the pair (the newer valid copy
 * wins, one damaged copy is survived, two are an error, no magic is "none", a version-1
 * superblock is named as such), the record of a new store and the labels it gives its ranges,
 * and the open rules of open.ts over fake probes (which ranges are refused, and why).
 */
import { describe, expect, it } from 'vitest';
import {
  copyOffset,
  decodeLabelCopy,
  decodeLabels,
  encodeLabel,
  encodeLabelPair,
  LABEL_AREA,
  LABEL_COPY,
  type Label,
} from '../../src/store/label.ts';
import { checkAppend, type OpenPlan, planOpen, planTransient } from '../../src/store/open.ts';
import type { RangeContent } from '../../src/store/probe.ts';
import type { StoreRange } from '../../src/store/space.ts';
import { decodeSuperblocks, newSuperblock, rangeLabel, type Superblock } from '../../src/store/superblock.ts';

const MiB = 1024 * 1024;
const r = (path: string, start = 0, length = 16 * MiB): StoreRange => ({ path, start, length });

function store(kind: 'persistent' | 'transient', ...ranges: StoreRange[]): Superblock {
  return newSuperblock(kind, 65536, ranges, kind === 'persistent' ? 0 : undefined);
}

describe('a label copy', () => {
  const sb = store('persistent', r('/a'), r('/b', 2048 * 512, 8 * MiB));

  it('round-trips, generation included', () => {
    const got = decodeLabelCopy(encodeLabel({ ...sb, generation: 7 }));
    expect(got).toEqual({ state: 'valid', label: { ...sb, generation: 7 } });
  });

  it('is one 64 KiB copy with the magic, version 2 and the generation in its header', () => {
    const b = encodeLabel(sb);
    expect(b.length).toBe(LABEL_COPY);
    expect(b.toString('latin1', 0, 16)).toBe('NBDSNAP-STORE\0\0\0');
    expect(b.readUInt32LE(16)).toBe(2);
    expect(b.readUInt32LE(20)).toBe(sb.generation);
  });

  it('without the magic is none; a flipped byte anywhere in header or JSON is bad', () => {
    expect(decodeLabelCopy(Buffer.alloc(LABEL_COPY))).toEqual({ state: 'none' });
    const good = encodeLabel(sb);
    const jsonEnd = 32 + good.readUInt32LE(28);
    for (const at of [17, 21, 25, 29, 32, 40, jsonEnd - 1]) {
      const b = Buffer.from(good);
      b[at] = (b[at] as number) ^ 0x01;
      const got = decodeLabelCopy(b);
      expect(got.state, `byte ${at}`).not.toBe('valid');
      expect(got.state, `byte ${at}`).not.toBe('none');
    }
  });

  it('with a checksum over JSON that is not a label is bad (not trusted)', () => {
    const b = encodeLabel({ ...sb, kind: 'other' as never });
    expect(decodeLabelCopy(b)).toMatchObject({ state: 'bad', why: 'unknown kind' });
  });
});

describe('the pair of copies', () => {
  const sb = store('persistent', r('/a'));
  const copy = (generation: number) => encodeLabel({ ...sb, generation });

  it('the valid copy with the higher generation wins; updates alternate copies', () => {
    expect(decodeLabels(copy(3), copy(2))).toMatchObject({ state: 'valid', slot: 0, label: { generation: 3 } });
    expect(decodeLabels(copy(2), copy(3))).toMatchObject({ state: 'valid', slot: 1, label: { generation: 3 } });
    expect(copyOffset(2)).toBe(0);
    expect(copyOffset(3)).toBe(LABEL_COPY);
  });

  it('one damaged copy: the other is used', () => {
    const bad = copy(5);
    bad[40] = (bad[40] as number) ^ 0xff;
    expect(decodeLabels(bad, copy(4))).toMatchObject({ state: 'valid', slot: 1, label: { generation: 4 } });
  });

  it('both damaged: unreadable (never none, so never taken for blank)', () => {
    const a = copy(5);
    const b = copy(4);
    a[40] = (a[40] as number) ^ 0xff;
    b[40] = (b[40] as number) ^ 0xff;
    expect(decodeLabels(a, b)).toMatchObject({ state: 'unreadable', why: 'checksum mismatch' });
    expect(() => decodeSuperblocks(a, b)).toThrow(/label is unreadable/);
  });

  it('a version-1 superblock is named, not taken for damage or blank', () => {
    const v1 = copy(2);
    v1.writeUInt32LE(1, 16);
    expect(decodeLabels(v1, Buffer.alloc(LABEL_COPY))).toEqual({ state: 'version', version: 1 });
    expect(() => decodeSuperblocks(v1, Buffer.alloc(LABEL_COPY))).toThrow(/format version 1/);
  });

  it('encodeLabelPair writes both copies, the second one newer', () => {
    const pair = encodeLabelPair(rangeLabel(store('persistent', r('/a'), r('/b')), 1));
    expect(pair.length).toBe(LABEL_AREA);
    const read = decodeLabels(pair.subarray(0, LABEL_COPY), pair.subarray(LABEL_COPY));
    expect(read).toMatchObject({ state: 'valid', slot: 1, label: { index: 1, generation: 2 } });
  });
});

describe('a new store record', () => {
  it('lists every range with its own id; range labels carry uuid, index, id, extent and where range 0 is', () => {
    const sb = store('persistent', r('/a'), r('/b', 4096, 4 * MiB), r('/c'));
    expect(sb).toMatchObject({ index: 0, kind: 'persistent', start: 0, length: 16 * MiB, firstJournalSlot: 0 });
    expect(new Set(sb.ranges.map((x) => x.id)).size).toBe(3);
    expect(sb.ranges[0]?.id).toBe(sb.id);
    const l1 = rangeLabel(sb, 1);
    expect(l1).toEqual({
      generation: 1,
      kind: 'persistent',
      uuid: sb.uuid,
      index: 1,
      id: sb.ranges[1]?.id,
      start: 4096,
      length: 4 * MiB,
      chunkSize: 65536,
      first: { path: '/a', start: 0, length: 16 * MiB },
    });
    expect(decodeLabelCopy(encodeLabel(l1))).toEqual({ state: 'valid', label: l1 });
  });
});

describe('the open rules', () => {
  const sb = store('persistent', r('/a'), r('/b'), r('/c'));
  const other = store('persistent', r('/x'), r('/y'));
  const label = (s: Superblock, i: number): Label => (i === 0 ? s : rangeLabel(s, i));
  /** A fake disk: what each path holds. */
  const disk = (m: Record<string, RangeContent>) => async (x: StoreRange) => {
    const c = m[x.path];
    if (c === undefined) throw new Error(`${x.path}: ENOENT`);
    return c;
  };
  const L = (s: Superblock, i: number): RangeContent => ({ kind: 'label', label: label(s, i) });
  const blank: RangeContent = { kind: 'blank' };
  const whole = { '/a': L(sb, 0), '/b': L(sb, 1), '/c': L(sb, 2) };
  const open = (given: string[], m: Record<string, RangeContent>): Promise<OpenPlan> =>
    planOpen(
      given.map((p) => r(p)),
      disk(m),
    );

  it('all ranges given in order, or only the first: the recorded ranges', async () => {
    for (const given of [['/a', '/b', '/c'], ['/a'], ['/a', '/c']]) {
      const plan = await open(given, whole);
      expect(plan).toMatchObject({ kind: 'existing', moved: false, appends: [] });
      expect(plan.ranges.map((x) => x.path)).toEqual(['/a', '/b', '/c']);
    }
  });

  it('a range found at a new path is matched by its label, and the record is to be updated', async () => {
    const plan = await open(['/a', '/moved'], { '/a': L(sb, 0), '/moved': L(sb, 1), '/c': L(sb, 2) });
    expect(plan).toMatchObject({ kind: 'existing', moved: true });
    expect(plan.ranges.map((x) => x.path)).toEqual(['/a', '/moved', '/c']);
  });

  it('a blank range after the recorded ones is appended; all blank is a new store', async () => {
    const plan = await open(['/a', '/new'], { ...whole, '/new': blank });
    expect(plan).toMatchObject({ kind: 'existing', appends: [{ path: '/new' }] });
    expect(await open(['/n1', '/n2'], { '/n1': blank, '/n2': blank })).toMatchObject({ kind: 'new' });
  });

  const refusals: [string, string[], Record<string, RangeContent>, RegExp][] = [
    ['only a later range', ['/b'], whole, /is range 1 of store .*; give its first range \/a:0\+32768 first/],
    ['the ranges reordered', ['/a', '/c', '/b'], whole, /wrong order/],
    ['a new range before a recorded one', ['/a', '/new', '/b'], { ...whole, '/new': blank }, /wrong order/],
    ['range 0 after a blank range', ['/new', '/a'], { ...whole, '/new': blank }, /wrong order.*first --store/],
    ['a range of another store', ['/a', '/y'], { ...whole, '/y': L(other, 1) }, /belongs to another store/],
    ['a recorded range missing', ['/a'], { '/a': L(sb, 0), '/b': L(sb, 1) }, /range 2 .* is missing \(\/c: ENOENT/],
    [
      'a recorded range not carrying its label',
      ['/a'],
      { ...whole, '/c': blank },
      /range 2 .* is missing: that range holds nothing/,
    ],
    ['a recorded range with another store there', ['/a'], { ...whole, '/b': L(other, 1) }, /range 1 .* is missing/],
    ['foreign data first', ['/d'], { '/d': { kind: 'data' } }, /not blank.*nbdsnap store format/],
    ['foreign data after', ['/a', '/d'], { ...whole, '/d': { kind: 'data' } }, /not blank/],
    ['an unreadable label', ['/a'], { '/a': { kind: 'unreadable', why: 'checksum mismatch' } }, /label is unreadable/],
    ['a version-1 store', ['/a'], { '/a': { kind: 'version', version: 1 } }, /format version 1/],
    [
      'a signature',
      ['/e'],
      { '/e': { kind: 'signature', signature: { type: 'ext4', what: 'an ext2/3/4 filesystem' } } },
      /holds an ext2\/3\/4 filesystem.*--force/,
    ],
    ['a transient store first', ['/t'], { '/t': L(store('transient', r('/t')), 0) }, /holds transient store/],
  ];
  for (const [what, given, m, message] of refusals) {
    it(`refuses ${what}`, async () => {
      const err = await open(given, m).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err?.message).toMatch(message);
      expect(err?.message).not.toContain('\n');
    });
  }

  it('a range labelled as the next one of this store (a crashed append) is appended again', async () => {
    const next = { ...sb, ranges: [...sb.ranges, { path: '/d', start: 0, length: 16 * MiB, id: 'd-id' }] };
    const plan = await open(['/a', '/d'], { ...whole, '/d': L(next, 3) });
    expect(plan).toMatchObject({ kind: 'existing', appends: [{ path: '/d' }] });
    expect(checkAppend(r('/d'), L(next, 3), sb)).toBe('d-id');
    expect(checkAppend(r('/n'), blank, sb)).toBeUndefined();
    expect(() => checkAppend(r('/b'), L(sb, 1), sb)).toThrow(/already range 1/);
    expect(() => checkAppend(r('/y'), L(other, 1), sb)).toThrow(/another store/);
    expect(() => checkAppend(r('/d'), { kind: 'data' }, sb)).toThrow(/not blank/);
  });

  it('--transient takes blank and transient ranges, never a persistent one', async () => {
    const t = store('transient', r('/t'));
    expect(await planTransient([r('/t'), r('/n')], disk({ '/t': L(t, 0), '/n': blank }))).toHaveLength(2);
    await expect(planTransient([r('/a')], disk(whole))).rejects.toThrow(
      /holds persistent store .* with its snapshots; --transient would destroy them/,
    );
    await expect(planTransient([r('/n'), r('/b')], disk({ ...whole, '/n': blank }))).rejects.toThrow(/persistent/);
    await expect(planTransient([r('/d')], disk({ '/d': { kind: 'data' } }))).rejects.toThrow(/not blank/);
  });
});
