/**
 * The Linux kernel NBD client (nbd.ko + nbd-client) against `nbdsnap serve`, in a small qemu VM
 * (scripts/kernel-vm.sh), every check confirmed on the host side too.
 *
 * The VM boots once: test/kernel/guest-checks.sh runs every scenario in turn and reports facts on a
 * serial line; the tests below each check one scenario from that report and from the served image
 * files (loop-mounted ext4, checksums) and the server process. The last scenario switches the VM
 * off abruptly with a four-connection device still attached and reads in flight.
 *
 * About a minute on an idle 2-core machine (kernel + initramfs cached in ${TMPDIR:-/tmp}/nbdsnap-
 * kernel-vm; the first run downloads Debian's cloud kernel package, ~27 MB). Run only these with
 * `npx vitest run test/kernel`; against the nbdkit reference with NBDSNAP_KERNEL_TARGET=nbdkit.
 *
 * Where no VM can start (no qemu, no kernel package reachable) the tests are skipped with the
 * reason, except under CI (CI=true), where they fail with it.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  readSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import { tempDir } from '../helpers/server.ts';
import { MiniNbdClient } from './mini-client.ts';
import { startTarget, TARGET, type Target } from './target.ts';
import { type GuestReport, prepareKernelVm, runKernelVm, type VmRun } from './vm.ts';

const CI = ['1', 'true', 'yes'].includes((process.env.CI ?? '').toLowerCase());
const GUEST_SCRIPT = join(import.meta.dirname, 'guest-checks.sh');
const MiB = 1024 * 1024;
const RW_EXPORTS = ['disk', 'multi', 'blk', 'other'];

const availability = await prepareKernelVm();
if (!availability.ok && !CI) console.warn(`kernel-client tests skipped: ${availability.reason}`);

// ---- host-side helpers ------------------------------------------------------------------------------

function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}
function md5(buf: Buffer): string {
  return createHash('md5').update(buf).digest('hex');
}
function fileSha(path: string): string {
  return sha256(readFileSync(path));
}
function fileMd5(path: string): string {
  return md5(readFileSync(path));
}
function rangeSha(path: string, offset: number, length: number): string {
  return sha256(readRange(path, offset, length));
}
function readRange(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}
function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
/** Every regular file under dir (relative path -> sha256), lost+found left out. */
function treeShas(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        if (d === dir && e.name === 'lost+found') continue;
        walk(p);
      } else if (e.isFile()) out[relative(dir, p)] = fileSha(p);
    }
  };
  walk(dir);
  return out;
}
/** "SHA PATH" report lines -> { PATH: SHA } */
function reportedShas(report: GuestReport, key: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of report.all(key)) {
    const sp = v.indexOf(' ');
    out[v.slice(sp + 1)] = v.slice(0, sp);
  }
  return out;
}
/**
 * The files of an ext4 image as the host kernel sees them: mounted read-only through a loop
 * device (as root), else extracted with debugfs (e2fsprogs) where mounting is not allowed.
 */
function ext4ImageFiles(image: string, work: string): Record<string, string> {
  const mnt = join(work, `mnt-${Date.now()}`);
  mkdirSync(mnt, { recursive: true });
  if (process.getuid?.() === 0) {
    sh('mount', ['-t', 'ext4', '-o', 'ro,loop', image, mnt]);
    try {
      return treeShas(mnt);
    } finally {
      sh('umount', [mnt]);
    }
  }
  sh('debugfs', ['-R', `rdump / ${mnt}`, image]);
  return treeShas(mnt);
}

