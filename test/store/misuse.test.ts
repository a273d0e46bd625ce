/**
 * Operator mistakes, made the way a new user makes them, end to end (real `nbdsnap serve`
 * processes, real clients). Each must be refused at start with a clear line, touch nothing, and
 * leave every persistent snapshot exact for the next correct start:
 * - a store of two ranges restarted with only the second range (and, kept working: with only
 *   the first, which finds the second from its own record);
 * - `--transient` on a persistent store, used as the issue's user did (a snapshot taken and the
 *   origin written in that run, if it starts at all);
 * - an ext4 image and a file of random data given as `--store`;
 * - a store whose two superblock magics are damaged, and one whose first 128 KiB are zeroed:
 *   refused, never reformatted.
 * Findings are collected so that one run shows everything a case got wrong.
 */
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { call } from '../../src/control/client.ts';
import { hasTool, pattern, run, sha256, writeAt } from '../helpers/clients.ts';
import {
  describeReading,
  flipByte,
  isExact,
  listSnapshots,
  readExports,
  type Served,
  tryServe,
  unixUri,
  writeExport,
} from '../helpers/damage.ts';
import { KiB, MiB, makeSparse, tempDir } from '../helpers/snapshots.ts';

const SIZE = 4 * MiB;
const CHUNK = 4 * KiB;
const dir = tempDir('nbdsnap-misuse-');
afterAll(() => dir.cleanup());

/** One origin with its expected images, served with whatever store arguments a case gives. */
class Setup {
  readonly origin: string;
  readonly socket: string;
  readonly control: string;
  private readonly pidFile: string;
  /** Expected image files of each snapshot taken, by name. */
  readonly images = new Map<string, string>();
  readonly problems: string[] = [];
  server: Served | undefined;

  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
    mkdirSync(dir);
    this.origin = join(dir, 'disk.img');
    writeFileSync(this.origin, pattern(SIZE, 99));
    this.socket = join(dir, 'nbd.sock');
    this.control = join(dir, 'ctl.sock');
    this.pidFile = join(dir, 'pid');
  }

  private args(store: string[]): string[] {
    return [
      `disk=${this.origin}`,
      ...store,
      '--chunk-size',
      '4K',
      '--control',
      this.control,
      '-k',
      this.socket,
      '--log-level',
      'warn',
    ];
  }

  /** Start, or fail the test: this start must work. */
  async start(store: string[], what: string): Promise<Served> {
    rmSync(this.socket, { force: true });
    rmSync(this.control, { force: true });
    const a = await tryServe(this.args(store), this.pidFile);
    if (a.kind !== 'ready') {
      throw new Error(
        `${what}: the server did not start (${a.kind === 'exited' ? a.firstLine : 'hung'})\n${this.report()}`,
      );
    }
    this.server = a.server;
    return a.server;
  }

  /** A start: the refusal line (non-zero exit before ready), or the running server. */
  async attempt(store: string[], what: string): Promise<string | Served> {
    rmSync(this.socket, { force: true });
    rmSync(this.control, { force: true });
    const a = await tryServe(this.args(store), this.pidFile);
    if (a.kind === 'ready') {
      this.server = a.server;
      return a.server;
    }
    if (a.kind === 'hung') {
      this.problems.push(`${what}: the server neither refused nor started within 60 s`);
      return 'hung';
    }
    if (a.exit === 0) this.problems.push(`${what}: the server exited 0 before it was ready: ${a.firstLine}`);
    return a.firstLine;
  }

  /** A start that must be refused: the refusal line, or the running server and a problem recorded. */
  async startRefused(store: string[], what: string): Promise<string | Served> {
    const r = await this.attempt(store, what);
    if (typeof r !== 'string') this.problems.push(`${what}: the server STARTED; it must refuse`);
    return r;
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (s !== undefined) await s.stop(signal);
  }

  /** Take snapshot `name`; its expected image is the origin file as it is now (nothing in flight). */
  async snapshot(name: string): Promise<void> {
    await call(this.control, 'snapshot.create', { devices: ['disk'], name, writable: false });
    const image = join(this.dir, `expect.${name}`);
    copyFileSync(this.origin, image);
    this.images.set(name, image);
  }

  /** Write new content to `count` chunks from `first` (each needs a copy for a fresh snapshot). */
  async write(first: number, count: number, seed: number): Promise<void> {
    const writes = Array.from({ length: count }, (_, i) => ({
      offset: (first + i) * CHUNK,
      data: pattern(CHUNK, seed * 100_000 + i + 1),
    }));
    // One nbdsh session per 64 writes keeps the script small.
    for (let at = 0; at < writes.length; at += 64) {
      const r = await writeExport(this.socket, 'disk', writes.slice(at, at + 64));
      const bad = r.filter((x) => x !== 'ok');
      if (bad.length > 0) throw new Error(`origin writes failed: ${bad[0]}`);
    }
  }

  /** Every snapshot taken is listed valid and reads exactly (records problems otherwise). */
  async checkSnapshots(what: string): Promise<void> {
    const listed = await listSnapshots(this.control);
    const items = [...this.images].map(([name, image]) => ({
      uri: unixUri(this.socket, `disk@${name}`),
      expected: image,
    }));
    const readings = await readExports(items, CHUNK);
    [...this.images.keys()].forEach((name, i) => {
      const entry = listed.find((s) => s.export === `disk@${name}`);
      const r = readings[i];
      if (entry === undefined) this.problems.push(`${what}: disk@${name} is GONE from the list`);
      else if (entry.state !== 'valid') this.problems.push(`${what}: disk@${name} is ${entry.state} (${entry.reason})`);
      else if (r === undefined || !isExact(r, SIZE)) {
        this.problems.push(`${what}: disk@${name} is listed valid but reads: ${r && describeReading(r)}`);
      }
    });
  }

  report(): string {
    return this.problems.map((p) => `  ${p}`).join('\n');
  }

  /** Fail the test with every finding. */
  done(): void {
    if (this.problems.length > 0) expect.fail(`${this.problems.length} problems:\n${this.report()}`);
  }
}

