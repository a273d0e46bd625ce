/**
 * The control socket and the listings, against a real server:
 * - `status`, `snapshot list`, `store status`, `merge status` and `cbt` print no `undefined` or
 *   `NaN` (a merge scheduled with --on-next-start has no progress figures);
 * - `snapshot list` and `store status` give each snapshot the same size (shared copies, a
 *   writable snapshot's own chunks), in --json and in the tables;
 * - commands are looked up as own names only (`constructor`, `__proto__`, `toString` are
 *   unknown), every request field is checked, a malformed request is answered by id;
 * - an over-long request line closes that connection only; the server keeps answering others;
 * - SIGTERM with two `nbdsnap events` clients connected: the server exits, and both clients see
 *   their stream end (exit 0, "the server stopped").
 */
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { LineReader, type Response } from '../../src/control/protocol.ts';
import { background } from '../helpers/clients.ts';
import { CLI } from '../helpers/server.ts';
import { KiB, MiB, makeImage, makeSparse, outcome, Rig, type SnapshotInfo, tempDir } from '../helpers/snapshots.ts';
import { stampedData, stampedImage } from '../helpers/stamps.ts';

const CHUNK = 64 * KiB;
const dir = tempDir('nbdsnap-ctl-');
const rig = new Rig(dir.path, {
  devices: { disk: makeImage(join(dir.path, 'disk.img'), stampedImage(4 * MiB, 0)) },
  stores: [makeSparse(join(dir.path, 'store.img'), 32 * MiB)],
  chunkSize: '64K',
});
afterAll(async () => {
  await rig.stop('SIGKILL');
  dir.cleanup();
});

/** A control connection that sends raw lines and reads raw answers. */
class RawControl {
  readonly socket: Socket;
  readonly closed: Promise<void>;
  private readonly reader = new LineReader();
  private readonly answers: Response[] = [];
  private wake: () => void = () => undefined;

  constructor(path: string) {
    this.socket = connect({ path });
    this.socket.on('error', () => undefined);
    this.socket.on('data', (chunk: Buffer) => {
      for (const line of this.reader.push(chunk)) this.answers.push(JSON.parse(line) as Response);
      this.wake();
    });
    this.closed = new Promise((resolve) => this.socket.once('close', () => resolve()));
    void this.closed.then(() => this.wake());
  }

  /** Send one line; resolves with the next answer (undefined if the server closed first). */
  async ask(line: string): Promise<Response | undefined> {
    this.socket.write(`${line}\n`);
    return this.next();
  }

