/**
 * SIGTERM under load, many times: how long `nbdsnap serve` takes to exit, and whether it ever
 * hangs. Each round starts a server with a store and a held snapshot (optionally on a remote
 * origin served by qemu-nbd), loads it with fio (first writes and plain writes), nbdcopy, a client
 * that stalls in the middle of a WRITE payload, a client that sends large READs and never reads
 * its replies, and a merge; then sends SIGTERM at a random moment and times the exit. A server
 * still alive after --hang seconds is inspected (its threads' kernel wait channels and the last
 * log lines) and killed.
 *
 *   node --import tsx scripts/shutdown-stress.ts [--rounds N] [--remote] [--hang S] [--second S]
 *
 * --second S sends a second SIGTERM S seconds after the first (the forced stop). The last line
 * is a summary: the exit times and statuses, and the number of hangs.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { Command, serialize } from '../src/nbd-protocol/index.ts';
import { RawClient } from '../test/helpers/raw-client.ts';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '10' },
    remote: { type: 'boolean', default: false },
    hang: { type: 'string', default: '60' },
    second: { type: 'string' },
    size: { type: 'string', default: '512' },
    cli: { type: 'string' },
  },
});
const ROOT = resolve(import.meta.dirname, '..');
const CLI = values.cli ?? join(ROOT, 'bin/nbdsnap.cjs');
const MiB = 1024 * 1024;
const SIZE = Number(values.size) * MiB;
const HANG_S = Number(values.hang);
let port = 30000 + Math.floor(Math.random() * 1000) * 2;

const children: ChildProcess[] = [];
function bg(cmd: string, args: string[]): ChildProcess {
  const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  c.stderr?.resume();
  children.push(c);
  return c;
}
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

async function waitFor(cond: () => boolean, what: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** A client that sends a 32 MiB WRITE header and part of its payload, then stalls. */
async function stallMidPayload(p: number): Promise<RawClient> {
  const c = await RawClient.open(p, 'dev');
  const header = serialize.request(0, Command.WRITE, 1n, 0, 32 * MiB);
  c.socket.write(header);
  c.socket.write(Buffer.alloc(20 * MiB, 7));
  return c;
}

/** A client that sends four 32 MiB READs and never reads a reply. */
async function neverReads(p: number): Promise<Socket> {
  const c = await RawClient.open(p, 'dev');
  c.socket.pause();
  c.socket.removeAllListeners('data');
  for (let i = 0; i < 4; i++) {
    c.socket.write(serialize.request(0, Command.READ, BigInt(i + 1), i * 32 * MiB, 32 * MiB));
  }
  return c.socket;
}

function threadWaits(pid: number): string {
  try {
    return readdirSync(`/proc/${pid}/task`)
      .map((t) => {
        const comm = readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim();
        const wchan = readFileSync(`/proc/${pid}/task/${t}/wchan`, 'utf8').trim();
        const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8').split(') ')[1]?.split(' ')[0];
        return `${comm}:${stat}:${wchan}`;
      })
      .join(' ');
  } catch {
    return '(gone)';
  }
}

/** A control command through the CLI; its failure is printed, not thrown. */
function ctl(args: string[], control: string): void {
  const r = spawnSync(process.execPath, [CLI, ...args, '--control', control], { encoding: 'utf8' });
  if (r.status !== 0) console.log(`${args.join(' ')}: ${r.stderr.trim()}`);
}

interface Outcome {
  seconds: number;
  status: string;
  hung: boolean;
}

