/**
 * Writing record files (backups and undo journals): records are framed and CRC-chained by
 * format.ts, buffered, hashed (SHA-256 of every byte before the end marker) and counted, and
 * the end marker carries the totals and the hash. A local backup file goes through staging
 * chunks (staged-file.ts: O_DIRECT writes and SHA-256 on the thread pool) when the native helper
 * is there; undo journals, S3 uploads and machines without the helper take the buffered path
 * (4 MiB writev batches, SHA-256 inline or on a worker thread, hasher.ts).
 *
 * A backup is written under a temporary name beside the final one and appears under the final
 * name only when complete: end marker written, file fsynced, then link(temp, final) — which
 * fails rather than replace a file that appeared meanwhile — unlink(temp), fsync the directory.
 * An interrupted backup leaves at most a `FILE.partial.XXXXXXXX` (removed on any error we live
 * through), never a short FILE.
 */
import { randomBytes } from 'node:crypto';
import { constants, existsSync } from 'node:fs';
import { type FileHandle, link, open, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { NbdsnapError } from '../errors.ts';
import {
  type EndTotals,
  encodeEnd,
  encodeRecord,
  encodeRecordParts,
  initialCrc,
  type RecordFrame,
  RecordType,
  SHA256_SIZE,
} from './format.ts';
import { type Hasher, inlineHasher, workerHasher } from './hasher.ts';
import { isS3Url } from './s3-url.ts';
import { StagedFile } from './staged-file.ts';

const FLUSH_AT = 4 * 1024 * 1024;
/** Every so many bytes written, an fdatasync starts in the background. */
const BACKGROUND_SYNC_EVERY = 64 * 1024 * 1024;

/** Where a RecordWriter's bytes go: a file handle, or an S3 upload (s3-sink.ts). */
export interface RecordSink {
  writev(buffers: Buffer[]): Promise<unknown>;
  sync(): Promise<void>;
  /** Start making what was written durable (a file's fdatasync); absent: nothing to start early. */
  datasync?(): Promise<void>;
  close(): Promise<void>;
}

export class RecordWriter {
  readonly path: string;
  readonly totals: EndTotals = { records: 0, dataBytes: 0, zeroBytes: 0, discardBytes: 0, samples: 0 };
  /** Bytes written so far (buffered included). */
  position = 0;
  /** Bytes handed to the sink so far (the buffers of the records before it can be reused). */
  written = 0;
  private syncedTo = 0;
  private background: Promise<void> | undefined;
  private syncError: unknown;
  private readonly fh: RecordSink | undefined;
  /** Set instead of `fh` and `sha`: the bytes are copied into staging chunks (staged-file.ts). */
  private readonly staged: StagedFile | undefined;
  private settledAt = 0;
  private crc: number;
  private readonly sha: Hasher | undefined;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private covered = 0;
  private closed = false;

  private constructor(path: string, fh: RecordSink | StagedFile, magic: Buffer, hashInWorker: boolean) {
    this.path = path;
    if (fh instanceof StagedFile) this.staged = fh;
    else {
      this.fh = fh;
      this.sha = hashInWorker ? workerHasher() : inlineHasher();
    }
    this.crc = initialCrc(magic);
    this.append(magic);
  }

  /**
   * Create `path` (it must not exist) and write the magic. `hashInWorker`: hash on a worker
   * thread (worth it for large files).
   */
  static async create(path: string, magic: Buffer, hashInWorker = false): Promise<RecordWriter> {
    let fh: FileHandle;
    try {
      fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') throw new NbdsnapError('EXISTS', `${path} already exists`);
      throw new NbdsnapError('BAD_ARGUMENT', `cannot create ${path}: ${(err as Error).message}`);
    }
    return new RecordWriter(path, fh, magic, hashInWorker);
  }

  /**
   * Create `path` (it must not exist) written through staging chunks (staged-file.ts: O_DIRECT,
   * SHA-256 on the thread pool); undefined without the native helper.
   */
  static async staged(path: string, magic: Buffer): Promise<RecordWriter | undefined> {
    const f = await StagedFile.create(path);
    return f === undefined ? undefined : new RecordWriter(path, f, magic, false);
  }

  /** Write to `sink` (named `name` in messages), starting with the magic. */
  static over(name: string, sink: RecordSink, magic: Buffer, hashInWorker = false): RecordWriter {
    return new RecordWriter(name, sink, magic, hashInWorker);
  }

  private append(bytes: Buffer): void {
    if (this.staged !== undefined) {
      this.staged.append(bytes); // copied: the caller's buffer is free again at once
      this.position += bytes.length;
      this.written = this.position;
      return;
    }
    this.sha?.update(bytes);
    this.pending.push(bytes);
    this.pendingBytes += bytes.length;
    this.position += bytes.length;
  }

  /** Add one record (buffered; written out in batches of a few MiB). */
  async add(r: RecordFrame): Promise<void> {
    const { parts, crc } = encodeRecordParts(r, this.crc);
    this.crc = crc;
    for (const p of parts) this.append(p);
    if (r.type !== RecordType.HEAD) this.totals.records += 1;
    if (r.type === RecordType.DATA) this.totals.dataBytes += r.length;
    else if (r.type === RecordType.ZERO) this.totals.zeroBytes += r.length;
    else if (r.type === RecordType.DISC) this.totals.discardBytes += r.length;
    else if (r.type === RecordType.SMPL || r.type === RecordType.HASH) this.totals.samples += 1;
    if (r.type === RecordType.DATA || r.type === RecordType.ZERO || r.type === RecordType.DISC)
      this.covered += r.length;
    if (this.pendingBytes >= FLUSH_AT) await this.drain();
    else if (this.staged !== undefined && this.position - this.settledAt >= FLUSH_AT) {
      this.settledAt = this.position;
      await this.staged.settle();
    }
  }

  private async drain(): Promise<void> {
    if (this.pendingBytes === 0 || this.fh === undefined || this.sha === undefined) return;
    const bufs = this.pending;
    const n = this.pendingBytes;
    this.pending = [];
    this.pendingBytes = 0;
    await Promise.all([this.fh.writev(bufs), this.sha.settle()]);
    this.written += n;
    // Start writing back what is written so far, beside the work that follows, so the final
    // fsync does not wait for the whole file; a failure fails the next drain or sync.
    if (this.syncError !== undefined) throw this.syncError;
    const datasync = this.fh.datasync?.bind(this.fh);
    if (
      datasync !== undefined &&
      this.background === undefined &&
      this.written - this.syncedTo >= BACKGROUND_SYNC_EVERY
    ) {
      const upTo = this.written;
      this.background = datasync().then(
        () => {
          this.syncedTo = upTo;
          this.background = undefined;
        },
        (err: unknown) => {
          this.syncError ??= err;
          this.background = undefined;
        },
      );
    }
  }

  /** Write out what is buffered and make the file durable. */
  async sync(): Promise<void> {
    if (this.staged !== undefined) return this.staged.sync();
    if (this.fh === undefined) return;
    await this.drain();
    await this.background;
    if (this.syncError !== undefined) throw this.syncError;
    await this.fh.sync();
  }

  /** The end marker (totals and SHA-256 of all bytes before it), fsync, close. Returns the hash. */
  async end(): Promise<Buffer> {
    const digest = this.staged !== undefined ? await this.staged.digest() : await (this.sha as Hasher).digest();
    if (digest.length !== SHA256_SIZE) throw new Error('sha256 size');
    const { bytes, crc } = encodeRecord(
      { type: RecordType.END, offset: 0, length: this.covered, payload: encodeEnd(this.totals, digest) },
      this.crc,
    );
    this.crc = crc;
    if (this.staged !== undefined) {
      this.staged.append(bytes);
      this.written += bytes.length;
    } else {
      this.pending.push(bytes);
      this.pendingBytes += bytes.length;
    }
    this.position += bytes.length;
    await this.sync();
    await this.close();
    return digest;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.staged?.close();
    await this.background;
    await this.sha?.close();
    await this.fh?.close();
  }
}

/** fsync a directory, so a name created or removed in it is durable. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * A backup being written: `commit()` makes it appear, complete, under its final name; `discard()`
 * leaves nothing under that name. A local file (`LocalPendingFile`) or an S3 object (s3-sink.ts).
 */
export interface PendingFile {
  readonly finalPath: string;
  readonly writer: RecordWriter;
  /** End marker, made durable, then the final name (never replacing anything). Returns the hash. */
  commit(): Promise<Buffer>;
  /** Give up: nothing appears under the final name. */
  discard(): Promise<void>;
}

export const PendingFile = {
  /**
   * A new backup at a local path or an `s3://BUCKET/KEY` URL (refused if it exists). `signal`
   * interrupts an upload even while it commits (a local file's commit is one link, not stopped).
   * `hashInWorker`: hash on a worker thread (worth it for large backups). `staged` (default true):
   * a local file goes through staging chunks (staged-file.ts) when the native helper is there.
   */
  async create(
    finalPath: string,
    magic: Buffer,
    opts: { signal?: AbortSignal | undefined; hashInWorker?: boolean; staged?: boolean } = {},
  ): Promise<PendingFile> {
    if (isS3Url(finalPath))
      return (await import('./s3-sink.ts')).S3PendingObject.create(finalPath, magic, opts.signal, opts.hashInWorker);
    return LocalPendingFile.create(finalPath, magic, opts.hashInWorker, opts.staged ?? true);
  },
};

/** A backup being written under a temporary name; `commit()` gives it its final name. */
class LocalPendingFile implements PendingFile {
  readonly finalPath: string;
  readonly writer: RecordWriter;

  private constructor(finalPath: string, writer: RecordWriter) {
    this.finalPath = finalPath;
    this.writer = writer;
  }

  /** `staged`: through staging chunks when the native helper is there (staged-file.ts). */
  static async create(finalPath: string, magic: Buffer, hashInWorker = false, staged = true): Promise<LocalPendingFile> {
    if (existsSync(finalPath)) throw new NbdsnapError('EXISTS', `${finalPath} already exists (not overwritten)`);
    const temp = join(dirname(finalPath), `${basename(finalPath)}.partial.${randomBytes(4).toString('hex')}`);
    const w =
      (staged ? await RecordWriter.staged(temp, magic) : undefined) ??
      (await RecordWriter.create(temp, magic, hashInWorker));
    return new LocalPendingFile(finalPath, w);
  }

  get tempPath(): string {
    return this.writer.path;
  }

  /** End marker, fsync, then the final name (never replacing an existing file). */
  async commit(): Promise<Buffer> {
    const digest = await this.writer.end();
    try {
      await link(this.tempPath, this.finalPath);
    } catch (err) {
      await this.discard();
      if ((err as NodeJS.ErrnoException).code === 'EEXIST')
        throw new NbdsnapError('EXISTS', `${this.finalPath} appeared while the backup ran (not overwritten)`);
      throw err;
    }
    await unlink(this.tempPath);
    await syncDir(dirname(this.finalPath));
    return digest;
  }

  /** Give up: close and remove the temporary file. */
  async discard(): Promise<void> {
    await this.writer.close().catch(() => undefined);
    await unlink(this.tempPath).catch(() => undefined);
  }
}
