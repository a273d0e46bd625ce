/**
 * How `nbdsnap serve` stops (src/cli/shutdown.ts), with real server processes and real clients:
 * - a client that reads nothing and one stalled in the middle of a WRITE payload do not hold the
 *   stop: the server disconnects them after the grace, writes the clean mark and exits 0;
 * - a stop waiting on a remote origin that stopped answering (its server SIGSTOPped) ends at
 *   --shutdown-timeout without the clean mark, and the next start replays the journal and serves
 *   the acknowledged data (the old code waited for the remote forever);
 * - a second SIGTERM ends a stop with no timeout at once;
 * - SIGTERM during a merge stops the merge (not failed, no I/O on closed descriptors) and the
 *   next start finishes it.
 * The only time bound is the generous one that proves the process ends at all.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { Command } from '../../src/nbd-protocol/index.ts';
import { hasTool, pattern, run, sameBytes } from '../helpers/clients.ts';
import { changeChunks, mergeStatus, waitMergeDone } from '../helpers/merge.ts';
import { RawClient } from '../helpers/raw-client.ts';
import { CLI, type RunningServer, startServer, tempDir } from '../helpers/server.ts';
import { assertSame, KiB, makeImage, makeSparse, Rig } from '../helpers/snapshots.ts';
import { stampedImage } from '../helpers/stamps.ts';
import { startPeer } from '../remote/peers.ts';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
/** Not a timing threshold: only proves that the process ends at all. */
const ENDS_WITHIN_MS = 60_000;
const dir = tempDir('nbdsnap-shutdown-');
afterAll(() => dir.cleanup());

/** The exit code or signal of `srv` after `signal`, or 'still running' after ENDS_WITHIN_MS. */
async function stopWithin(srv: RunningServer, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | string> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<string>((r) => {
    timer = setTimeout(() => r('still running'), ENDS_WITHIN_MS);
  });
  const outcome = await Promise.race([srv.stop(signal), bound]);
  clearTimeout(timer);
  return outcome;
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 600 && !cond(); i++) await sleep(100);
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

async function storeFile(name: string): Promise<string> {
  const path = join(dir.path, name);
  await run('truncate', ['-s', String(SIZE), path]);
  const r = await run(process.execPath, [CLI, 'store', 'format', path]);
  if (r.code !== 0) throw new Error(r.stderr);
  return path;
}

async function journalEnd(store: string): Promise<string> {
  const r = await run(process.execPath, [CLI, 'store', 'check', store]);
  return /^journal: .*$/m.exec(r.stdout)?.[0] ?? r.stdout + r.stderr;
}

