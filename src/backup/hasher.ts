/**
 * SHA-256 of a file being written, in order, optionally off the main thread: `workerHasher`
 * copies what it is given into 4 MiB batches and hands each batch (transferred, not copied again)
 * to a worker thread that hashes it and hands it back for the next batch, so a large backup's hashing runs beside its reading,
 * framing and writing. `settle()` bounds the batches in flight (the writer awaits it before each
 * write). `inlineHasher` hashes on the calling thread (small files: no worker to start).
 */
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { NbdsnapError } from '../errors.ts';

export interface Hasher {
  update(bytes: Buffer): void;
  /** Resolves when few enough batches are in flight (memory stays bounded). */
  settle(): Promise<void>;
  /** The SHA-256 of everything given so far (the hasher may still be updated after). */
  digest(): Promise<Buffer>;
  close(): Promise<void>;
}

export function inlineHasher(): Hasher {
  const h = createHash('sha256');
  return {
    update: (b) => {
      h.update(b);
    },
    settle: async () => undefined,
    digest: async () => h.copy().digest(),
    close: async () => undefined,
  };
}

const BATCH = 4 * 1024 * 1024;
const MAX_IN_FLIGHT = 4;

/** CommonJS, run with `eval`: hashes every ArrayBuffer it gets, and gives it back for reuse. */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const h = createHash('sha256');
parentPort.on('message', (m) => {
  if (m.digest === true) parentPort.postMessage({ digest: h.copy().digest() });
  else {
    h.update(new Uint8Array(m.buffer, 0, m.length));
    parentPort.postMessage({ done: m.length, buffer: m.buffer }, [m.buffer]);
  }
});
`;

export function workerHasher(): Hasher {
  const worker = new Worker(WORKER_SOURCE, { eval: true });
  worker.unref();
  let batch: Buffer = Buffer.allocUnsafeSlow(BATCH);
  const free: Buffer[] = [];
  let used = 0;
  let inFlight = 0;
  let failure: Error | undefined;
  const waiting: (() => void)[] = [];
  let digestWaiter: { resolve: (d: Buffer) => void; reject: (e: Error) => void } | undefined;
  const wake = () => {
    for (const w of waiting.splice(0)) w();
  };
  worker.on('message', (m: { done?: number; buffer?: ArrayBuffer; digest?: Uint8Array }) => {
    if (m.done !== undefined) {
      inFlight -= 1;
      if (m.buffer !== undefined) free.push(Buffer.from(m.buffer));
      wake();
    } else if (m.digest !== undefined) {
      digestWaiter?.resolve(Buffer.from(m.digest));
      digestWaiter = undefined;
    }
  });
  const fail = (err: Error) => {
    failure ??= new NbdsnapError('EIO', `hashing thread failed: ${err.message}`);
    digestWaiter?.reject(failure);
    digestWaiter = undefined;
    wake();
  };
  worker.on('error', fail);
  worker.on('exit', () => fail(new Error('exited')));
  const post = () => {
    if (used === 0) return;
    const ab = batch.buffer as ArrayBuffer;
    worker.postMessage({ buffer: ab, length: used }, [ab]);
    inFlight += 1;
    batch = free.pop() ?? Buffer.allocUnsafeSlow(BATCH);
    used = 0;
  };
  const check = () => {
    if (failure !== undefined) throw failure;
  };
  return {
    update(bytes) {
      for (let at = 0; at < bytes.length; ) {
        const n = bytes.copy(batch, used, at);
        used += n;
        at += n;
        if (used === BATCH) post();
      }
    },
    async settle() {
      for (check(); inFlight > MAX_IN_FLIGHT; check()) await new Promise<void>((r) => waiting.push(r));
    },
    async digest() {
      post();
      check();
      const d = new Promise<Buffer>((resolve, reject) => {
        digestWaiter = { resolve, reject };
      });
      worker.postMessage({ digest: true });
      return d;
    },
    async close() {
      worker.removeAllListeners('exit');
      await worker.terminate();
    },
  };
}