async function round(i: number): Promise<Outcome> {
  const dir = mkdtempSync(join(tmpdir(), 'nbdsnap-stop-'));
  const image = join(dir, 'origin.img');
  writeFileSync(image, '');
  truncateSync(image, SIZE);
  const store = join(dir, 'store.img');
  writeFileSync(store, '');
  truncateSync(store, SIZE);
  spawnSync(process.execPath, [CLI, 'store', 'format', store], { stdio: 'ignore' });
  port += 2;
  let origin = image;
  if (values.remote) {
    const q = bg('qemu-nbd', [
      '-f',
      'raw',
      '--cache=writeback',
      '-p',
      String(port + 1),
      '-b',
      '127.0.0.1',
      '-x',
      'o',
      '-t',
      '--shared=8',
      image,
    ]);
    await sleep(300);
    if (q.exitCode !== null) throw new Error('qemu-nbd did not start');
    origin = `nbd://127.0.0.1:${port + 1}/o`;
  }
  const control = join(dir, 'ctl.sock');
  const pidFile = join(dir, 'pid');
  const srv = spawn(
    process.execPath,
    [
      CLI,
      'serve',
      `dev=${origin}`,
      '--store',
      store,
      '--control',
      control,
      '-p',
      String(port),
      '--pid-file',
      pidFile,
      '--log-level',
      'info',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  children.push(srv);
  let log = '';
  srv.stderr?.on('data', (d: Buffer) => {
    log = (log + d.toString()).slice(-20000);
  });
  let exit: string | undefined;
  let exitAt = 0;
  srv.on('exit', (code, sig) => {
    exit = code !== null ? `exit ${code}` : `signal ${sig}`;
    exitAt = Date.now();
  });
  await waitFor(
    () => (existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '') || exit !== undefined,
    'server',
  );
  if (exit !== undefined) throw new Error(`server exited: ${log}`);
  const uri = `nbd://127.0.0.1:${port}/dev`;

  // Data before the snapshots, a held snapshot, more data, a snapshot to merge.
  spawnSync('nbdcopy', ['--', '[', 'nbdkit', '-s', 'pattern', `size=${SIZE / 4}`, ']', uri], { stdio: 'ignore' });
  ctl(['snapshot', 'create', 'dev', 'held'], control);
  spawnSync(
    'fio',
    ['--name=w', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=64k', `--size=${SIZE / 8}`, '--iodepth=8'],
    { stdio: 'ignore' },
  );
  ctl(['snapshot', 'create', 'dev', 'm'], control);
  spawnSync(
    'fio',
    ['--name=w', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=64k', `--size=${SIZE / 8}`, '--iodepth=8'],
    { stdio: 'ignore' },
  );
  // The load.
  const rt = '30';
  bg('fio', [
    '--name=first',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=32',
    '--time_based',
    `--runtime=${rt}`,
    `--size=${SIZE}`,
  ]);
  bg('fio', [
    '--name=seq',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=write',
    '--bs=1m',
    '--iodepth=16',
    '--time_based',
    `--runtime=${rt}`,
    `--size=${SIZE}`,
  ]);
  bg('nbdcopy', ['--', '[', 'nbdkit', '-s', 'random', `size=${SIZE}`, ']', uri]);
  const stall = await stallMidPayload(port).catch(() => undefined);
  const deaf = await neverReads(port).catch(() => undefined);
  ctl(['merge', 'dev@m'], control);
  await sleep(500 + Math.random() * 4000);
  if (exit !== undefined) throw new Error(`server exited under load (${exit}): ${log.slice(-3000)}`);
  const t0 = Date.now();
  srv.kill('SIGTERM');
  const second =
    values.second === undefined ? undefined : setTimeout(() => srv.kill('SIGTERM'), Number(values.second) * 1000);
  let hung = false;
  while (exit === undefined && Date.now() - t0 < HANG_S * 1000) {
    await sleep(50);
    if (Date.now() - t0 > 10_000 && !hung && exit === undefined) {
      hung = true;
      console.log(`round ${i}: still running 10 s after SIGTERM; threads: ${threadWaits(srv.pid as number)}`);
      console.log(log.split('\n').slice(-8).join('\n'));
    }
  }
  clearTimeout(second);
  if (exit === undefined) {
    console.log(`round ${i}: HANG ${HANG_S} s after SIGTERM; threads: ${threadWaits(srv.pid as number)}`);
    console.log(log.split('\n').slice(-15).join('\n'));
    srv.kill('SIGKILL');
    await waitFor(() => exit !== undefined, 'kill');
  }
  const seconds = ((exitAt || Date.now()) - t0) / 1000;
  stall?.destroy();
  deaf?.destroy();
  for (const c of children) if (c !== srv && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  const stopped = /"msg":"stopped"/.test(log);
  const lastLines = log
    .split('\n')
    .filter((l) => /shutting|stopped|shutdown|forced|waiting/.test(l))
    .slice(-4);
  console.log(`round ${i}: ${exit} after ${seconds.toFixed(2)} s (stopped logged: ${stopped})`);
  for (const l of lastLines) console.log(`   ${l.slice(0, 300)}`);
  rmSync(dir, { recursive: true, force: true });
  return { seconds, status: exit ?? 'killed', hung: seconds > 10 };
}

const outcomes: Outcome[] = [];
for (let i = 1; i <= Number(values.rounds); i++) outcomes.push(await round(i));
const times = outcomes.map((o) => o.seconds).sort((a, b) => a - b);
console.log(
  `summary: ${outcomes.length} rounds, exit seconds min ${times[0]?.toFixed(2)} median ${times[Math.floor(times.length / 2)]?.toFixed(2)} max ${times.at(-1)?.toFixed(2)}; over 10 s: ${outcomes.filter((o) => o.hung).length}; statuses ${[...new Set(outcomes.map((o) => o.status))].join(', ')}`,
);
process.exit(0);