  async next(): Promise<Response | undefined> {
    while (this.answers.length === 0 && !this.socket.destroyed) {
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
    return this.answers.shift();
  }
}

const write = async (device: string, chunks: number[], seed: number) => {
  const c = await rig.open(device);
  for (const chunk of chunks) await c.write(chunk * CHUNK, stampedData(seed, chunk * CHUNK, CHUNK));
  await c.flush();
};

describe('listings and sizes', () => {
  it('snapshot list and store status agree on every snapshot size', async () => {
    await rig.start();
    await rig.createSnapshot('disk', 'a');
    await write('disk', [0, 1, 2, 3], 1);
    await rig.createSnapshot('disk', 'b');
    await write('disk', [2, 3, 4, 5], 2); // new copies of 2, 3 for b; 4, 5 read by both a and b
    await rig.createSnapshot('disk', 'w', true);
    await write('disk@w', [7], 3); // w's own chunk
    const list = await rig.list();
    const store = await rig.ctl<{ perSnapshot: { snapshot: string; bytes: number; exclusiveBytes: number }[] }>(
      'store.status',
    );
    const fromList = list.map((s: SnapshotInfo & { exclusiveChunks?: number }) => ({
      snapshot: s.export,
      bytes: s.chunksInStore * CHUNK,
      exclusiveBytes: (s.exclusiveChunks ?? -1) * CHUNK,
    }));
    expect(store.perSnapshot).toEqual(fromList);
    expect(fromList.map((s) => [s.snapshot, s.bytes / CHUNK, s.exclusiveBytes / CHUNK])).toEqual([
      ['disk@a', 6, 4],
      ['disk@b', 4, 2],
      ['disk@w', 1, 1],
    ]);
    // The tables say the same: one "IN STORE" figure per snapshot in both.
    const column = (text: string) =>
      Object.fromEntries(
        text
          .split('\n')
          .filter((l) => l.startsWith('disk@'))
          .map((l) => [l.split(/\s+/)[0], l.match(/(\d+\.\d MiB)\s+(\d+\.\d MiB)$/)?.slice(1)]),
      );
    const listed = await rig.cli(['snapshot', 'list']);
    const status = await rig.cli(['store', 'status']);
    expect(column(listed.stdout)).toEqual(column(status.stdout));
    expect(column(listed.stdout)['disk@a']).toEqual(['0.4 MiB', '0.3 MiB']);
  });

  it('no listing prints undefined or NaN, a scheduled merge included', async () => {
    const scheduled = await rig.cli(['merge', 'disk@a', '--on-next-start']);
    expect(scheduled.code, scheduled.stderr).toBe(0);
    const commands = [
      ['status'],
      ['snapshot', 'list'],
      ['store', 'status'],
      ['merge', 'status'],
      ['cbt', 'disk@a'],
      ['cbt', 'disk@a', 'disk@b'],
    ];
    const outputs = await Promise.all(commands.map((c) => rig.cli(c)));
    for (const [i, r] of outputs.entries()) {
      expect(r.code, `${commands[i]?.join(' ')}: ${r.stderr}`).toBe(0);
      expect(r.stdout, commands[i]?.join(' ')).not.toMatch(/undefined|NaN|null/);
    }
    expect(outputs[0]?.stdout).toContain('merge disk@a: scheduled for next start\n');
    expect(outputs[3]?.stdout.trim()).toBe('disk@a: scheduled for next start');
  });
});

describe('control requests', () => {
  it('knows its own commands only', async () => {
    for (const cmd of ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf', '']) {
      const err = await rig.ctl(cmd).then(
        () => 'answered',
        (e: { code: string; message: string }) => `${e.code}: ${e.message}`,
      );
      expect(err, cmd).toBe(
        cmd === ''
          ? 'BAD_ARGUMENT: bad request: "cmd" must be a command name'
          : `BAD_ARGUMENT: unknown command "${cmd}"`,
      );
    }
  });

  it('checks every argument', async () => {
    const cases: [string, Record<string, unknown>, string][] = [
      ['snapshot.create', { devices: 'disk', name: 's' }, '"devices" must be a non-empty list'],
      ['snapshot.create', { devices: [], name: 's' }, '"devices" must be a non-empty list'],
      ['snapshot.create', { devices: [1], name: 's' }, '"devices" must be a non-empty string'],
      ['snapshot.create', { devices: ['disk'], name: 5 }, '"name" must be a non-empty string'],
      ['snapshot.create', { devices: ['disk'], name: 's', writable: 'yes' }, '"writable" must be true or false'],
      ['snapshot.create', { devices: ['disk'], name: 'x'.repeat(5000) }, '"name" is longer than 4096 bytes'],
      [
        'snapshot.delete',
        { device: 'disk', name: 'a', force: true },
        'snapshot.delete: unknown argument "force" (snapshot.delete takes device, name)',
      ],
      ['status', { verbose: true }, 'status: unknown argument "verbose" (status takes no arguments)'],
      ['merge.start', { device: 'disk', name: 'b', onNextStart: 'true' }, '"onNextStart" must be true or false'],
      ['cbt.markDirty', { device: 'disk', offset: -1, length: 1 }, '"offset" must be an integer of at least 0'],
      ['cbt.markDirty', { device: 'disk', offset: 1.5, length: 1 }, '"offset" must be an integer of at least 0'],
      ['cbt.markDirty', { device: 'disk', offset: 0, length: 0 }, '"length" must be an integer of at least 1'],
      ['cbt.markDirty', { device: 'disk', offset: '0', length: 1 }, '"offset" must be an integer of at least 0'],
      ['store.append', { range: ['x'] }, '"range" must be a non-empty string'],
    ];
    for (const [cmd, args, message] of cases) {
      const err = await rig.ctl(cmd, args).then(
        () => 'answered',
        (e: { code: string; message: string }) => `${e.code}: ${e.message}`,
      );
      expect(err, `${cmd} ${JSON.stringify(args).slice(0, 80)}`).toBe(`BAD_ARGUMENT: ${message}`);
    }
    // Nothing changed.
    expect((await rig.list()).map((s) => s.name)).toEqual(['a', 'b', 'w']);
  });

  it('answers a malformed request by its id when it has one', async () => {
    const raw = new RawControl(rig.control);
    const bad = (id: number, message: string) => ({ id, ok: false, error: { code: 'BAD_ARGUMENT', message } });
    expect(await raw.ask('not json')).toEqual(bad(0, 'bad request: not a JSON object'));
    expect(await raw.ask('[1, 2]')).toEqual(bad(0, 'bad request: not a JSON object'));
    expect(await raw.ask('{"id": "1", "cmd": "status"}')).toEqual(
      bad(0, 'bad request: "id" must be a non-negative integer'),
    );
    expect(await raw.ask('{"id": 7, "cmd": "status", "args": [1]}')).toEqual(
      bad(7, 'bad request: "args" of status must be an object'),
    );
    expect(await raw.ask('{"id": 8}')).toEqual(bad(8, 'bad request: "cmd" must be a command name'));
    const ok = await raw.ask('{"id": 9, "cmd": "snapshot.list"}');
    expect(ok).toMatchObject({ id: 9, ok: true });
    raw.socket.destroy();
  });

  it('answers every request of a pipelined burst, by id', async () => {
    const raw = new RawControl(rig.control);
    const n = 200;
    const burst = Array.from({ length: n }, (_, i) => `{"id": ${i + 1}, "cmd": "snapshot.list"}\n`).join('');
    raw.socket.write(burst);
    const ids: number[] = [];
    for (let i = 0; i < n; i++) {
      const r = await raw.next();
      expect(r).toMatchObject({ ok: true });
      ids.push(r?.id ?? -1);
    }
    expect(ids.sort((a, b) => a - b)).toEqual(Array.from({ length: n }, (_, i) => i + 1));
    raw.socket.destroy();
  });

  it('closes the connection of an over-long line, and only that one', async () => {
    const other = new RawControl(rig.control);
    expect(await other.ask('{"id": 1, "cmd": "status"}')).toMatchObject({ id: 1, ok: true });
    const flood = new RawControl(rig.control);
    const piece = Buffer.alloc(64 * KiB, 'x');
    let sent = 0;
    let closed = false;
    void flood.closed.then(() => {
      closed = true;
    });
    // A line with no end: the server must cut it off, not keep it (stop trying at 256 MiB).
    while (!closed && sent < 256 * MiB) {
      if (!flood.socket.write(piece)) {
        await Promise.race([new Promise((r) => flood.socket.once('drain', r)), flood.closed]);
      }
      sent += piece.length;
    }
    await flood.closed;
    expect(sent).toBeLessThan(256 * MiB);
    // The other connection, and new ones, are still answered.
    expect(await other.ask('{"id": 2, "cmd": "snapshot.list"}')).toMatchObject({ id: 2, ok: true });
    expect(await outcome(rig.ctl('status'))).toBe('ok');
    other.socket.destroy();
  });
});

describe('stopping', () => {
  it('SIGTERM ends the event streams of two `nbdsnap events` clients and exits', async () => {
    const clients = [0, 1].map(() => background(process.execPath, [CLI, 'events', '--control', rig.control]));
    // Both connected: each has seen a snapshot created after it started.
    for (let i = 0; !clients.every((c) => c.output().includes(`disk@probe-${i - 1}"`)); i++) {
      await rig.createSnapshot('disk', `probe-${i}`);
      await rig.deleteSnapshot('disk', `probe-${i}`);
      await sleep(100);
    }
    expect(await rig.stop('SIGTERM')).toBe(0);
    for (const c of clients) {
      expect(await c.exited, c.output()).toBe(0);
      expect(c.output()).toContain('nbdsnap: events: the server stopped\n');
    }
  });
});
