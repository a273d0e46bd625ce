/**
 * TEST ONLY: named points where the process kills itself with SIGKILL, for crash tests that need
 * a crash at an exact step (test/store/checkpoint-crash.test.ts). Set
 * `NBDSNAP_TEST_KILL_AT=<point>` (the first time it is reached) or `<point>@N` (the Nth time);
 * unset (always, outside tests) nothing happens. Points:
 *
 * - `checkpoint:blocks-written`: a checkpoint's new journal is durable, range 0's label does not
 *   name it yet (the old journal is authoritative);
 * - `checkpoint:label-written`: the label names the new journal, the old one's slots are not
 *   released yet;
 * - `checkpoint:old-released`: the old journal's slots were released (free for reuse);
 * - `checkpoint:old-reused`: a batch committed after slots of the replaced journal were reused
 *   (for data or journal blocks);
 * - `copy:slots-written`: a group of copies was written into the store file (slot-writer.ts),
 *   their records are not committed yet.
 */
export const KILL_ENV = 'NBDSNAP_TEST_KILL_AT';

/** Times each point was reached in this process. */
const reached = new Map<string, number>();

/** `<point>` kills the first time the point is reached, `<point>@N` the Nth time. */
export function killPoint(point: string): void {
  const want = process.env[KILL_ENV];
  if (want === undefined || !want.startsWith(point)) return;
  const n = (reached.get(point) ?? 0) + 1;
  reached.set(point, n);
  if (want === point || want === `${point}@${n}`) process.kill(process.pid, 'SIGKILL');
}
