/**
 * Change tracking at scale, without a server: heap of a tracker with ERAS eras on a DEVICE-byte
 * device with MARKS scattered marked blocks, the time of `changed()` over the whole device, and
 * the time of a `qemu:dirty-bitmap` block status walk over the whole device in REQUEST-byte
 * requests (at most MAX_REQUESTS of them; the total is extrapolated from those when capped).
 *
 *   node --expose-gc --import tsx scripts/cbt-scale.ts [MARKS] [MAX_REQUESTS]
 */
import type { CbtState, RecordSink } from '../src/cbt/cbt-control.ts';
import { CbtControl } from '../src/cbt/cbt-control.ts';
import { CbtTracker } from '../src/cbt/tracker.ts';
import { rng } from '../test/helpers/random.ts';
import { liveBytes as heap } from './heap.ts';

const TiB = 2 ** 40;
const DEVICE = 15 * TiB;
const BLOCK = 64 * 1024;
const ERAS = 6;
const MARKS = Number(process.argv[2] ?? 20_000);
const MAX_REQUESTS = Number(process.argv[3] ?? 1_000_000);
const REQUEST = 2 ** 32 - BLOCK; // the largest block status request a client may make, block aligned

function build(): CbtTracker {
  const random = rng(12345); // the same blocks each build, so before and after mark the same
  const tracker = new CbtTracker(DEVICE, BLOCK, 'gen');
  for (let i = 0; i < MARKS; i++) {
    const era = 1 + Math.floor(random() * ERAS);
    tracker.mark(era, Math.floor(random() * tracker.blockCount), 1);
  }
  return tracker;
}

build(); // once first, so code and one-time allocations are not counted
const before = heap();
let t = performance.now();
const tracker = build();
const buildMs = performance.now() - t;
const after = heap();
console.log(`tracker: ${ERAS} eras, ${MARKS} marks, ${tracker.blockCount} blocks, built in ${buildMs.toFixed(0)} ms`);
console.log(`heap delta: ${((after - before) / 2 ** 20).toFixed(2)} MiB`);
const footprint = (tracker as { footprint?: () => unknown }).footprint?.();
if (footprint !== undefined) console.log(`footprint: ${JSON.stringify(footprint)}`);

t = performance.now();
let runs = 0;
for (const _ of tracker.changed(0).runs()) runs++;
console.log(`changed(0) over the whole device: ${(performance.now() - t).toFixed(1)} ms, ${runs} runs`);

const state: CbtState = {
  trackers: new Map([[1, tracker]]),
  bookmarks: new Map([[1, new Map([['a', 0]])]]),
  nextSeq: ERAS + 1,
};
const sink: RecordSink = { record: async () => undefined };
const control = new CbtControl(state, sink, true);
await control.add('dev', 1, DEVICE, BLOCK);
const context = control.dirtyContexts('dev', ERAS + 1)[0];
if (context === undefined) throw new Error('no dirty-bitmap context');
t = performance.now();
let requests = 0;
let extents = 0;
let dirty = 0;
for (let pos = 0; pos < DEVICE && requests < MAX_REQUESTS; pos += REQUEST, requests++) {
  for (const e of await context.extents(pos, Math.min(REQUEST, DEVICE - pos))) {
    extents++;
    if (e.flags === 1) dirty += e.length;
  }
}
const ms = performance.now() - t;
const all = Math.ceil(DEVICE / REQUEST);
const total = (ms * all) / requests;
console.log(
  `dirty-bitmap walk: ${requests}/${all} requests in ${ms.toFixed(1)} ms, ${extents} extents, ${dirty / BLOCK} dirty blocks; whole device ${requests < all ? 'about ' : ''}${(total / 1000).toFixed(2)} s`,
);
console.log(`peak RSS: ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`);