interface TcpSocket {
  state: string;
  local: number;
  remote: number;
}
const TCP_STATES: Record<string, string> = {
  '01': 'ESTABLISHED',
  '02': 'SYN_SENT',
  '03': 'SYN_RECV',
  '04': 'FIN_WAIT1',
  '05': 'FIN_WAIT2',
  '06': 'TIME_WAIT',
  '07': 'CLOSE',
  '08': 'CLOSE_WAIT',
  '09': 'LAST_ACK',
  '0A': 'LISTEN',
  '0B': 'CLOSING',
};
/** The TCP sockets a process holds open (from /proc/PID/fd and /proc/net/tcp{,6}). */
function processTcpSockets(pid: number): TcpSocket[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m?.[1]) inodes.add(m[1]);
    } catch {
      // fd closed meanwhile
    }
  }
  const out: TcpSocket[] = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || !inodes.has(f[9] as string)) continue;
      const port = (addr: string) => Number.parseInt(addr.split(':')[1] ?? '0', 16);
      out.push({
        state: TCP_STATES[f[3] as string] ?? (f[3] as string),
        local: port(f[1] as string),
        remote: port(f[2] as string),
      });
    }
  }
  return out.sort((a, b) => a.state.localeCompare(b.state) || a.remote - b.remote);
}
function describeSockets(s: TcpSocket[]): string {
  return s.map((x) => `${x.state} :${x.local} <- :${x.remote}`).join(', ');
}

// ---- the one VM boot ----------------------------------------------------------------------------------

