#!/usr/bin/env node
// abuse-clients.mjs: careless and hostile NBD clients, for the abuse benchmark (bench-abuse.sh)
// and test/interop/abuse.test.ts. Plain Node, raw sockets, any NBD server (nbdsnap, nbdkit,
// qemu-nbd): the newstyle handshake with NBD_OPT_EXPORT_NAME, then raw requests.
//
//   node scripts/abuse-clients.mjs --port P [--host H] [--export NAME]
//        [--write-stall N] [--write-size BYTES] [--write-sent BYTES]
//        [--read-unread N] [--reads K] [--read-size BYTES]
//        [--handshake N]
//
//   --write-stall N   N clients each send a WRITE header of --write-size (32 MiB) and
//                     --write-sent (31 MiB) of its payload, then stall (keep the socket open)
//   --read-unread N   N clients each send K (4) READs of --read-size (32 MiB) and never read
//   --handshake N     N sockets that connect and never answer the greeting
//
// Writes are sent piece by piece as the server reads them, so this process holds little memory.
// Prints one JSON line when every client is set up ("ready"), then a status line every second:
// bytes of WRITE payload sent, sockets closed by the server per kind, connections refused.
// Runs until SIGTERM / SIGINT.
import { connect } from 'node:net';

const args = process.argv.slice(2);
function opt(name, def) {
  const i = args.indexOf(`--${name}`);
  return i < 0 ? def : args[i + 1];
}
const num = (name, def) => Number(opt(name, String(def)));
const MiB = 1024 * 1024;
const host = opt('host', '127.0.0.1');
const port = num('port', 10809);
const exportName = opt('export', '');
const writeStall = num('write-stall', 0);
const writeSize = num('write-size', 32 * MiB);
const writeSent = num('write-sent', 31 * MiB);
const readUnread = num('read-unread', 0);
const reads = num('reads', 4);
const readSize = num('read-size', 32 * MiB);
const handshake = num('handshake', 0);

const PIECE = Buffer.alloc(256 * 1024, 0xa5);
const stats = {
  written: 0,
  closed: { write: 0, read: 0, handshake: 0 },
  failed: { write: 0, read: 0, handshake: 0 },
  setUp: { write: 0, read: 0, handshake: 0 },
};
const sockets = [];

function request(type, cookie, offset, length) {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(0, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(BigInt(cookie), 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return h;
}

/** Connect and get to transmission with NBD_OPT_EXPORT_NAME; resolves with the socket. */
function open(kind) {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    sockets.push(s);
    let buf = Buffer.alloc(0);
    let stage = 'greeting';
    let settled = false;
    const done = (ok) => {
      if (settled) return;
      settled = true;
      resolve(ok ? s : undefined);
    };
    s.on('error', () => undefined);
    s.once('close', () => {
      stats.closed[kind] += 1;
      if (!settled) stats.failed[kind] += 1;
      done(false);
    });
    const onData = (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (stage === 'greeting' && buf.length >= 18) {
        const flags = buf.readUInt16BE(16);
        buf = buf.subarray(18);
        const noZeroes = (flags & 2) !== 0;
        const cflags = Buffer.alloc(4);
        cflags.writeUInt32BE(1 | (noZeroes ? 2 : 0));
        const name = Buffer.from(exportName);
        const opt = Buffer.alloc(16);
        opt.writeBigUInt64BE(0x49484156454f5054n, 0);
        opt.writeUInt32BE(1, 8); // NBD_OPT_EXPORT_NAME
        opt.writeUInt32BE(name.length, 12);
        s.write(Buffer.concat([cflags, opt, name]));
        stage = noZeroes ? 10 : 134;
      }
      if (typeof stage === 'number' && buf.length >= stage) {
        s.off('data', onData);
        done(true);
      }
    };
    s.on('data', onData);
  });
}

async function writeStaller() {
  const s = await open('write');
  if (s === undefined) return;
  s.write(request(1, 1, 0, writeSize));
  stats.setUp.write += 1;
  let left = writeSent;
  while (left > 0 && !s.destroyed) {
    const n = Math.min(left, PIECE.length);
    const flushed = s.write(n === PIECE.length ? PIECE : PIECE.subarray(0, n), (err) => {
      if (err == null) stats.written += n;
    });
    left -= n;
    if (!flushed) {
      await new Promise((r) => {
        const go = () => {
          s.off('drain', go).off('close', go);
          r();
        };
        s.on('drain', go).on('close', go);
      });
    }
  }
}

async function readHog() {
  const s = await open('read');
  if (s === undefined) return;
  s.pause(); // never read a reply
  for (let i = 0; i < reads; i += 1) s.write(request(0, i + 1, 0, readSize));
  stats.setUp.read += 1;
}

function idleHandshake() {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    sockets.push(s);
    s.on('error', () => undefined);
    s.once('connect', () => {
      stats.setUp.handshake += 1;
      s.on('data', () => undefined); // read the greeting (to see the close), never answer it
      resolve();
    });
    s.once('close', () => {
      stats.closed.handshake += 1;
      resolve();
    });
  });
}

const line = (o) => process.stdout.write(`${JSON.stringify({ t: Date.now(), ...o })}\n`);

const started = [];
for (let i = 0; i < writeStall; i += 1) started.push(writeStaller().catch(() => undefined));
// WRITE stallers run in the background (their payload flows as the server reads); the others set up.
const setups = [];
for (let i = 0; i < readUnread; i += 1) setups.push(readHog());
for (let i = 0; i < handshake; i += 1) setups.push(idleHandshake());
await Promise.all(setups);
// Ready once every WRITE header is out too.
while (stats.setUp.write + stats.failed.write < writeStall) await new Promise((r) => setTimeout(r, 50));
line({ ...stats, ready: true });
const timer = setInterval(() => line(stats), 1000);

function stop() {
  clearInterval(timer);
  line({ ...stats, final: true });
  for (const s of sockets) s.destroy();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
