/**
 * Fault injection on the durability path, with a real failing layer under the store: nbdkit
 * serves the store file, nbdfuse exposes that export as a regular file, and the file is given as
 * `--store`. While a snapshot is held, the layer is made to fail (writes and flushes, or flushes
 * only); an origin write that needs a copy must then fail, and so must later ones. After a stop
 * (SIGKILL, or SIGTERM) the layer is healed and the server restarted on the same store: the
 * snapshot must be listed invalid or read exactly as its point in time, and every origin chunk
 * must hold its old content or the content a client attempted (no other bytes).
 *
 * The layer: `nbdkit --filter=error eval ...`. The error filter fails pwrite, zero and trim while
 * the file WRITE_TRIGGER exists (error-*-file). nbdkit 1.32's error filter cannot fail a flush,
 * so the eval plugin's own flush fails while FLUSH_TRIGGER exists; its pread and pwrite are `dd`
 * on the store file (nbdsnap's fdatasync reaches nbdkit's flush through nbdfuse's fsync).
 *
 * Skipped with the reason when FUSE cannot be mounted here; under CI=true that is a failure.
 */
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call } from '../../src/control/client.ts';
import { type Background, background, hasTool, pattern, readAt, run, waitForFile } from '../helpers/clients.ts';
import {
  describeReading,
  isExact,
  listSnapshots,
  readExports,
  type Served,
  tryServe,
  unixUri,
  writeExport,
} from '../helpers/damage.ts';
import { type FuseDisk, nbdfuse } from '../helpers/mounts.ts';
import { MiB, tempDir } from '../helpers/snapshots.ts';

const SIZE = 8 * MiB;
const STORE_SIZE = 16 * MiB;
const CHUNK = 4096;
const OLD_SEED = 4242;
/**
 * Written before the fault (must succeed), and during it (each needs a copy: must fail). Change
 * tracking is on (64 KiB blocks): chunks 11 and 12 are in the block chunk 10 already marked in
 * this era, so their writes need a copy and no tracking record; chunk 40 needs both.
 */
const BEFORE = [10];
const DURING = [11, 12, 40];
const newContent = (chunk: number) => pattern(CHUNK, 1000 + chunk);

interface Layer {
  store: string;
  writeTrigger: string;
  flushTrigger: string;
  close(): Promise<void>;
}

/** nbdkit (error filter over the eval plugin) on `dir/layer.img`, mounted with nbdfuse. */
async function failingLayer(dir: string): Promise<Layer> {
  const image = join(dir, 'layer.img');
  writeFileSync(image, '');
  await run('truncate', ['-s', String(STORE_SIZE), image]);
  const writeTrigger = join(dir, 'write-trigger');
  const flushTrigger = join(dir, 'flush-trigger');
  const sock = join(dir, 'nbdkit.sock');
  const pid = join(dir, 'nbdkit.pid');
  const nbdkit: Background = background('nbdkit', [
    '-f',
    '-U',
    sock,
    '-P',
    pid,
    '--filter=error',
    'eval',
    `get_size=echo ${STORE_SIZE}`,
    `pread=exec dd if=${image} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none`,
    `pwrite=exec dd of=${image} seek=$4 oflag=seek_bytes conv=notrunc status=none`,
    'can_write=exit 0',
    'can_flush=exit 0',
    `flush=if [ -e ${flushTrigger} ]; then echo "EIO injected flush failure" >&2; exit 1; fi; exec sync ${image}`,
    'error=EIO',
    'error-pwrite-rate=100%',
    `error-pwrite-file=${writeTrigger}`,
    'error-zero-rate=100%',
    `error-zero-file=${writeTrigger}`,
    'error-trim-rate=100%',
    `error-trim-file=${writeTrigger}`,
  ]);
  let fuse: FuseDisk | undefined;
  try {
    await waitForFile(pid, nbdkit, 20_000);
    fuse = await nbdfuse(`nbd+unix:///?socket=${sock}`, join(dir, 'mnt'));
  } catch (err) {
    nbdkit.kill('SIGKILL');
    await nbdkit.exited;
    throw err;
  }
  const disk = fuse;
  return {
    store: disk.file,
    writeTrigger,
    flushTrigger,
    async close() {
      await disk.unmount();
      nbdkit.kill('SIGTERM');
      await nbdkit.exited;
    },
  };
}

