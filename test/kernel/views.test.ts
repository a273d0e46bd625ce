/**
 * Snapshots, merges and backups seen through the Linux kernel NBD client (nbd.ko + nbd-client) in a
 * small qemu VM (scripts/kernel-vm.sh), every check confirmed on the host side too.
 *
 * All host work comes first, on one `nbdsnap serve` with a difference store and a control socket:
 *   web   ext4 made on the host; mounted on the host (nbdfuse + loop), files written, `sync`, then
 *         two snapshots of the live, mounted file system: web@before (read-only) and web@live
 *         (--writable); then files changed, deleted and added on the origin, unmounted.
 *   app   ext4 with an "installed application"; mounted, snapshot app@pre-upgrade, a failed
 *         upgrade (files rewritten, deleted, added), unmounted, `nbdsnap merge app@pre-upgrade --wait`.
 *   data  ext4 with files; snapshot data@nightly, then the origin overwritten in places;
 *         `nbdsnap backup` of data@nightly, `nbdsnap restore` of it into a blank file.
 * Then ONE VM boot (test/kernel/guest-views.sh) attaches web@before (mount -o ro,noload), web@live
 * (mounted read-write: ext4 replays its journal into the snapshot), the rolled-back origin app
 * (mounted), and data@nightly (read whole with dd), and reports what it found. The tests check that
 * report against what the host recorded, and look again from the host afterwards.
 *
 * The web and app snapshots are taken of a mounted file system right after a host-wide `sync`: the
 * blocks are home but the superblock says "needs recovery", as for any snapshot of a running system
 * (hence `noload` for the read-only one, and a journal replay when the others are mounted).
 *
 * 30-35 s alone on an idle 2-core machine (about 12 s of it host preparation), under a minute next to
 * kernel-client.test.ts. Needs root, /dev/fuse and loop devices for the host mounts.
 * Where no VM can start, or the host cannot mount, the tests are skipped with the reason, except
 * under CI (CI=true), where they fail with it.
 */
