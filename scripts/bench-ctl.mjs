#!/usr/bin/env node
// bench-ctl.mjs: the control-socket requests scripts/bench.sh needs timed more finely than the CLI
// allows (`nbdsnap merge --wait` polls once a second). Speaks the JSON-lines protocol of
// src/control/README.md directly, on one connection.
//
//   node scripts/bench-ctl.mjs merge CONTROL DEVICE SNAP [POLL_MS [SPEED]]
//     start merging DEVICE@SNAP (at SPEED bytes/s if given, the merge rate limit), poll merge.status every POLL_MS (10) until the merge is gone;
//     prints {"start": epoch ms, "end": epoch ms, "seconds", "chunks", "bytes"} on stdout.
//     Exit 1 if the merge fails.
import { connect } from 'node:net';

const [cmd, path, device, name, pollArg, speedArg] = process.argv.slice(2);
if (cmd !== 'merge' || !path || !device || !name) {
  console.error('usage: bench-ctl.mjs merge CONTROL DEVICE SNAP [POLL_MS [SPEED]]');
  process.exit(2);
}
const pollMs = Number(pollArg ?? 10);

const socket = connect({ path });
const waiting = new Map();
let nextId = 1;
let buffer = '';
socket.on('data', (chunk) => {
  buffer += chunk.toString('utf8');
  for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
    const msg = JSON.parse(buffer.slice(0, nl));
    buffer = buffer.slice(nl + 1);
    const w = waiting.get(msg.id);
    if (w === undefined) continue;
    waiting.delete(msg.id);
    if (msg.ok) w.resolve(msg.result);
    else w.reject(new Error(`${msg.error.code}: ${msg.error.message}`));
  }
});
const ready = new Promise((resolve, reject) => {
  socket.once('connect', resolve);
  socket.once('error', reject);
});
const call = (c, args = {}) =>
  new Promise((resolve, reject) => {
    const id = nextId++;
    waiting.set(id, { resolve, reject });
    socket.write(`${JSON.stringify({ id, cmd: c, args })}\n`);
  });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

try {
  await ready;
  const status = await call('status');
  const chunkSize = status.devices.find((d) => d.name === device)?.chunkSize ?? status.store.chunkSize;
  const snapshot = `${device}@${name}`;
  const start = Date.now();
  const speed = speedArg === undefined ? {} : { speed: Number(speedArg) };
  const started = await call('merge.start', { device, name, onNextStart: false, ...speed });
  const chunks = started.total ?? 0;
  for (;;) {
    const p = (await call('merge.status')).find((x) => x.snapshot === snapshot);
    if (p === undefined) break;
    if (p.state === 'failed') throw new Error(`merge failed at chunk ${p.failedChunk}: ${p.error}`);
    await sleep(pollMs);
  }
  const end = Date.now();
  console.log(JSON.stringify({ start, end, seconds: (end - start) / 1000, chunks, bytes: chunks * chunkSize }));
  socket.end();
} catch (err) {
  console.error(`bench-ctl.mjs: ${err.message}`);
  process.exit(1);
}
