/**
 * Progress on stderr for backup, restore and undo: a bar redrawn in place on a terminal, plain
 * lines every 10% otherwise, or `--progress=json`: one JSON object a line
 * (`{"type":"start"|"progress"|"done", "phase", "done", "total", ...}`, at least every 1%),
 * for scripts and tests. `none` is silent.
 */

export type ProgressMode = 'auto' | 'bar' | 'plain' | 'json' | 'none';
export const PROGRESS_MODES: readonly ProgressMode[] = ['auto', 'bar', 'plain', 'json', 'none'];

interface Sink {
  write(s: string): unknown;
  isTTY?: boolean;
}

const mib = (n: number): string => (n / 1048576).toFixed(1);

export class Progress {
  private readonly mode: Exclude<ProgressMode, 'auto'>;
  private readonly out: Sink;
  private phase = '';
  private total = 0;
  private done = 0;
  private started = 0;
  private lastStep = -1;
  private lastDraw = 0;

  constructor(mode: ProgressMode = 'auto', out: Sink = process.stderr) {
    this.out = out;
    this.mode = mode === 'auto' ? (out.isTTY === true ? 'bar' : 'plain') : mode;
  }

  start(phase: string, total: number, extra: Record<string, unknown> = {}): void {
    this.phase = phase;
    this.total = total;
    this.done = 0;
    this.lastStep = -1;
    this.started = Date.now();
    if (this.mode === 'json') this.json({ type: 'start', phase, total, ...extra });
    else if (this.mode === 'plain') this.out.write(`nbdsnap: ${phase}: ${mib(total)} MiB to go\n`);
    this.report();
  }

  add(bytes: number): void {
    this.done += bytes;
    this.report();
  }

  finish(extra: Record<string, unknown> = {}): void {
    this.done = this.total;
    const seconds = (Date.now() - this.started) / 1000;
    if (this.mode === 'json')
      this.json({ type: 'done', phase: this.phase, done: this.done, total: this.total, ...extra });
    else if (this.mode === 'bar') {
      this.draw();
      this.out.write('\n');
    } else if (this.mode === 'plain')
      this.out.write(`nbdsnap: ${this.phase}: done, ${mib(this.total)} MiB in ${seconds.toFixed(1)} s\n`);
  }

  /** Leave a bar's line before an error message is printed. */
  abort(): void {
    if (this.mode === 'bar' && this.lastDraw > 0) this.out.write('\n');
  }

  private report(): void {
    const pct = this.total === 0 ? 100 : Math.floor((100 * this.done) / this.total);
    if (this.mode === 'json') {
      if (pct === this.lastStep) return;
      this.lastStep = pct;
      this.json({ type: 'progress', phase: this.phase, done: this.done, total: this.total, percent: pct });
    } else if (this.mode === 'plain') {
      const step = Math.floor(pct / 10);
      if (step === this.lastStep || step === 0 || step === 10) return;
      this.lastStep = step;
      this.out.write(`nbdsnap: ${this.phase}: ${step * 10}% (${mib(this.done)} of ${mib(this.total)} MiB)\n`);
    } else if (this.mode === 'bar') {
      const now = Date.now();
      if (now - this.lastDraw < 100 && this.done < this.total) return;
      this.draw();
    }
  }

  private draw(): void {
    this.lastDraw = Date.now();
    const frac = this.total === 0 ? 1 : this.done / this.total;
    const width = 30;
    const filled = Math.round(frac * width);
    const secs = Math.max(0.001, (Date.now() - this.started) / 1000);
    const rate = this.done / 1048576 / secs;
    this.out.write(
      `\r${this.phase} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ` +
        `${mib(this.done)}/${mib(this.total)} MiB ${rate.toFixed(1)} MiB/s\x1b[K`,
    );
  }

  private json(o: Record<string, unknown>): void {
    this.out.write(`${JSON.stringify(o)}\n`);
  }
}