/** A store of one file of `size` bytes, refused as given, and left byte-identical. */
async function expectRefusedUntouched(s: Setup, file: string, what: string): Promise<string> {
  const before = sha256(file);
  const r = await s.startRefused(['--store', file], what);
  await s.stop();
  if (sha256(file) !== before) s.problems.push(`${what}: ${file} was CHANGED (hash differs)`);
  return typeof r === 'string' ? r : 'started';
}

describe('operator mistakes at start', () => {
  it('a two-range store restarted with only its second range is refused; with both, the snapshot is exact', async () => {
    const s = new Setup(join(dir.path, 'two-ranges'));
    // Range 0 is small, so the copies spill into range 1.
    const r0 = makeSparse(join(s.dir, 'store0.img'), 512 * KiB);
    const r1 = makeSparse(join(s.dir, 'store1.img'), 8 * MiB);
    const both = ['--store', r0, '--store', r1];
    try {
      await s.start(both, 'first start');
      await s.snapshot('old');
      await s.write(0, 300, 1); // 1.2 MiB of copies: more than range 0 holds
      await s.checkSnapshots('before any restart');
      await s.stop();

      const r1Before = sha256(r1);
      const refused = await s.startRefused(['--store', r1], 'restart with only the second range');
      if (typeof refused !== 'string') await s.stop();
      else if (sha256(r1) !== r1Before) s.problems.push('the refused start changed the second range');
      console.log(
        `two ranges, only the second given: ${typeof refused === 'string' ? `refused: ${refused}` : 'STARTED'}`,
      );

      await s.start(both, 'restart with both ranges');
      await s.checkSnapshots('restart with both ranges after the mistake');
      await s.stop();

      // Documented: given only the first range, the server finds the second from its record.
      await s.start(['--store', r0], 'restart with only the first range');
      await s.checkSnapshots('restart with only the first range');
    } finally {
      await s.stop('SIGKILL');
    }
    s.done();
  });

  it('--transient on a persistent store is refused, and the persistent snapshots stay exact', async () => {
    const s = new Setup(join(dir.path, 'transient'));
    const store = makeSparse(join(s.dir, 'store.img'), 16 * MiB);
    try {
      await s.start(['--store', store], 'first start');
      await s.snapshot('p1');
      await s.write(0, 64, 1);
      await s.snapshot('p2');
      await s.write(32, 64, 2);
      await s.checkSnapshots('before the mistake');
      await s.stop();

      const storeBefore = sha256(store);
      const refused = await s.startRefused(['--store', store, '--transient'], '--transient on a persistent store');
      if (typeof refused !== 'string') {
        // What the issue's user did in that run: a snapshot, and origin writes.
        await call(s.control, 'snapshot.create', { devices: ['disk'], name: 't1', writable: false });
        const r = await writeExport(s.socket, 'disk', [{ offset: 0, data: pattern(64 * CHUNK, 7) }]);
        await s.stop();
        console.log(`--transient on a persistent store: STARTED (the write: ${r[0]})`);
        // The origin now differs from every persistent snapshot: only a refusal keeps them exact.
      } else {
        if (sha256(store) !== storeBefore) s.problems.push('the refused --transient start changed the store');
        console.log(`--transient on a persistent store: refused: ${refused}`);
      }

      const again = await s.attempt(['--store', store], 'the next normal start');
      if (typeof again === 'string') s.problems.push(`the next normal start was refused: ${again}`);
      else await s.checkSnapshots('the next normal start');
    } finally {
      await s.stop('SIGKILL');
    }
    s.done();
  });

  it.skipIf(!hasTool('mkfs.ext4'))(
    'an ext4 image and a file of random data given as --store are refused and untouched',
    async () => {
      const s = new Setup(join(dir.path, 'foreign'));
      const ext4 = join(s.dir, 'ext4.img');
      makeSparse(ext4, 16 * MiB);
      const mkfs = await run('mkfs.ext4', ['-q', '-F', ext4]);
      expect(mkfs.code, mkfs.stderr).toBe(0);
      const random = join(s.dir, 'random.img');
      writeFileSync(random, pattern(16 * MiB, 31337));
      try {
        const a = await expectRefusedUntouched(s, ext4, 'an ext4 image as --store');
        const b = await expectRefusedUntouched(s, random, 'a file of random data as --store');
        console.log(`ext4 image: ${a}\nrandom data: ${b}`);
      } finally {
        await s.stop('SIGKILL');
      }
      s.done();
    },
  );

  for (const damage of ['both superblock magics flipped', 'the first 128 KiB zeroed'] as const) {
    it(`a store with ${damage} is refused, never reformatted`, async () => {
      const s = new Setup(join(dir.path, damage.replace(/[^a-zA-Z0-9]+/g, '-')));
      const store = makeSparse(join(s.dir, 'store.img'), 16 * MiB);
      try {
        await s.start(['--store', store], 'first start');
        await s.snapshot('kept');
        await s.write(100, 64, 3);
        await s.stop();
        const good = join(s.dir, 'store.good');
        copyFileSync(store, good);

        if (damage === 'the first 128 KiB zeroed') writeAt(store, 0, Buffer.alloc(128 * KiB));
        else for (const at of [0, 64 * KiB]) for (let i = 0; i < 4; i++) flipByte(store, at + i);
        const r = await expectRefusedUntouched(s, store, `a store with ${damage}`);
        console.log(`${damage}: ${r}`);

        // The refusal lost nothing: with the damage undone, the snapshot is exact.
        copyFileSync(good, store);
        await s.start(['--store', store], 'start on the repaired store');
        await s.checkSnapshots('the repaired store');
      } finally {
        await s.stop('SIGKILL');
      }
      s.done();
    });
  }
});