describe(`kernel NBD client in a VM against ${TARGET} serve`, () => {
  const tmp = tempDir('nbdsnap-kernel-');
  const rwDir = join(tmp.path, 'rw');
  const roDir = join(tmp.path, 'ro');
  const img = (name: string) => join(name === 'fs' ? roDir : rwDir, name);
  let rwServer: Target | undefined;
  let roServer: Target | undefined;
  let bystander: MiniNbdClient | undefined;
  let vm: VmRun | undefined;
  const before: Record<string, string> = {};
  let baselineSockets: TcpSocket[] = [];
  let roFiles: Record<string, string> = {};
  let multiOriginal: Buffer = Buffer.alloc(0);
  let maxServerConns = 0;

  /** Context for a failure message: the guest's report for a section, console tail, server log. */
  function why(section: string): string {
    if (!vm) return 'the VM did not run';
    return [
      `--- guest report (${section}.*) ---`,
      vm.report.section(section) || '(nothing: the guest never reached this section)',
      `--- VM exit ${vm.status}, ${(vm.ms / 1000).toFixed(1)} s${vm.report.all('@forced-off').length ? ', killed after its script ended (@forced-off)' : ''}; harness stderr ---`,
      vm.stderr.trim(),
      '--- guest console (last 25 lines) ---',
      vm.console.trim().split('\n').slice(-25).join('\n'),
      `--- ${TARGET} stderr (last 30 lines) ---`,
      [rwServer?.stderr() ?? '', roServer?.stderr() ?? ''].join('').trim().split('\n').slice(-30).join('\n'),
    ].join('\n');
  }
  function guest(key: string): string | undefined {
    return vm?.report.get(key);
  }
  function sectionDone(section: string) {
    expect(
      vm?.report.all('@done').some((v) => v.startsWith(`${section} `)),
      `the guest finished section ${section}\n${why(section)}`,
    ).toBe(true);
  }
  function needVm(ctx: TestContext) {
    if (availability.ok) return;
    // under CI a kernel-client run that cannot start a VM fails, never passes; elsewhere it skips
    if (CI) throw new Error(`kernel-client tests cannot run under CI (CI=${process.env.CI}): ${availability.reason}`);
    ctx.skip(`no VM: ${availability.reason}`);
  }

  beforeAll(async () => {
    if (!availability.ok) return; // each test skips itself, or fails under CI (needVm)
    mkdirSync(rwDir);
    mkdirSync(roDir);
    // read-write server: an empty disk for mkfs, random data for -C 4, an empty one for block sizes,
    // and one the host keeps a connection to throughout
    writeFileSync(img('disk'), '');
    truncateSync(img('disk'), 64 * MiB);
    multiOriginal = randomBytes(32 * MiB);
    writeFileSync(img('multi'), multiOriginal);
    writeFileSync(img('blk'), '');
    truncateSync(img('blk'), 8 * MiB);
    writeFileSync(img('other'), randomBytes(MiB));
    // read-only server: an ext4 filesystem made on the host from a folder
    const src = join(tmp.path, 'src');
    mkdirSync(join(src, 'dir/sub'), { recursive: true });
    writeFileSync(join(src, 'hello.txt'), 'served read-only by nbdsnap\n');
    writeFileSync(join(src, 'dir/random.bin'), randomBytes(MiB + 123));
    writeFileSync(join(src, 'dir/sub/deep.txt'), 'x'.repeat(5000));
    roFiles = treeShas(src);
    writeFileSync(img('fs'), '');
    truncateSync(img('fs'), 16 * MiB);
    sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'host-made', '-d', src, img('fs')]);
    for (const n of [...RW_EXPORTS, 'fs']) before[n] = fileSha(img(n));

    rwServer = await startTarget(rwDir, RW_EXPORTS, false);
    roServer = await startTarget(roDir, ['fs'], true);
    bystander = await MiniNbdClient.connect(rwServer.port, 'other');
    expect((await bystander.pread(0, 4096)).equals(readRange(img('other'), 0, 4096))).toBe(true);
    baselineSockets = processTcpSockets(rwServer.pid);

    // while the VM runs, sample how many connections the read-write server holds
    const pid = rwServer.pid;
    const sampler = setInterval(() => {
      try {
        const n = processTcpSockets(pid).filter((s) => s.state === 'ESTABLISHED').length;
        maxServerConns = Math.max(maxServerConns, n);
      } catch {
        // the server exited: the tests below report it
      }
    }, 250);
    try {
      vm = await runKernelVm(GUEST_SCRIPT, {
        env: { SERVER: '10.0.2.2', PORT_RW: rwServer.port, PORT_RO: roServer.port },
        // about a minute on an idle 2-core machine; much longer when the rest of the suite (or
        // anything else) keeps both cores busy
        timeoutS: 250,
      });
    } finally {
      clearInterval(sampler);
    }
    const marks = vm.report.lines.filter((l) => /^@(boot|done) /.test(l)).map((l) => l.slice(1));
    console.log(
      `kernel-client VM (${TARGET}): exit ${vm.status} after ${(vm.ms / 1000).toFixed(1)} s; guest uptime at ${marks.join(', ')}`,
    );
    if (vm.report.lines.length === 0) {
      throw new Error(
        `the VM reported nothing (exit ${vm.status}):\n${vm.stderr}\n${vm.console.split('\n').slice(-40).join('\n')}`,
      );
    }
  });

  afterAll(async () => {
    await bystander?.disconnect().catch(() => undefined);
    await rwServer?.stop();
    await roServer?.stop();
    tmp.cleanup();
  });

  it('read-write: mkfs.ext4 in the guest, files, sync, detach; the image holds exactly that filesystem', (ctx) => {
    needVm(ctx);
    const w = why('rw');
    sectionDone('rw');
    expect(guest('rw.attach.rc'), w).toBe('0');
    expect(guest('rw.lbs'), `default block size\n${w}`).toBe('512');
    expect(guest('rw.size'), w).toBe(String(64 * MiB));
    expect(guest('rw.mkfs.rc'), w).toBe('0');
    expect(guest('rw.mount.rc'), w).toBe('0');
    expect(guest('rw.fstype'), w).toBe('ext4');
    expect(guest('rw.umount.rc'), w).toBe('0');
    expect(guest('rw.detach.rc'), w).toBe('0');
    expect(guest('rw.size-after-detach'), `nbd0 released after nbd-client -d\n${w}`).toBe('0');

    const image = img('disk');
    // byte for byte what the guest saw on /dev/nbd0 after unmounting
    expect(fileMd5(image), `image md5 = guest's whole-device md5 after umount\n${w}`).toBe(guest('rw.devmd5'));
    expect(fileSha(image)).not.toBe(before.disk);
    // the guest's filesystem, not one made elsewhere: its label and UUID, ext4 features, clean
    const super_ = sh('dumpe2fs', ['-h', image]);
    expect(super_).toMatch(/Filesystem volume name:\s+nbdsnap-kt/);
    expect(super_).toMatch(/Filesystem UUID:\s+6b1f2c3d-0000-4e5f-8a9b-0c1d2e3f4a5b/);
    expect(super_).toMatch(/Filesystem features:.*has_journal.*extent/);
    expect(super_).toMatch(/Filesystem state:\s+clean/);
    sh('e2fsck', ['-f', '-n', image]); // throws on any inconsistency (exit != 0)
    // the same files with the same contents, mounted on the host through a loop device
    const onHost = ext4ImageFiles(image, tmp.path);
    const inGuest = reportedShas(vm?.report as GuestReport, 'rw.file');
    expect(Object.keys(inGuest).sort(), w).toEqual([
      'dir/empty',
      'dir/random.bin',
      'dir/seq.txt',
      'dir/sub/small.bin',
      'hello.txt',
    ]);
    expect(onHost, w).toEqual(inGuest);
    expect(statSync(image).size).toBe(64 * MiB);
  });

  it('read-only export (-r): mount -o ro works, writes from the guest fail, the image is unchanged', (ctx) => {
    needVm(ctx);
    const w = why('ro');
    sectionDone('ro');
    expect(guest('ro.attach.rc'), w).toBe('0');
    expect(guest('ro.roflag'), `the kernel marked nbd1 read-only\n${w}`).toBe('1');
    expect(guest('ro.mount.rc'), w).toBe('0');
    expect(guest('ro.mountopts')?.split(',')[0], w).toBe('ro');
    expect(reportedShas(vm?.report as GuestReport, 'ro.file'), w).toEqual(roFiles);
    expect(guest('ro.touch.rc'), `touch on the ro mount must fail\n${w}`).not.toBe('0');
    expect(guest('ro.dd.rc'), `dd oflag=direct onto /dev/nbd1 must fail\n${w}`).not.toBe('0');
    expect(vm?.report.all('ro.dd.out').join('\n'), w).toMatch(/Operation not permitted|Read-only|Input\/output error/);
    expect(guest('ro.dd-buffered.rc'), `buffered dd onto /dev/nbd1 must fail\n${w}`).not.toBe('0');
    expect(guest('ro.detach.rc'), w).toBe('0');
    expect(guest('ro.devmd5'), `whole-device read = image\n${w}`).toBe(fileMd5(img('fs')));
    expect(fileSha(img('fs')), 'the read-only image is unchanged').toBe(before.fs);
  });

  it('-C 4: four connections (CAN_MULTI_CONN); a dd of the whole device has the image checksum', (ctx) => {
    needVm(ctx);
    const w = why('mc');
    sectionDone('mc');
    expect(guest('mc.attach.rc'), w).toBe('0');
    expect(vm?.report.all('mc.attach.out').filter((l) => l.startsWith('Negotiation')).length, w).toBe(4);
    expect(guest('mc.conns'), `established TCP connections to the server in the guest\n${w}`).toBe('4');
    // one hardware queue (and so one connection in use) per guest CPU, up to the 4 connections
    expect(guest('mc.hwqueues'), w).toBe(String(Math.min(4, Number(guest('mc.cpus')))));
    // seen from the host: the server held the 4 connections at once, besides the bystander's
    expect(
      maxServerConns,
      `most ESTABLISHED connections the server held during the VM run\n${w}`,
    ).toBeGreaterThanOrEqual(5);
    expect(guest('mc.flush.rc'), w).toBe('0');
    const image = img('multi');
    // the guest wrote one 4 MiB chunk four times at once (8..24 MiB)
    const chunk = guest('mc.chunksha');
    for (let i = 0; i < 4; i++) expect(rangeSha(image, (8 + i * 4) * MiB, 4 * MiB), `chunk ${i}\n${w}`).toBe(chunk);
    const now = readFileSync(image);
    const untouched = (from: number, to?: number) => now.subarray(from, to).equals(multiOriginal.subarray(from, to));
    expect(untouched(0, 8 * MiB), 'bytes before 8 MiB untouched').toBe(true);
    expect(untouched(24 * MiB), 'bytes from 24 MiB on untouched').toBe(true);
    expect(guest('mc.devmd5'), `whole-device dd over 4 connections = image\n${w}`).toBe(md5(now));
  });

  it('block sizes: -b 4096 and the default 512 both work on the same export', (ctx) => {
    needVm(ctx);
    const w = why('bs');
    sectionDone('bs');
    expect(guest('bs4k.attach.rc'), w).toBe('0');
    expect(guest('bs4k.lbs'), w).toBe('4096');
    expect(guest('bs4k.write.rc'), w).toBe('0');
    expect(guest('bs4k.readback'), w).toBe(guest('bs.asha'));
    expect(guest('bs4k.detach.rc'), w).toBe('0');
    expect(guest('bs512.attach.rc'), w).toBe('0');
    expect(guest('bs512.lbs'), w).toBe('512');
    expect(guest('bs512.write.rc'), w).toBe('0');
    expect(guest('bs512.readback'), w).toBe(guest('bs.bsha'));
    expect(guest('bs512.readback-a'), `the 4096-byte blocks written before, read at 512\n${w}`).toBe(guest('bs.asha'));
    expect(guest('bs512.detach.rc'), w).toBe('0');
    const image = img('blk');
    expect(rangeSha(image, 5 * 4096, 3 * 4096), `4096-byte blocks 5..7 on the host\n${w}`).toBe(guest('bs.asha'));
    expect(rangeSha(image, 3 * 512, 3 * 512), `512-byte sectors 3..5 on the host\n${w}`).toBe(guest('bs.bsha'));
    const now = readFileSync(image);
    expect(guest('bs512.devmd5'), w).toBe(md5(now));
    // what the -b 4096 device held: the same image without the 512-byte write (those were zeroes)
    const before512 = Buffer.from(now);
    before512.fill(0, 3 * 512, 6 * 512);
    expect(guest('bs4k.devmd5'), w).toBe(md5(before512));
    // nothing else was written
    before512.fill(0, 5 * 4096, 8 * 4096);
    expect(before512.equals(Buffer.alloc(8 * MiB)), 'no other bytes changed').toBe(true);
  });

  it('guest powered off without detaching: the server drops those connections and keeps serving others', async (ctx) => {
    needVm(ctx);
    const w = why('off');
    sectionDone('off');
    expect(guest('off.attached'), w).toBe('yes');
    expect(guest('off.conns'), `four connections still up at power-off\n${w}`).toBe('4');
    expect(vm?.status, `the guest script ran to the end and the VM switched off\n${w}`).toBe(0);
    const srv = rwServer as Target;
    expect(srv.alive(), `server still running\n${w}`).toBe(true);
    // the server closes its side of every connection the VM had: back to the listening socket and
    // the bystander's connection (a socket left in CLOSE_WAIT means the server never closed it)
    const deadline = Date.now() + 15_000;
    let sockets = processTcpSockets(srv.pid);
    while (describeSockets(sockets) !== describeSockets(baselineSockets) && Date.now() < deadline) {
      await sleep(200);
      sockets = processTcpSockets(srv.pid);
    }
    expect(describeSockets(sockets), `server TCP sockets after the VM went away\n${w}`).toBe(
      describeSockets(baselineSockets),
    );
    expect(sockets.filter((s) => s.state === 'ESTABLISHED').map((s) => s.remote)).toEqual([bystander?.localPort]);
    // the connection that was open all along still reads and writes
    const b = bystander as MiniNbdClient;
    const data = randomBytes(8192);
    await b.pwrite(8192, data);
    await b.flush();
    expect((await b.pread(8192, 8192)).equals(data)).toBe(true);
    expect(readRange(img('other'), 8192, 8192).equals(data), 'bystander write reached the image').toBe(true);
    expect((await b.pread(0, 4096)).equals(readRange(img('other'), 0, 4096))).toBe(true);
    // and new clients are served, by both servers
    for (const [port, name, file] of [
      [srv.port, 'multi', img('multi')],
      [(roServer as Target).port, 'fs', img('fs')],
    ] as const) {
      const c = await MiniNbdClient.connect(port, name);
      expect(c.size).toBe(BigInt(statSync(file).size));
      expect((await c.pread(MiB, 65536)).equals(readRange(file, MiB, 65536))).toBe(true);
      await c.disconnect();
    }
    expect(srv.alive(), `server still running\n${w}`).toBe(true);
    expect(roServer?.alive()).toBe(true);
    // the read-only server had nothing attached at power-off: only its listening socket is left
    const roPid = (roServer as Target).pid;
    const until = Date.now() + 5_000;
    while (processTcpSockets(roPid).length > 1 && Date.now() < until) await sleep(100);
    expect(processTcpSockets(roPid).map((s) => s.state)).toEqual(['LISTEN']);
  });
});