describe('SIGTERM', () => {
  it('disconnects a client that reads nothing and one stalled mid-payload, then stops cleanly', async () => {
    const image = join(dir.path, 'deaf.img');
    await run('truncate', ['-s', String(SIZE), image]);
    const store = await storeFile('deaf-store.img');
    const srv = await startServer([`disk=${image}`, '--store', store]);
    onTestFinished(() => void srv.child.kill('SIGKILL'));
    const good = await RawClient.open(srv.port, 'disk');
    const data = pattern(MiB, 3);
    expect((await good.request(Command.WRITE, { offset: 0, data })).error).toBe(0);
    // Reads nothing: four 16 MiB replies pile up in the socket.
    const deaf = await RawClient.open(srv.port, 'disk');
    deaf.socket.pause();
    for (let i = 0; i < 4; i++) deaf.sendRequest(Command.READ, { offset: i * 16 * MiB, length: 16 * MiB });
    // Sends the header of a 16 MiB WRITE and half its payload, then nothing.
    const stalled = await RawClient.open(srv.port, 'disk');
    stalled.sendRequest(Command.WRITE, { offset: 0, length: 16 * MiB, data: Buffer.alloc(0) });
    await stalled.send(Buffer.alloc(8 * MiB, 1));
    onTestFinished(() => {
      for (const c of [good, deaf, stalled]) c.socket.destroy();
    });
    expect(await stopWithin(srv)).toBe(0);
    expect(srv.stderr()).toContain('disconnecting clients still connected after the shutdown grace');
    expect(srv.stderr()).toContain('"msg":"stopped"');
    expect(await journalEnd(store)).toContain('ended clean');
  }, 120_000);

  it('ends a stop that waits on a remote origin that stopped answering, without the clean mark', async () => {
    if (!hasTool('nbdkit')) return;
    const peer = await startPeer('nbdkit-memory', dir.path, '', SIZE);
    onTestFinished(() => {
      peer.proc.kill('SIGCONT');
      peer.proc.kill('SIGKILL');
    });
    const store = await storeFile('remote-store.img');
    const args = [`disk=${peer.uri}`, '--store', store, '--shutdown-timeout', '6', '--remote-timeout', '3600'];
    const srv = await startServer(args);
    onTestFinished(() => void srv.child.kill('SIGKILL'));
    const c = await RawClient.open(srv.port, 'disk');
    const data = pattern(MiB, 5);
    expect((await c.request(Command.WRITE, { offset: 2 * MiB, data })).error).toBe(0);
    // The remote stops answering (its sockets stay open): every flush and close waits on it.
    peer.proc.kill('SIGSTOP');
    const outcome = await stopWithin(srv);
    c.socket.destroy();
    expect(outcome).toBe('SIGTERM');
    expect(srv.stderr()).toMatch(/"cleanMark":"not written[^"]*","msg":"shutdown not done after 6 s: stopping now"/);
    expect(await journalEnd(store)).not.toContain('ended clean');
    // The remote comes back: the next start replays the journal and serves what was acknowledged.
    peer.proc.kill('SIGCONT');
    const again = await startServer(args);
    onTestFinished(() => void again.child.kill('SIGKILL'));
    const r = await RawClient.open(again.port, 'disk');
    const read = await r.request(Command.READ, { offset: 2 * MiB, length: MiB });
    expect(sameBytes(read.data ?? Buffer.alloc(0), data)).toBe('equal');
    r.socket.destroy();
    expect(await stopWithin(again)).toBe(0);
    expect(await journalEnd(store)).toContain('ended clean');
  }, 180_000);

  it('a second SIGTERM ends a stop with no time limit at once', async () => {
    if (!hasTool('nbdkit')) return;
    const peer = await startPeer('nbdkit-memory', dir.path, '', SIZE);
    onTestFinished(() => {
      peer.proc.kill('SIGCONT');
      peer.proc.kill('SIGKILL');
    });
    const store = await storeFile('second-store.img');
    const srv = await startServer([
      `disk=${peer.uri}`,
      '--store',
      store,
      '--shutdown-timeout',
      '0',
      '--remote-timeout',
      '3600',
    ]);
    onTestFinished(() => void srv.child.kill('SIGKILL'));
    peer.proc.kill('SIGSTOP');
    srv.child.kill('SIGTERM');
    await until(() => srv.stderr().includes('"msg":"shutdown waiting"'), 'the stop to wait');
    expect(await stopWithin(srv, 'SIGTERM')).toBe('SIGTERM');
    expect(srv.stderr()).toContain('second SIGTERM during the shutdown: stopping now');
    expect(srv.stderr()).not.toContain('"msg":"stopped"');
  }, 180_000);

  it('stops a merge (not failed, no I/O on closed files) and the next start finishes it', async () => {
    const sub = join(dir.path, 'merge');
    mkdirSync(sub);
    const origin = stampedImage(16 * MiB, 0);
    const store = makeSparse(join(sub, 'store.img'), 64 * MiB);
    const rig = new Rig(sub, {
      devices: { disk: makeImage(join(sub, 'disk.img'), origin) },
      stores: [store],
      chunkSize: '64K',
      extra: ['--merge-speed', '1M'],
    });
    onTestFinished(() => void rig.server?.child.kill('SIGKILL'));
    await rig.start();
    const c = await rig.open('disk');
    await rig.createSnapshot('disk', 'm');
    const snap = Buffer.from(origin);
    await changeChunks(c, origin, { chunkSize: 64 * KiB, fraction: 0.6, seed: 31, firstSeq: 1 });
    await rig.closeClients();
    await rig.ctl('merge.start', { device: 'disk', name: 'm' });
    const srv = rig.server as RunningServer;
    rig.server = undefined;
    expect(await stopWithin(srv)).toBe(0);
    expect(srv.stderr()).not.toContain('merge-failed');
    expect(srv.stderr()).not.toContain('bad file descriptor');
    expect(await journalEnd(store)).toContain('ended clean');
    const again = await rig.start();
    expect((await mergeStatus(rig))[0]).toMatchObject({ snapshot: 'disk@m', state: 'merging' });
    await rig.ctl('merge.speed', { device: 'disk', name: 'm', speed: 0 });
    await waitMergeDone(rig, 'disk@m');
    assertSame(await rig.readAll('disk'), snap, 'origin after the resumed merge');
    expect(await stopWithin(again)).toBe(0);
  }, 180_000);
});