/** Why FUSE cannot be used here, or undefined when it can. */
function fuseMissing(): string | undefined {
  for (const tool of ['nbdkit', 'nbdfuse', 'fusermount3']) if (!hasTool(tool)) return `${tool} is not installed`;
  if (!existsSync('/dev/fuse')) return '/dev/fuse does not exist';
  return undefined;
}

/** Each chunk's new content written in turn: chunk -> 'ok' or the error the client saw. */
async function writeChunks(socket: string, chunks: number[]): Promise<Record<string, string>> {
  const r = await writeExport(
    socket,
    'disk',
    chunks.map((c) => ({ offset: c * CHUNK, data: newContent(c) })),
  );
  return Object.fromEntries(chunks.map((c, i) => [String(c), r[i] as string]));
}

const FAULTS = [
  { name: 'store writes and flushes fail, then a crash', triggers: ['write', 'flush'], stop: 'SIGKILL' },
  { name: 'store writes and flushes fail, then a graceful stop', triggers: ['write', 'flush'], stop: 'SIGTERM' },
  { name: 'only store flushes fail, then a crash', triggers: ['flush'], stop: 'SIGKILL' },
  { name: 'only store flushes fail, then a graceful stop', triggers: ['flush'], stop: 'SIGTERM' },
] as const;

