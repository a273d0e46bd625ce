/**
 * A queue that runs one piece of work at a time, in call order: the control commands that change
 * snapshots (they hold writes and commit records) never interleave. A failed piece of work
 * rejects its own caller only; the queue goes on.
 */
export class Serial {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(work: () => Promise<T>): Promise<T> {
    const run = this.tail.then(work, work);
    this.tail = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }
}
