/**
 * TypeScript side of scripts/kernel-vm.sh: make sure the cached kernel + initramfs are ready, boot
 * the VM with a guest script, and parse what the guest reported.
 *
 * The guest reports one "key value" line per fact on its fd 3 (see scripts/kernel-vm.sh); lines
 * starting with "@" are the harness's own (@boot, @done SECTION, @status N).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const KERNEL_VM_SCRIPT = resolve(import.meta.dirname, '../../scripts/kernel-vm.sh');
/** kernel-vm.sh's exit status for "no VM can be started here" (missing qemu, no kernel package). */
const EX_UNAVAILABLE = 77;

export type Availability = { ok: true } | { ok: false; reason: string };

interface Exec {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], timeoutMs: number): Promise<Exec> {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    // kernel-vm.sh has its own timeout for qemu; this one only guards against the script hanging.
    const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      rej(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      res({ code, signal, stdout, stderr });
    });
  });
}

/**
 * Fetch the kernel and build the initramfs if the cache lacks them (first run: a ~27 MB download
 * from Debian and a few seconds; then nothing). Resolves { ok: false } only when the VM cannot run
 * here at all; any other failure of the harness throws.
 */
export async function prepareKernelVm(): Promise<Availability> {
  let r: Exec;
  try {
    r = await run('bash', [KERNEL_VM_SCRIPT, '--prepare'], 300_000);
  } catch (e) {
    return { ok: false, reason: `cannot run bash ${KERNEL_VM_SCRIPT}: ${(e as Error).message}` };
  }
  if (r.code === 0) return { ok: true };
  if (r.code === EX_UNAVAILABLE) return { ok: false, reason: r.stderr.trim() };
  throw new Error(`kernel-vm.sh --prepare failed (exit ${r.code ?? r.signal}):\n${r.stdout}${r.stderr}`);
}

export class GuestReport {
  readonly lines: string[];
  private readonly map = new Map<string, string[]>();

  constructor(text: string) {
    this.lines = text.split('\n').filter((l) => l.length > 0);
    for (const line of this.lines) {
      const sp = line.indexOf(' ');
      const key = sp < 0 ? line : line.slice(0, sp);
      const value = sp < 0 ? '' : line.slice(sp + 1);
      const list = this.map.get(key) ?? [];
      list.push(value);
      this.map.set(key, list);
    }
  }

  /** The last value reported for key, or undefined. */
  get(key: string): string | undefined {
    return this.map.get(key)?.at(-1);
  }

  all(key: string): string[] {
    return this.map.get(key) ?? [];
  }

  /** Every line of one section (keys "PREFIX.*"), for failure messages. */
  section(prefix: string): string {
    return this.lines.filter((l) => l.startsWith(`${prefix}.`)).join('\n');
  }
}

export interface VmRun {
  /** The guest script's exit status; 124 when the VM did not finish. */
  status: number;
  report: GuestReport;
  /** The guest console (kernel log and the guest script's stderr). */
  console: string;
  /** kernel-vm.sh's own stderr (why the VM did not finish, qemu errors). */
  stderr: string;
  ms: number;
}

export interface VmOptions {
  env?: Record<string, string | number>;
  /** Seconds before kernel-vm.sh kills qemu. */
  timeoutS?: number;
  smp?: number;
  memMb?: number;
}

/** Boot the VM once, run `script` (a file of busybox sh) as root, power off. */
export async function runKernelVm(script: string, opts: VmOptions = {}): Promise<VmRun> {
  const dir = mkdtempSync(join(tmpdir(), 'nbdsnap-vm-'));
  const results = join(dir, 'results');
  const consoleLog = join(dir, 'console');
  const timeoutS = opts.timeoutS ?? 150;
  const args = [KERNEL_VM_SCRIPT, '--results', results, '--console', consoleLog, '--timeout', String(timeoutS)];
  if (opts.smp) args.push('--smp', String(opts.smp));
  if (opts.memMb) args.push('--mem', String(opts.memMb));
  for (const [k, v] of Object.entries(opts.env ?? {})) args.push('--env', `${k}=${v}`);
  args.push(script);
  const t0 = Date.now();
  try {
    const r = await run('bash', args, (timeoutS + 60) * 1000);
    const read = (f: string) => {
      try {
        return readFileSync(f, 'utf8').replaceAll('\r', '');
      } catch {
        return '';
      }
    };
    return {
      status: r.code ?? 124,
      report: new GuestReport(read(results)),
      console: read(consoleLog),
      stderr: r.stderr,
      ms: Date.now() - t0,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
