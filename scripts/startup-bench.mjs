#!/usr/bin/env node
// startup-bench.mjs: how long short `nbdsnap` commands take, start-up included, against the floor
// of Node itself (`node -e 0`). Starts one server (a 64 MiB memory device, a small store, a
// control socket, change tracking), takes snapshots A and B with 4 KiB written between them
// (qemu-io), then runs each command RUNS times, the commands in turn (so a change of load hits
// all alike):
//
//   node scripts/startup-bench.mjs [--runs N] [--bin PATH] [--compare PATH] [--only NAME,NAME]
//
// --bin: the launcher to measure (default bin/nbdsnap.cjs of this checkout); --compare: a second
// launcher (another checkout, e.g. the previous commit, built) run alternately with the first in
// the same run, each command by one then the other. Set NBDSNAP_TSX=1 to measure the sources
// through tsx instead of the bundle. Per command and launcher it prints the median wall time and
// the mean CPU time (user+system of the child and its threads, from this process's
// /proc/self/stat children's times: exact over a run, not rounded per child), both in ms, and the
// CPU above the floor. CPU is the figure to compare on a loaded machine; the load average is
// printed with it.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const runs = Number(opt('--runs', '10'));
const bin = resolve(opt('--bin', join(root, 'bin/nbdsnap.cjs')));
const bins = [bin, ...(opt('--compare') === undefined ? [] : [resolve(opt('--compare'))])];
const only =
  opt('--only', '')
    ?.split(',')
    .filter((s) => s !== '') ?? [];
const TICK = 100; // USER_HZ: /proc times are in 1/100 s on Linux

/** User+system seconds of this process's waited-for children so far. */
function childrenCpu() {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[13]) + Number(f[14])) / TICK; // cutime, cstime (fields 16 and 17)
}

const dir = mkdtempSync(join(tmpdir(), 'nbdsnap-startup-'));
const ctl = join(dir, 'ctl');
const env = { ...process.env, NBDSNAP_CONTROL: ctl };
const cli = (...a) => {
  const r = spawnSync(process.execPath, [bin, ...a], { env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`nbdsnap ${a.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return r.stdout;
};

spawnSync('truncate', ['-s', '64M', join(dir, 'store.img'), join(dir, 'offline.img')]);
cli('store', 'format', join(dir, 'offline.img'));

// The server's output goes to files: this process blocks in spawnSync while commands run, and a
// server whose log pipe filled up would stall.
const logPath = join(dir, 'server.log');
const outPath = join(dir, 'server.out');
const server = spawn(
  process.execPath,
  [bin, 'serve', 'disk=memory:64M', '--store', join(dir, 'store.img'), '--control', ctl, '-p', '0'],
  { env, stdio: ['ignore', openSync(outPath, 'w'), openSync(logPath, 'w')] },
);
const serverLog = () => readFileSync(logPath, 'utf8').slice(-4096);
let exited = false;
server.once('exit', () => {
  exited = true;
});
let uri;
for (let waited = 0; uri === undefined; waited += 100) {
  if (exited || waited > 60_000) throw new Error(`the server did not start: ${serverLog()}`);
  await new Promise((ok) => setTimeout(ok, 100));
  uri = /(nbd:\/\/[^\s/]+)\/disk\b/.exec(readFileSync(outPath, 'utf8'))?.[1];
}

try {
  cli('snapshot', 'create', 'disk', 'A');
  const write = spawnSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x78 1M 4k', `${uri}/disk`], { encoding: 'utf8' });
  if (write.status !== 0) throw new Error(`qemu-io: ${write.error?.message ?? write.stderr}`);
  cli('snapshot', 'create', 'disk', 'B');

  const out = join(dir, 'inc.out');
  const commands = [
    ['--version', ['--version']],
    ['--help', ['--help']],
    ['backup --help', ['backup', '--help']],
    ['snapshot list', ['snapshot', 'list']],
    ['status', ['status']],
    ['store check (64 MiB)', ['store', 'check', join(dir, 'offline.img')]],
    ['backup --since A (4 KiB)', ['backup', `${uri}/disk@B`, out, '--since', 'A', '--progress', 'none']],
  ].filter(([name]) => only.length === 0 || only.some((o) => name.startsWith(o)));
  // Rows: the floor, then each command by each launcher.
  const rows = [{ name: 'node -e 0 (floor)', argv: ['-e', '0'] }];
  for (const [name, a] of commands) {
    for (const [i, b] of bins.entries())
      rows.push({ name: bins.length > 1 ? `${name} [${i + 1}]` : name, argv: [b, ...a] });
  }

  const wall = rows.map(() => []);
  const cpu = rows.map(() => 0);
  for (let r = 0; r < runs; r++) {
    for (const [i, row] of rows.entries()) {
      rmSync(out, { force: true });
      const c0 = childrenCpu();
      const t0 = process.hrtime.bigint();
      const res = spawnSync(process.execPath, row.argv, { env, stdio: ['ignore', 'ignore', 'pipe'] });
      wall[i].push(Number(process.hrtime.bigint() - t0) / 1e6);
      cpu[i] += childrenCpu() - c0;
      if (res.status !== 0)
        throw new Error(`${row.name}: exit ${res.status}: ${res.stderr}\nthe server's log:\n${serverLog()}`);
    }
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
  const floor = (cpu[0] / runs) * 1000;
  const tsx = process.env.NBDSNAP_TSX === '1' ? ' (NBDSNAP_TSX=1)' : '';
  for (const [i, b] of bins.entries()) console.log(`nbdsnap start-up [${i + 1}]: ${b}${tsx}`);
  console.log(
    `${runs} runs, load average ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  console.log(`${'command'.padEnd(30)} ${'wall ms'.padStart(8)} ${'CPU ms'.padStart(8)} ${'CPU-floor'.padStart(10)}`);
  for (const [i, row] of rows.entries()) {
    const c = (cpu[i] / runs) * 1000;
    const above = i === 0 ? '' : `${(c - floor).toFixed(0)}`;
    console.log(
      `${row.name.padEnd(30)} ${median(wall[i]).toFixed(0).padStart(8)} ${c.toFixed(0).padStart(8)} ${above.padStart(10)}`,
    );
  }
} finally {
  server.kill('SIGTERM');
  if (!exited) await new Promise((ok) => server.once('exit', ok));
  rmSync(dir, { recursive: true, force: true });
}