describe('a failing layer under the store (nbdkit error filter + nbdfuse)', () => {
  const missing = fuseMissing();
  const dir = tempDir('nbdsnap-fault-');
  afterAll(() => dir.cleanup());

  beforeAll(() => {
    if (missing !== undefined && process.env.CI === 'true') throw new Error(`FUSE is needed under CI: ${missing}`);
  });

  it.for(FAULTS)(
    '$name: the write fails, and the snapshot is invalid or exact',
    { timeout: 180_000 },
    async ({ name, triggers, stop }, ctx) => {
      if (missing !== undefined) {
        ctx.skip(`no FUSE here: ${missing}`);
        return;
      }
      const d = join(dir.path, name.replace(/[^a-z]+/g, '-'));
      await run('mkdir', ['-p', d]);
      let layer: Layer;
      try {
        layer = await failingLayer(d);
      } catch (err) {
        if (process.env.CI === 'true') throw err;
        ctx.skip(`nbdfuse could not be mounted: ${(err as Error).message.split('\n')[0]}`);
        return;
      }
      let srv: Served | undefined;
      try {
        const origin = join(d, 'disk.img');
        const old = pattern(SIZE, OLD_SEED);
        writeFileSync(origin, old);
        const oldImage = join(d, 'expect.snap');
        writeFileSync(oldImage, old);
        const socket = join(d, 'nbd.sock');
        const ctl = join(d, 'ctl.sock');
        const args = [
          `disk=${origin}`,
          '--store',
          layer.store,
          '--chunk-size',
          '4K',
          '--control',
          ctl,
          '-k',
          socket,
          '--log-level',
          'warn',
        ];
        const start = async (what: string) => {
          rmSync(socket, { force: true });
          rmSync(ctl, { force: true });
          const a = await tryServe(args, join(d, 'pid'));
          if (a.kind === 'exited')
            throw new Error(`${what}: the server refused to start (exit ${a.exit}): ${a.firstLine}`);
          if (a.kind === 'hung')
            throw new Error(`${what}: the server was not ready after 60 s: ${a.stderr.slice(-500)}`);
          return a.server;
        };

        srv = await start('first start');
        await listSnapshots(ctl); // the control socket answers
        await call(ctl, 'snapshot.create', { devices: ['disk'], name: 'held', writable: false });
        const before = await writeChunks(socket, BEFORE);
        expect(before, 'writes before the fault (the store works)').toEqual(
          Object.fromEntries(BEFORE.map((c) => [String(c), 'ok'])),
        );

        // Every finding is collected, so one run shows all that went wrong.
        const problems: string[] = [];
        for (const t of triggers) writeFileSync(t === 'write' ? layer.writeTrigger : layer.flushTrigger, '');
        const during = await writeChunks(socket, DURING);
        for (const [c, r] of Object.entries(during)) {
          if (r === 'ok')
            problems.push(`the write of chunk ${c} needed a copy and was ACKNOWLEDGED while the store failed`);
        }

        // While still running: nothing listed valid reads wrong (a read may fail).
        let whileFailing = 'the server had exited';
        if (srv.exited() === undefined) {
          const listed = await listSnapshots(ctl).catch((err: Error) => err.message);
          const entry = typeof listed === 'string' ? undefined : listed.find((s) => s.export === 'disk@held');
          whileFailing = typeof listed === 'string' ? listed : `disk@held ${entry?.state}`;
          if (entry?.state === 'valid') {
            const [r] = await readExports([{ uri: unixUri(socket, 'disk@held'), expected: oldImage }], CHUNK);
            if (r === undefined || r.wrong.length > 0 || r.connectError !== undefined) {
              problems.push(`disk@held is listed valid during the fault and reads: ${r && describeReading(r)}`);
            }
          }
        }

        const stopped = await srv.stop(stop);
        srv = undefined;
        if (stopped.killed) problems.push(`the server did not stop within 20 s of ${stop}`);
        rmSync(layer.writeTrigger, { force: true });
        rmSync(layer.flushTrigger, { force: true });

        srv = await start('restart after the fault');
        const listed = await listSnapshots(ctl);
        const entry = listed.find((s) => s.export === 'disk@held');
        if (entry === undefined) problems.push(`disk@held is not listed after the restart: ${JSON.stringify(listed)}`);

        // The origin: chunks written before hold the new content; chunks whose write failed hold
        // the old or the attempted content; every other byte is unchanged.
        const got = join(d, 'origin.read');
        const copy = await run('nbdcopy', [unixUri(socket, 'disk'), got]);
        if (copy.code !== 0) problems.push(`nbdcopy could not read the origin: ${copy.stderr.trim()}`);
        else {
          const data = readAt(got, 0, SIZE);
          for (let c = 0; c < SIZE / CHUNK; c++) {
            const now = data.subarray(c * CHUNK, (c + 1) * CHUNK);
            const was = old.subarray(c * CHUNK, (c + 1) * CHUNK);
            const ok = BEFORE.includes(c)
              ? now.equals(newContent(c))
              : DURING.includes(c)
                ? now.equals(was) || now.equals(newContent(c))
                : now.equals(was);
            if (!ok) problems.push(`origin chunk ${c} holds neither its old nor its attempted content`);
          }
        }

        if (entry?.state === 'valid') {
          const [r] = await readExports([{ uri: unixUri(socket, 'disk@held'), expected: oldImage }], CHUNK);
          if (r === undefined || !isExact(r, SIZE)) {
            problems.push(`disk@held is listed VALID after the restart but reads: ${r && describeReading(r)}`);
          }
        } else if (entry !== undefined && entry.state !== 'invalid') {
          problems.push(`disk@held is listed "${entry.state}" after the restart`);
        }
        console.log(
          `fault "${name}": writes during the fault ${JSON.stringify(during)}; while failing: ${whileFailing}; ` +
            `after restart disk@held is ${entry?.state}${entry?.reason ? ` (${entry.reason})` : ''}`,
        );
        if (problems.length > 0) expect.fail(`fault "${name}":\n  ${problems.join('\n  ')}`);
      } finally {
        await srv?.stop('SIGKILL');
        await layer.close();
      }
    },
  );
});
