/**
 * `nbdsnap backup nbd://HOST:PORT/DEVICE@SNAP FILE [--since FROM]`: read a snapshot over NBD with
 * the project's own client and write a full backup, or an incremental holding only what changed
 * since FROM (a snapshot name, or a previous backup file whose to-snapshot becomes FROM).
 *
 * 1. Facts (point, time, generation, block size) by LIST_META_CONTEXT "x-nbdsnap:"; contexts
 *    `base:allocation` and, for an incremental, `qemu:dirty-bitmap:FROM`.
 * 2. Block status over the whole device -> a plan (plan.ts).
 * 3. Incrementals: SHA-256 fingerprints of a spread of unchanged blocks (restore checks the
 *    target against them), and, when DEVICE@FROM is still exported, each DATA piece trimmed of
 *    the leading and trailing sectors equal to FROM's (sheepdog).
 * 4. Pieces read with a bounded number in flight, records written in device order to a
 *    temporary file, renamed when complete (writer.ts).
 *
 * Nothing on the server is consumed or moved: change tracking is queried by snapshot point, so
 * a failed or interrupted backup loses nothing, and the base of the next incremental is just
 * whatever backup the user names, i.e. the last one that completed.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { NbdClient } from '../client/nbd-client.ts';
import { errorMessage, NbdsnapError } from '../errors.ts';
import { TransmissionFlag } from '../nbd-protocol/index.ts';
import {
  BACKUP_MAGIC,
  type BackupHeader,
  type EndTotals,
  encodeHeader,
  FORMAT_VERSION,
  PIECE,
  RecordType,
  SECTOR,
} from './format.ts';
import { BufferPool, orderedMap } from './pipeline.ts';
import { type AbsExtent, chooseSamples, type PlanItem, planRanges, TrimPolicy, trimUnchanged } from './plan.ts';
import { Progress } from './progress.ts';
import { BackupReader } from './reader.ts';
import { isS3Url } from './s3-url.ts';
import {
  BASE_ALLOCATION,
  dirtyContext,
  FACTS_QUERY,
  mapContexts,
  type OpenedSnapshot,
  openReader,
  openSnapshot,
  parseFacts,
  parseSnapshotUri,
  type Reader,
} from './source.ts';
import { PendingFile } from './writer.ts';

export interface BackupOptions {
  /** nbd://HOST:PORT/DEVICE@SNAP */
  source: string;
  file: string;
  /** A snapshot name (or DEVICE@NAME) of the same device, or a previous backup file. */
  since?: string | undefined;
  progress?: Progress | undefined;
  /** Reads in flight (default 16). */
  depth?: number | undefined;
  /** Connections data is read over (default 2). */
  connections?: number | undefined;
  /** Hash the file on a worker thread from this many planned bytes (default 128 MiB). */
  hashInWorkerFrom?: number | undefined;
  /** Unchanged blocks fingerprinted in an incremental (default 128). */
  samples?: number | undefined;
  signal?: AbortSignal | undefined;
}

export interface BackupResult {
  header: BackupHeader;
  totals: EndTotals;
  sha256: string;
  /** Bytes the plan covered (changed bytes, for an incremental). */
  plannedBytes: number;
  /** Unchanged sectors left out of DATA records by trimming. */
  trimmedBytes: number;
}

