#!/usr/bin/env node
// cpuprofile-top.mjs: summarise V8 .cpuprofile files (from `node --cpu-prof`): the functions with
// the most self time and the most total (inclusive) time, aggregated by function name + url + line.
//
//   node scripts/cpuprofile-top.mjs [--top N] [--exclude-idle] FILE.cpuprofile...
//
// Self time of a sample goes to the innermost frame; total time goes once to every distinct
// function on the sample's stack. "(idle)" is the event loop waiting, "(program)" native code V8
// cannot attribute (libuv, syscalls made on the main thread), "(garbage collector)" GC pauses.
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';

const args = process.argv.slice(2);
let top = 25;
let excludeIdle = false;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--top') top = Number(args[++i]);
  else if (args[i] === '--exclude-idle') excludeIdle = true;
  else files.push(args[i]);
}
if (files.length === 0) {
  console.error('usage: cpuprofile-top.mjs [--top N] [--exclude-idle] FILE.cpuprofile...');
  process.exit(2);
}

const self = new Map();
const total = new Map();
let all = 0;

function label(frame) {
  let url = frame.url ?? '';
  if (url.startsWith('file://')) url = relative(process.cwd(), new URL(url).pathname);
  const name = frame.functionName || '(anonymous)';
  return url === '' ? name : `${name} ${url}:${frame.lineNumber + 1}`;
}

for (const file of files) {
  const prof = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map();
  const parent = new Map();
  for (const n of prof.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const labels = new Map([...byId].map(([id, n]) => [id, label(n.callFrame)]));
  for (let i = 0; i < prof.samples.length; i++) {
    const id = prof.samples[i];
    const dt = (prof.timeDeltas[i] ?? 0) / 1000; // ms
    const l = labels.get(id);
    if (excludeIdle && l === '(idle)') continue;
    all += dt;
    self.set(l, (self.get(l) ?? 0) + dt);
    const seen = new Set();
    for (let n = id; n !== undefined; n = parent.get(n)) {
      const ln = labels.get(n);
      if (seen.has(ln) || ln === '(root)') continue;
      seen.add(ln);
      total.set(ln, (total.get(ln) ?? 0) + dt);
    }
  }
}

function print(title, map) {
  console.log(`\n${title} (of ${all.toFixed(0)} ms sampled${excludeIdle ? ', idle excluded' : ''})`);
  console.log('      ms      %  function');
  const rows = [...map].sort((a, b) => b[1] - a[1]).slice(0, top);
  for (const [l, ms] of rows) {
    console.log(`${ms.toFixed(0).padStart(8)} ${((100 * ms) / all).toFixed(1).padStart(6)}  ${l}`);
  }
}
print('self time', self);
print('total time', total);
