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
import type { NbdClient } from '../client/nbd-client.ts';
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
import { orderedMap } from './pipeline.ts';
import { chooseSamples, type PlanItem, planRanges, trimUnchanged } from './plan.ts';
import { Progress } from './progress.ts';
import { BackupReader } from './reader.ts';
import { isS3Url } from './s3-url.ts';
import {
  BASE_ALLOCATION,
  dirtyContext,
  mapContexts,
  type OpenedSnapshot,
  openSnapshot,
  parseSnapshotUri,
} from './source.ts';
import { PendingFile } from './writer.ts';

export interface BackupOptions {
  /** nbd://HOST:PORT/DEVICE@SNAP */
  source: string;
  file: string;
  /** A snapshot name (or DEVICE@NAME) of the same device, or a previous backup file. */
  since?: string | undefined;
  progress?: Progress | undefined;
  /** Reads in flight (default 8). */
  depth?: number | undefined;
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
  const open: OpenedSnapshot[] = [];
  let pending: PendingFile | undefined;
  try {
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
    open.push(to);
    const size = to.client.size;
    let fromPoint = 0;
    let fromCreated = 0;
    let from: OpenedSnapshot | undefined;
    if (base !== undefined) {
      if (to.facts.generation === '')
        throw new NbdsnapError('BAD_CONFIG', `the server does not track changes of ${device}: take a full backup`);
      if (base.generation !== undefined && base.generation !== to.facts.generation)
        throw new NbdsnapError(
          'BAD_ARGUMENT',
          `change tracking of ${device} was reset since ${base.file} (generation ${base.generation}, now ` +
            `${to.facts.generation}): a full backup is needed`,
        );
      from = await openSnapshot(uriFor(`${device}@${base.name}`), [], true);
      if (from !== undefined) {
        open.push(from);
        if (from.client.size !== size)
          throw new NbdsnapError('BAD_ARGUMENT', `${device}@${base.name} has another size`);
        if (base.file !== undefined && from.facts.point !== base.point)
          throw new NbdsnapError(
            'BAD_ARGUMENT',
            `${device}@${base.name} is not the snapshot ${base.file} was taken from (point ${from.facts.point}, ` +
              `the file has ${base.point}): the name was reused; a full backup is needed`,
          );
        fromPoint = from.facts.point;
        fromCreated = from.facts.created;
      } else {
        fromPoint = base.point;
        fromCreated = base.created;
      }
      if (fromPoint !== 0 && fromPoint >= to.facts.point)
        throw new NbdsnapError('BAD_ARGUMENT', `${device}@${base.name} is not older than ${device}@${snapshot}`);
    }

    // Trim only against a read-only FROM: a writable one may have been written since it was
    // backed up, and its sectors would no longer be what the restore target holds.
    const trimBase =
      from !== undefined && (from.client.transmissionFlags & TransmissionFlag.READ_ONLY) !== 0 ? from : undefined;
    const maps = await mapContexts(to.client, contexts);
    const plan = planRanges(
      size,
      maps.get(BASE_ALLOCATION) ?? [],
      dirtyName === undefined ? undefined : maps.get(dirtyName),
    );
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
    pending = await PendingFile.create(opts.file, BACKUP_MAGIC, opts.signal);
    const w = pending.writer;
    await w.add({ type: RecordType.HEAD, offset: 0, length: size, payload: encodeHeader(header) });

    const depth = opts.depth ?? 8;
    if (base !== undefined) {
      const picks = chooseSamples(plan.clean, to.facts.blockSize || 65536, size, opts.samples ?? 128);
      const client = to.client;
      for await (const s of orderedMap(picks, depth, async (p) => ({
        ...p,
        data: await client.read(p.offset, p.length),
      }))) {
        const sha = createHash('sha256').update(s.data).digest();
        await w.add({ type: RecordType.SMPL, offset: s.offset, length: s.length, payload: sha });
      }
    }

    progress.start('backup', plan.totalBytes, { source: opts.source, file: opts.file, kind: header.kind });
    let trimmedBytes = 0;
    const read = async (item: PlanItem) => {
      if (item.kind !== 'data') return { item, now: undefined, before: undefined };
      const [now, before] = await Promise.all([
        to.client.read(item.offset, item.length),
        // FROM unreadable (e.g. invalidated by a full store): no trimming, nothing else lost
        trimBase?.client.read(item.offset, item.length).catch(() => undefined),
      ]);
      return { item, now, before };
    };
    for await (const { item, now, before } of orderedMap(plan.items, depth, read)) {
      opts.signal?.throwIfAborted();
      if (item.kind === 'zero' || item.kind === 'disc') {
        const type = item.kind === 'zero' ? RecordType.ZERO : RecordType.DISC;
        await w.add({ type, offset: item.offset, length: item.length, payload: Buffer.alloc(0) });
      } else if (now !== undefined) {
        let offset = item.offset;
        let data = now;
        if (before !== undefined) {
          const t = trimUnchanged(item.offset, now, before);
          trimmedBytes += item.length - (t === undefined ? 0 : t.end - t.start);
          if (t === undefined) {
            progress.add(item.length);
            continue;
          }
          offset = item.offset + t.start;
          data = now.subarray(t.start, t.end);
        }
        if (isZero(data)) await w.add({ type: RecordType.ZERO, offset, length: data.length, payload: Buffer.alloc(0) });
        else await w.add({ type: RecordType.DATA, offset, length: data.length, payload: data });
      }
      progress.add(item.length);
    }
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
    await Promise.all(open.map((o) => closeQuietly(o.client)));
  }
}

async function closeQuietly(c: NbdClient): Promise<void> {
  await c.close().catch(() => undefined);
}