const ZEROES = Buffer.alloc(PIECE);
/** Size of the READ requests a piece is read with. */
const READ_SIZE = 256 * 1024;
/** Backups of at least this many bytes are hashed on a worker thread. */
const HASH_IN_WORKER_FROM = 128 * 1024 * 1024;
/** Errors of the I/O kind get the "backup failed" prefix; refusals are clear as they are. */
const ERRNO = new Set(['EPERM', 'EIO', 'ENOMEM', 'EINVAL', 'ENOSPC', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN']);
const isZero = (b: Buffer): boolean => b.equals(ZEROES.subarray(0, b.length));

interface Base {
  name: string;
  point: number;
  created: number;
  generation: string | undefined;
  file: string | undefined;
}

/** FROM as the user named it: a backup file (its to-snapshot) or a snapshot name. */
async function resolveSince(since: string, device: string): Promise<Base> {
  let isFile = isS3Url(since);
  try {
    isFile = statSync(since).isFile();
  } catch {
    // not a file: a snapshot name
  }
  if (isFile) {
    const r = await BackupReader.open(since);
    await r.close();
    const h = r.header;
    if (h.device !== device)
      throw new NbdsnapError('BAD_ARGUMENT', `${since} is a backup of device ${h.device}, not ${device}`);
    return { name: h.toName, point: h.toPoint, created: h.toCreated, generation: h.generation, file: since };
  }
  const at = since.lastIndexOf('@');
  if (at >= 0 && since.slice(0, at) !== device)
    throw new NbdsnapError('BAD_ARGUMENT', `--since ${since}: not a snapshot of ${device}`);
  const name = at >= 0 ? since.slice(at + 1) : since;
  if (name === '') throw new NbdsnapError('BAD_ARGUMENT', '--since needs a snapshot name or a backup file');
  return { name, point: 0, created: 0, generation: undefined, file: undefined };
}

export async function backup(opts: BackupOptions): Promise<BackupResult> {
  const progress = opts.progress ?? new Progress('none');
  const { device, snapshot, uriFor } = parseSnapshotUri(opts.source);
  if (existsSync(opts.file)) throw new NbdsnapError('EXISTS', `${opts.file} already exists (not overwritten)`);
  const base = opts.since === undefined ? undefined : await resolveSince(opts.since, device);
  const dirtyName = base === undefined ? undefined : dirtyContext(base.name);
  const contexts = dirtyName === undefined ? [BASE_ALLOCATION] : [BASE_ALLOCATION, dirtyName];
  const open: { close(): Promise<void> }[] = [];
  let pending: PendingFile | undefined;
  try {
    // FROM's facts connection is opened beside TO's (its round trips overlap); it is closed with
    // the others whatever happens, and its errors count where they did when it was opened later.
    const fromOpening =
      base === undefined ? undefined : openSnapshot(uriFor(`${device}@${base.name}`), [], true);
    fromOpening?.catch(() => undefined);
    if (fromOpening !== undefined)
      open.push({ close: async () => (await fromOpening.catch(() => undefined))?.client.close() });
    let to: OpenedSnapshot;
    try {
      to = (await openSnapshot(opts.source, contexts)) as OpenedSnapshot;
    } catch (err) {
      if (dirtyName !== undefined && errorMessage(err).includes(dirtyName))
        throw new NbdsnapError(
          'NOT_FOUND',
          `the server tracks no changes from ${device}@${base?.name} to ${device}@${snapshot} ` +
            `(no ${dirtyName}); FROM must be an earlier snapshot of ${device}, or a deleted one whose point the ` +
            `server still keeps (nbdsnap cbt points ${device}), else take a full backup`,
        );
      throw err;
    }
    open.push(to.client);
    const size = to.client.size;
    let fromPoint = 0;
    let fromCreated = 0;
    let from: OpenedSnapshot | undefined;
    let bitmapPoint: number | undefined;
    if (base !== undefined) {
      if (to.facts.generation === '')
        throw new NbdsnapError('BAD_CONFIG', `the server does not track changes of ${device}: take a full backup`);
      if (base.generation !== undefined && base.generation !== to.facts.generation)
        throw new NbdsnapError(
          'BAD_ARGUMENT',
          `change tracking of ${device} was reset since ${base.file} (generation ${base.generation}, now ` +
            `${to.facts.generation}): a full backup is needed`,
        );
      // The point qemu:dirty-bitmap:FROM counts from (undefined from a server that does not say):
      // FROM's snapshot may be gone and its name taken again since the file was written.
      bitmapPoint = to.facts.bitmapPoints.get(base.name);
      if (base.file !== undefined && bitmapPoint !== undefined && bitmapPoint !== base.point)
        throw reusedName(device, base, bitmapPoint);
      from = await fromOpening;
      if (from !== undefined) {
        if (from.client.size !== size)
          throw new NbdsnapError('BAD_ARGUMENT', `${device}@${base.name} has another size`);
        if (base.file !== undefined && from.facts.point !== base.point)
          throw reusedName(device, base, from.facts.point);
        if (bitmapPoint !== undefined && from.facts.point !== bitmapPoint) throw movedName(device, base.name);
        fromPoint = from.facts.point;
        fromCreated = from.facts.created;
      } else {
        fromPoint = bitmapPoint ?? base.point;
        fromCreated = base.created;
      }
      if (fromPoint !== 0 && fromPoint >= to.facts.point)
        throw new NbdsnapError('BAD_ARGUMENT', `${device}@${base.name} is not older than ${device}@${snapshot}`);
    }

    // Trim only against a read-only FROM: a writable one may have been written since it was
    // backed up, and its sectors would no longer be what the restore target holds.
    const trimBase =
      from !== undefined && (from.client.transmissionFlags & TransmissionFlag.READ_ONLY) !== 0 ? from : undefined;
    // Data is read over connections of its own, without structured replies (one copy less per
    // byte, no zero-filled reply buffers), spread over `connections`; FROM's data (for trimming)
    // over a plain connection too, when the relist below can confirm which snapshot it reads (its
    // name's change-tracking point), else over its facts connection. The block status and the
    // connections are all under way at once: each is a few round trips, and on a loaded machine
    // every round trip waits for the server to be scheduled.
    const fromUri = trimBase !== undefined && bitmapPoint !== undefined ? uriFor(`${device}@${base?.name}`) : undefined;
    const uris = Array.from({ length: Math.max(1, opts.connections ?? 2) }, () => opts.source);
    if (fromUri !== undefined) uris.push(fromUri);
    const [mapsDone, ...opened] = await Promise.allSettled([
      mapContexts(to.client, contexts),
      ...uris.map((u) => openReader(u)),
    ]);
    for (const o of opened) if (o.status === 'fulfilled') open.push(o.value as Reader);
    for (const o of [mapsDone, ...opened]) if (o.status === 'rejected') throw o.reason;
    const maps = (mapsDone as PromiseFulfilledResult<Map<string, AbsExtent[]>>).value;
    const readers = opened.map((o) => (o as PromiseFulfilledResult<Reader>).value);
    const fromReader = fromUri === undefined ? undefined : readers.pop();
    if (readers.some((c) => c.size !== size))
      throw new NbdsnapError('BUSY', `${device}@${snapshot} changed size while the backup started`);
    if (fromReader !== undefined && fromReader.size !== size) throw movedName(device, base?.name ?? '');
    const plan = planRanges(
      size,
      maps.get(BASE_ALLOCATION) ?? [],
      dirtyName === undefined ? undefined : maps.get(dirtyName),
    );
    let readFrom: ((offset: number, length: number, into?: Buffer) => Promise<Buffer>) | undefined;
    if (fromReader !== undefined) readFrom = spread([fromReader]);
    else if (trimBase !== undefined) readFrom = (offset, length) => trimBase.client.read(offset, length);
    // The bitmap and the readers were bound after the facts were listed: the same points listed
    // again now mean they were bound to them (a name only ever moves to a newer point). The
    // listing runs beside the reads (its round trips off the critical path) and is checked
    // before the file is committed: a file is never made from reads it did not confirm.
    const relisting = NbdClient.listMetaContexts(opts.source, [FACTS_QUERY]);
    relisting.catch(() => undefined);
    const confirm = async () => {
      const now = parseFacts(await relisting);
      if (now.point !== to.facts.point)
        throw new NbdsnapError('BUSY', `${device}@${snapshot} was replaced while the backup started: try again`);
      if (base !== undefined && bitmapPoint !== undefined && now.bitmapPoints?.get(base.name) !== bitmapPoint)
        throw movedName(device, base.name);
    };
    const readTo = spread(readers);
    const pool = new BufferPool(PIECE);
    const header: BackupHeader = {
      version: FORMAT_VERSION,
      kind: base === undefined ? 'full' : 'incremental',
      deviceSize: size,
      blockSize: to.facts.blockSize,
      sectorSize: SECTOR,
      toPoint: to.facts.point,
      toCreated: to.facts.created,
      fromPoint,
      fromCreated,
      startedAt: Date.now(),
      backupId: randomBytes(16).toString('hex'),
      device,
      toName: snapshot,
      fromName: base?.name ?? '',
      generation: to.facts.generation,
      source: opts.source,
    };
    pending = await PendingFile.create(opts.file, BACKUP_MAGIC, {
      signal: opts.signal,
      hashInWorker: plan.totalBytes >= (opts.hashInWorkerFrom ?? HASH_IN_WORKER_FROM),
    });
    const w = pending.writer;
    await w.add({ type: RecordType.HEAD, offset: 0, length: size, payload: encodeHeader(header) });

    const depth = opts.depth ?? 16;
    if (base !== undefined) {
      const picks = chooseSamples(plan.clean, to.facts.blockSize || 65536, size, opts.samples ?? 128);
      const sample = async (p: { offset: number; length: number }) => {
        const piece = p.length <= PIECE ? pool.take() : undefined;
        return { ...p, piece, data: await readTo(p.offset, p.length, piece) };
      };
      for await (const s of orderedMap(picks, depth, sample)) {
        const sha = createHash('sha256').update(s.data).digest();
        if (s.piece !== undefined) pool.give(s.piece);
        await w.add({ type: RecordType.SMPL, offset: s.offset, length: s.length, payload: sha });
      }
    }

    progress.start('backup', plan.totalBytes, { source: opts.source, file: opts.file, kind: header.kind });
    let trimmedBytes = 0;
    const trim = new TrimPolicy();
    const read = async (item: PlanItem) => {
      if (item.kind !== 'data') return { item, now: undefined, before: undefined, piece: undefined, old: undefined };
      const piece = pool.take();
      const from = readFrom !== undefined && trim.wants() ? readFrom : undefined;
      const old = from === undefined ? undefined : pool.take();
      const [now, before] = await Promise.all([
        readTo(item.offset, item.length, piece),
        // FROM unreadable (e.g. invalidated by a full store): no trimming, nothing else lost
        from?.(item.offset, item.length, old).catch(() => undefined),
      ]);
      return { item, now, before, piece, old };
    };
    for await (const { item, now, before, piece, old } of orderedMap(plan.items, depth, read)) {
      opts.signal?.throwIfAborted();
      pool.release(w.written);
      if (old !== undefined && before === undefined) pool.give(old);
      if (item.kind === 'zero' || item.kind === 'disc') {
        const type = item.kind === 'zero' ? RecordType.ZERO : RecordType.DISC;
        await w.add({ type, offset: item.offset, length: item.length, payload: Buffer.alloc(0) });
      } else if (now !== undefined) {
        let offset = item.offset;
        let data = now;
        if (before !== undefined) {
          const t = trimUnchanged(item.offset, now, before);
          if (old !== undefined) pool.give(old);
          const kept = t === undefined ? 0 : t.end - t.start;
          trim.record(item.length, kept);
          trimmedBytes += item.length - kept;
          if (t === undefined) {
            if (piece !== undefined) pool.give(piece);
            progress.add(item.length);
            continue;
          }
          offset = item.offset + t.start;
          data = now.subarray(t.start, t.end);
        }
        if (isZero(data)) await w.add({ type: RecordType.ZERO, offset, length: data.length, payload: Buffer.alloc(0) });
        else await w.add({ type: RecordType.DATA, offset, length: data.length, payload: data });
        // the piece is free again once the writer has written this record
        if (piece !== undefined) pool.hold(piece, w.position);
      }
      progress.add(item.length);
    }
    await confirm();
    const totals = { ...w.totals };
    const digest = await pending.commit();
    pending = undefined;
    progress.finish({ file: opts.file, records: totals.records, dataBytes: totals.dataBytes });
    return { header, totals, sha256: digest.toString('hex'), plannedBytes: plan.totalBytes, trimmedBytes };
  } catch (err) {
    progress.abort();
    await pending?.discard();
    const what = `backup of ${device}@${snapshot} failed, ${opts.file} not written`;
    if ((err as Error).name === 'AbortError') throw new NbdsnapError('EIO', `${what}: interrupted`);
    if (err instanceof NbdsnapError && !ERRNO.has(err.code)) throw err;
    throw new NbdsnapError(err instanceof NbdsnapError ? err.code : 'EIO', `${what}: ${errorMessage(err)}`);
  } finally {
    await Promise.all(open.map(closeQuietly));
  }
}

/**
 * Reads spread over `readers` in turn; a read into a buffer of more than READ_SIZE bytes is
 * split into requests of READ_SIZE, each into its part of the buffer: the server allocates less
 * per request (its garbage collection and page faults cost less than with 1 MiB requests).
 */
function spread(readers: Reader[]): (offset: number, length: number, into?: Buffer) => Promise<Buffer> {
  let turn = 0;
  const one = (offset: number, length: number, into?: Buffer) =>
    (readers[turn++ % readers.length] as Reader).read(offset, length, into);
  return async (offset, length, into) => {
    if (into === undefined || length <= READ_SIZE) return one(offset, length, into);
    const parts: Promise<Buffer>[] = [];
    for (let at = 0; at < length; at += READ_SIZE) {
      const n = Math.min(READ_SIZE, length - at);
      parts.push(one(offset + at, n, into.subarray(at, at + n)));
    }
    const got = await Promise.all(parts);
    if (got.some((g, i) => g.buffer !== into.buffer || g.byteOffset !== into.byteOffset + i * READ_SIZE))
      return Buffer.concat(got); // a reader that does not read in place (the generic client)
    return into.subarray(0, length);
  };
}

function reusedName(device: string, base: Base, point: number): NbdsnapError {
  return new NbdsnapError(
    'BAD_ARGUMENT',
    `${device}@${base.name} is not the snapshot ${base.file} was taken from (the server's point of that name is ` +
      `${point}, the file's is ${base.point}): the name was taken again after its point was forgotten, so the ` +
      'changes since the file cannot be told; take a full backup',
  );
}

const movedName = (device: string, name: string): NbdsnapError =>
  new NbdsnapError(
    'BUSY',
    `the change-tracking point ${device}@${name} moved while the backup started (forgotten and taken again): try again`,
  );

async function closeQuietly(c: { close(): Promise<void> }): Promise<void> {
  await c.close().catch(() => undefined);
}