import { createHash } from 'node:crypto';
import { appendFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import { ok, pattern, sha256 } from '../helpers/clients.ts';
import { MiB, makeSparse, nbdsnap, Rig, type SnapshotInfo, tempDir } from '../helpers/snapshots.ts';
import {
  ext4Image,
  ext4Super,
  fsckProblems,
  HostMounts,
  hostMountsUnavailable,
  type Shas,
  shas,
  syncAll,
  type Tree,
  treeShas,
  writeTree,
} from './views-host.ts';
import { prepareKernelVm, runKernelVm, type VmRun } from './vm.ts';

const CI = ['1', 'true', 'yes'].includes((process.env.CI ?? '').toLowerCase());
const GUEST_SCRIPT = join(import.meta.dirname, 'guest-views.sh');

const availability = await prepareKernelVm();
const unavailable = availability.ok ? hostMountsUnavailable() : availability.reason;
if (unavailable !== undefined && !CI) console.warn(`kernel views tests skipped: ${unavailable}`);

// web: made by mke2fs, then written through the mounted origin before the snapshots
const WEB_MKFS: Tree = {
  'index.html': '<h1>served before the snapshot</h1>\n',
  'img/logo.bin': pattern(700 * 1024 + 3, 1),
  'data/db.bin': pattern(2 * MiB + 5, 2),
};
const WEB_LIVE: Tree = { 'uploads/photo.bin': pattern(3 * MiB + 77, 3), 'log.txt': 'line 1\n' };
const WEB_OLD = shas({ ...WEB_MKFS, ...WEB_LIVE });
const WEB_NEW = shas({
  'index.html': WEB_MKFS['index.html'] as string,
  'data/db.bin': pattern(2 * MiB, 12),
  'log.txt': 'line 1\nline 2\n',
  'new.bin': pattern(4 * MiB, 13),
});
// app: the installed version, then the failed upgrade
const APP_OLD_TREE: Tree = {
  'bin/app': pattern(1536 * 1024, 21),
  'etc/app.conf': 'version=1\nlisten=8080\n',
  'lib/libcore.so': pattern(2 * MiB + 11, 22),
  'var/db/state.bin': pattern(MiB + 3, 23),
  README: 'app 1.0\n',
};
const APP_OLD = shas(APP_OLD_TREE);
const DATA_TREE: Tree = { 'a.bin': pattern(3 * MiB, 31), 'b.txt': 'nightly\n'.repeat(1000) };

const sha = (b: Buffer) => sha256(b);
const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');
const fileSha = (path: string) => sha256(path);

describe('snapshot, merge and backup views through the kernel NBD client in a VM', () => {
  const tmp = tempDir('nbdsnap-views-');
  const img = (name: string) => join(tmp.path, `${name}.img`);
  const mounts = new HostMounts(tmp.path);
  let rig: Rig | undefined;
  let vm: VmRun | undefined;
  /** What the host recorded before the boot. */
  const h = {
    webOrigin: '',
    webOriginFiles: {} as Shas,
    before: { sha: '', needsRecovery: false },
    live: { sha: '', needsRecovery: false },
    app: { atSnapshot: '', afterUpgrade: '', afterMerge: '', needsRecovery: false },
    merge: { code: null as number | null, out: '' },
    snapshotsAfterMerge: [] as SnapshotInfo[],
    data: { atSnapshot: '', nightly: '', origin: '', restored: '', restoredSize: 0 },
    backup: '',
    restore: '',
  };

  function why(section: string): string {
    if (!vm) return 'the VM did not run';
    return [
      `--- guest report (${section}.*) ---`,
      vm.report.section(section) || '(nothing: the guest never reached this section)',
      `--- VM exit ${vm.status}, ${(vm.ms / 1000).toFixed(1)} s; harness stderr ---`,
      vm.stderr.trim(),
      '--- guest console (last 25 lines) ---',
      vm.console.trim().split('\n').slice(-25).join('\n'),
      '--- nbdsnap stderr (last 20 lines) ---',
      (rig?.server?.stderr() ?? '').trim().split('\n').slice(-20).join('\n'),
    ].join('\n');
  }
  const guest = (key: string) => vm?.report.get(key);
  function guestFiles(section: string): Shas {
    const out: Shas = {};
    for (const v of vm?.report.all(`${section}.file`) ?? [])
      out[v.slice(v.indexOf(' ') + 1)] = v.split(' ')[0] as string;
    return out;
  }
  function sectionDone(section: string) {
    const done = vm?.report.all('@done').some((v) => v.startsWith(`${section} `));
    expect(done, `the guest finished section ${section}\n${why(section)}`).toBe(true);
  }
  function needVm(ctx: TestContext) {
    if (unavailable === undefined) return;
    if (CI) throw new Error(`kernel views tests cannot run under CI (CI=${process.env.CI}): ${unavailable}`);
    ctx.skip(`not possible here: ${unavailable}`);
  }
  const r = () => rig as Rig;
  const ctl = async (args: string[]) => ok(await r().cli(args), `nbdsnap ${args.join(' ')}`);
  const exportSha = async (name: string) => sha(await r().readAll(name));
  const exportSuper = async (name: string) => {
    const c = await r().open(name);
    try {
      return ext4Super(await c.read(0, 4096));
    } finally {
      await r().closeClients();
    }
  };

  /** web: snapshots of the mounted, live file system, then the origin changed. */
  async function prepareWeb() {
    await mounts.with(r().uri('web'), [], async (mnt) => {
      writeTree(mnt, WEB_LIVE);
      await syncAll();
      await ctl(['snapshot', 'create', 'web', 'before']);
      await ctl(['snapshot', 'create', 'web', 'live', '--writable']);
      writeFileSync(join(mnt, 'data/db.bin'), pattern(2 * MiB, 12));
      rmSync(join(mnt, 'img'), { recursive: true });
      rmSync(join(mnt, 'uploads/photo.bin'));
      appendFileSync(join(mnt, 'log.txt'), 'line 2\n');
      writeFileSync(join(mnt, 'new.bin'), pattern(4 * MiB, 13));
      await syncAll();
    });
    // the origin as the host left it, mounted again read-only
    h.webOriginFiles = await mounts.with(r().uri('web'), ['ro'], treeShas);
    h.webOrigin = fileSha(img('web'));
    h.before = { sha: await exportSha('web@before'), needsRecovery: (await exportSuper('web@before')).needsRecovery };
    h.live = { sha: await exportSha('web@live'), needsRecovery: (await exportSuper('web@live')).needsRecovery };
  }

  /** app: snapshot of the running system, a failed upgrade, rolled back by merge --wait. */
  async function prepareApp() {
    await mounts.with(r().uri('app'), [], async (mnt) => {
      await syncAll();
      await ctl(['snapshot', 'create', 'app', 'pre-upgrade']);
      h.app.atSnapshot = await exportSha('app@pre-upgrade');
      h.app.needsRecovery = (await exportSuper('app@pre-upgrade')).needsRecovery;
      writeFileSync(join(mnt, 'bin/app'), pattern(1800 * 1024, 41));
      writeFileSync(join(mnt, 'etc/app.conf'), 'version=2\nlisten=broken\n');
      rmSync(join(mnt, 'lib/libcore.so'));
      writeFileSync(join(mnt, 'lib/libcore2.so'), pattern(3 * MiB, 42));
      rmSync(join(mnt, 'var/db'), { recursive: true });
      await syncAll();
    });
    h.app.afterUpgrade = fileSha(img('app'));
    const m = await r().cli(['merge', 'app@pre-upgrade', '--wait']);
    h.merge = { code: m.code, out: m.stdout + m.stderr };
    h.app.afterMerge = fileSha(img('app'));
    h.snapshotsAfterMerge = await r().list();
  }

  /** data: snapshot, origin overwritten in places, backup of the snapshot restored into a blank file. */
  async function prepareData() {
    h.data.atSnapshot = fileSha(img('data'));
    await ctl(['snapshot', 'create', 'data', 'nightly']);
    const c = await r().open('data');
    await c.write(0, pattern(256 * 1024, 51)); // the superblock and group descriptors
    await c.write(8 * MiB, pattern(3 * MiB, 52));
    await c.write(30 * MiB + 512, pattern(MiB + 4096, 53));
    await c.writeZeroes(2 * MiB, MiB);
    await c.flush();
    await r().closeClients();
    h.data.origin = fileSha(img('data'));
    h.data.nightly = await exportSha('data@nightly');
    const nbk = join(tmp.path, 'nightly.nbk');
    const restored = makeSparse(join(tmp.path, 'restored.img'), 32 * MiB);
    const uri = `nbd://127.0.0.1:${r().port}/data@nightly`;
    h.backup = ok(await nbdsnap(['backup', uri, nbk, '--progress=none']), 'nbdsnap backup');
    h.restore = ok(await nbdsnap(['restore', nbk, restored, '--progress=none']), 'nbdsnap restore');
    h.data.restored = fileSha(restored);
    h.data.restoredSize = statSync(restored).size;
  }

  beforeAll(async () => {
    if (unavailable !== undefined) return; // each test skips itself, or fails under CI (needVm)
    await ext4Image(img('web'), 64 * MiB, 'web', WEB_MKFS, tmp.path);
    await ext4Image(img('app'), 64 * MiB, 'app', APP_OLD_TREE, tmp.path);
    await ext4Image(img('data'), 32 * MiB, 'data', DATA_TREE, tmp.path);
    const store = makeSparse(img('store'), 256 * MiB);
    rig = new Rig(tmp.path, { devices: { web: img('web'), app: img('app'), data: img('data') }, stores: [store] });
    await rig.start();
    const t0 = Date.now();
    await prepareWeb();
    await prepareApp();
    await prepareData();
    const prepMs = Date.now() - t0;
    vm = await runKernelVm(GUEST_SCRIPT, { env: { SERVER: '10.0.2.2', PORT: rig.port }, timeoutS: 200 });
    const marks = vm.report.lines.filter((l) => /^@(boot|done) /.test(l)).map((l) => l.slice(1));
    console.log(
      `kernel views: host preparation ${(prepMs / 1000).toFixed(1)} s; VM exit ${vm.status} after ${(vm.ms / 1000).toFixed(1)} s; guest uptime at ${marks.join(', ')}`,
    );
    if (vm.report.lines.length === 0) {
      throw new Error(
        `the VM reported nothing (exit ${vm.status}):\n${vm.stderr}\n${vm.console.split('\n').slice(-40).join('\n')}`,
      );
    }
  });

  afterAll(async () => {
    await mounts.cleanup();
    await rig?.stop();
    tmp.cleanup();
  });

  it('read-only snapshot of a live ext4: mount -o ro,noload in the guest finds the old files; nothing changed', async (ctx) => {
    needVm(ctx);
    const w = why('snap');
    sectionDone('snap');
    // the host side of the story: the origin really moved on, and the snapshot is crash-consistent
    expect(h.webOriginFiles, 'the origin holds the changed files').toEqual(WEB_NEW);
    expect(h.before.needsRecovery, 'web@before was taken while mounted: its journal needs recovery').toBe(true);
    expect(guest('snap.attach.rc'), w).toBe('0');
    expect(guest('snap.roflag'), `the kernel marked nbd0 read-only\n${w}`).toBe('1');
    expect(guest('snap.size'), w).toBe(String(64 * MiB));
    expect(guest('snap.mount.rc'), w).toBe('0');
    expect(guest('snap.mountopts')?.split(',')[0], w).toBe('ro');
    expect(guestFiles('snap'), `the old files, sha256 as the host wrote them\n${w}`).toEqual(WEB_OLD);
    expect(guest('snap.touch.rc'), `touch on the ro mount must fail\n${w}`).not.toBe('0');
    expect(guest('snap.umount.rc'), w).toBe('0');
    expect(guest('snap.detach.rc'), w).toBe('0');
    // seen from the host: the same bytes as the kernel read, unchanged by the VM; the same files
    const now = await r().readAll('web@before');
    expect(guest('snap.devmd5'), `guest whole-device md5 = the export's\n${w}`).toBe(md5(now));
    expect(sha(now), 'web@before unchanged by the VM run').toBe(h.before.sha);
    expect(await mounts.with(r().uri('web@before'), ['ro', 'noload'], treeShas)).toEqual(WEB_OLD);
    expect(fileSha(img('web')), 'the origin unchanged by the VM run').toBe(h.webOrigin);
  });

  it('--writable snapshot mounted read-write: ext4 replays its journal into the snapshot; old files intact, origin unchanged', async (ctx) => {
    needVm(ctx);
    const w = why('wsnap');
    sectionDone('wsnap');
    expect(h.live.needsRecovery, 'web@live was taken while mounted: its journal needs recovery').toBe(true);
    expect(guest('wsnap.attach.rc'), w).toBe('0');
    expect(guest('wsnap.roflag'), `a writable snapshot is attached read-write\n${w}`).toBe('0');
    expect(guest('wsnap.mount.rc'), w).toBe('0');
    expect(guest('wsnap.mountopts')?.split(',')[0], w).toBe('rw');
    expect(vm?.report.all('wsnap.dmesg').join('\n'), `the kernel replayed the journal\n${w}`).toMatch(
      /recovery complete/,
    );
    expect(guestFiles('wsnap'), w).toEqual(WEB_OLD);
    expect(guest('wsnap.umount.rc'), w).toBe('0');
    expect(guest('wsnap.detach.rc'), w).toBe('0');
    // from the host: the snapshot took the guest's writes (journal replayed, a new file, clean)
    const bytes = await r().readAll('web@live');
    expect(sha(bytes), 'web@live changed by the guest').not.toBe(h.live.sha);
    expect(ext4Super(bytes).needsRecovery, 'web@live clean after the guest unmounted it').toBe(false);
    const copy = join(tmp.path, 'live-copy.img');
    writeFileSync(copy, bytes);
    expect(await fsckProblems(copy), 'e2fsck -f -n of web@live').toBe('');
    const onHost = await mounts.with(r().uri('web@live'), ['ro'], treeShas);
    expect(onHost, w).toEqual({ ...WEB_OLD, 'guest-note.txt': guest('wsnap.notesha') });
    // ... and nothing else did: the origin, and the read-only snapshot taken at the same moment
    expect(fileSha(img('web')), 'the origin unchanged by writes to its snapshot').toBe(h.webOrigin);
    expect(await mounts.with(r().uri('web'), ['ro'], treeShas)).toEqual(WEB_NEW);
    expect(await exportSha('web@before'), 'web@before unchanged').toBe(h.before.sha);
    const list = (await r().list()).filter((s) => s.device === 'web');
    expect(list.map((s) => `${s.export} ${s.state} ${s.writable ? 'rw' : 'ro'}`).sort()).toEqual([
      'web@before valid ro',
      'web@live valid rw',
    ]);
  });

  it('merge --wait rolls the origin back: the guest mounts the origin and finds the original files exactly', async (ctx) => {
    needVm(ctx);
    const w = why('merge');
    sectionDone('merge');
    // the host side: the upgrade changed the origin, the merge put back every byte of the snapshot
    expect(h.merge.code, `nbdsnap merge --wait\n${h.merge.out}`).toBe(0);
    expect(h.merge.out).toMatch(/merge of app@pre-upgrade finished/);
    expect(h.app.afterUpgrade, 'the failed upgrade changed the origin').not.toBe(h.app.atSnapshot);
    expect(h.app.afterMerge, 'after the merge the origin image = app@pre-upgrade, byte for byte').toBe(
      h.app.atSnapshot,
    );
    expect(h.snapshotsAfterMerge.map((s) => s.export)).not.toContain('app@pre-upgrade');
    expect(h.app.needsRecovery, 'app@pre-upgrade was taken while mounted').toBe(true);
    // the guest "reboots" into the rolled-back system
    expect(guest('merge.attach.rc'), w).toBe('0');
    expect(guest('merge.roflag'), w).toBe('0');
    expect(guest('merge.mount.rc'), w).toBe('0');
    expect(vm?.report.all('merge.dmesg').join('\n'), `journal replayed at mount\n${w}`).toMatch(/recovery complete/);
    expect(guestFiles('merge'), `exactly the files of before the upgrade\n${w}`).toEqual(APP_OLD);
    expect(guest('merge.umount.rc'), w).toBe('0');
    expect(guest('merge.detach.rc'), w).toBe('0');
    // from the host afterwards: a clean file system with the original files
    expect(await fsckProblems(img('app')), 'e2fsck -f -n of the origin image').toBe('');
    expect(await mounts.with(r().uri('app'), ['ro'], treeShas)).toEqual(APP_OLD);
    const merges = await r().cli(['merge', 'status']);
    expect(merges.stdout.trim()).toBe('no merges');
  });

  it('backup view: dd of the snapshot in the guest = nbdsnap backup of it restored into a blank file', (ctx) => {
    needVm(ctx);
    const w = why('bkp');
    sectionDone('bkp');
    expect(h.backup, 'nbdsnap backup').toMatch(/full backup of data@nightly/);
    expect(h.data.origin, 'the origin changed after the snapshot').not.toBe(h.data.atSnapshot);
    expect(h.data.nightly, 'data@nightly = the image when the snapshot was taken').toBe(h.data.atSnapshot);
    expect(h.data.restored, 'restored file = the snapshot').toBe(h.data.atSnapshot);
    expect(h.data.restoredSize).toBe(32 * MiB);
    expect(guest('bkp.attach.rc'), w).toBe('0');
    expect(guest('bkp.size'), w).toBe(String(32 * MiB));
    expect(vm?.report.all('bkp.dd').join('\n'), `dd read the whole device\n${w}`).toMatch(/^32\+0 records in/m);
    expect(guest('bkp.devsha'), `sha256 of the whole device in the guest = of the restored file\n${w}`).toBe(
      h.data.restored,
    );
    expect(guest('bkp.detach.rc'), w).toBe('0');
    expect(fileSha(img('data')), 'the origin unchanged by the VM run').toBe(h.data.origin);
  });
});
