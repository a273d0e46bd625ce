/**
 * A backup file written through aligned staging chunks, with the native helper
 * (src/native/backup.c): bytes appended are copied into 4 MiB chunks aligned to 4096 bytes; each
 * full chunk is written at its place on a thread of libuv's pool, opened with O_DIRECT where the
 * file system takes it (no page cache: no copy into it, no dirty pages to write back, no pages
 * to reclaim), and hashed (SHA-256, OpenSSL, in file order) on another, beside the reads and the
 * framing on the main thread. A chunk is reused once written and hashed. The last, partial chunk
 * is written rounded up to 4096 bytes and the file truncated to its length.
 *
 * One copy per byte (into the chunk; the kernel's copy into the page cache is gone) and nothing
 * allocated per record. Without the helper (or its functions), `StagedFile.create` answers
 * undefined and the writer keeps its buffered path (writer.ts, hasher.ts).
 *
 * O_DIRECT where it works, the page cache where it does not: a file system that refuses O_DIRECT
 * at open (EINVAL) gets a buffered file from the start; one that takes it at open but refuses
 * the writes (EINVAL from an aligned write) gets it from that write on: the file is opened again
 * without O_DIRECT (the same file: device and inode are checked), and every chunk whose write was
 * refused is written again through it, whole (a refused write wrote nothing, and rewriting the
 * whole chunk covers one that wrote part). Chunks are freed only once written, so the bytes are
 * still there; the hash runs from the chunks, not from the file, and is unchanged.
 *
 * Fail-stop: any other error of a write or of the hash (and EINVAL from a buffered write) fails
 * every later call; nothing is skipped.
 */
import { constants } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { type NativeFs, native } from '../block/native.ts';
import { NbdsnapError } from '../errors.ts';

interface BackupNative {
  alignedBuffer(size: number): Buffer;
  sha256Create(): object;
  sha256Update(state: object, data: Buffer, done: (err: Error | null) => void): void;
  sha256Digest(state: object): Buffer;
}
type Helper = NativeFs & Partial<BackupNative>;

const CHUNK = 4 * 1024 * 1024;
const ALIGN = 4096;
/** Chunks written or hashed at once (the file's memory: at most this many + 1 chunks). */
export const MAX_IN_FLIGHT = 6;
/** Buffered (no O_DIRECT): every so many bytes, an fdatasync starts in the background. */
const BACKGROUND_SYNC_EVERY = 64 * 1024 * 1024;

const helper = native as Helper | undefined;

/** The file opens, as a seam for the tests' injected faults (a file system refusing O_DIRECT). */
export const files = { open };

function available(): BackupNative | undefined {
  const h = helper;
  if (
    h?.alignedBuffer === undefined ||
    h.sha256Create === undefined ||
    h.sha256Update === undefined ||
    h.sha256Digest === undefined ||
    h.writeBatch === undefined
  )
    return undefined;
  return h as BackupNative;
}

interface Chunk {
  buf: Buffer;
  /** Writes and hash updates of it still running. */
  busy: number;
}

export class StagedFile {
  readonly path: string;
  /** Opened with O_DIRECT (whatever happened after: see `direct`). */
  private readonly openedDirect: boolean;
  /** The O_DIRECT descriptor's writes were refused: this is the same file without it. */
  private buffered: FileHandle | undefined;
  private fallingBack: Promise<FileHandle> | undefined;
  private readonly fh: FileHandle;
  private readonly n: BackupNative;
  private readonly sha: object;
  private readonly free: Buffer[] = [];
  private chunk: Chunk;
  private used = 0;
  /** Bytes of the current chunk already handed to the hash. */
  private hashedTo = 0;
  /** File offset of the current chunk. */
  private base = 0;
  /** Chunks handed out (being written or hashed), not yet free again. */
  private inFlight = 0;
  private finished = false;
  private failure: Error | undefined;
  private waiting: (() => void)[] = [];
  /** Hash updates in file order, one at a time. */
  private hashQueue: { part: Buffer; c: Chunk }[] = [];
  private hashing = false;
  private hashDone: (() => void)[] = [];
  private syncedTo = 0;
  /** Staging chunks allocated so far (the file's memory is this many times CHUNK). */
  chunks = 1;
  private background: Promise<void> | undefined;

  private constructor(path: string, fh: FileHandle, direct: boolean, n: BackupNative) {
    this.path = path;
    this.fh = fh;
    this.openedDirect = direct;
    this.n = n;
    this.sha = n.sha256Create();
    this.chunk = { buf: n.alignedBuffer(CHUNK), busy: 0 };
  }

  /**
   * Create `path` (O_EXCL; O_DIRECT unless the file system refuses it). Undefined without the
   * native helper; `direct: false` keeps the page cache (tests, and file systems without it).
   */
  static async create(path: string, opts: { direct?: boolean } = {}): Promise<StagedFile | undefined> {
    const n = available();
    if (n === undefined) return undefined;
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL;
    let fh: FileHandle | undefined;
    let direct = opts.direct ?? true;
    try {
      if (direct) {
        try {
          fh = await files.open(path, flags | constants.O_DIRECT, 0o600);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
          direct = false; // a file system without O_DIRECT
        }
      }
      if (fh === undefined) {
        try {
          fh = await files.open(path, flags, 0o600);
        } catch (err) {
          // Linux refuses O_DIRECT only after creating the file: the empty file just made, ours
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || direct === (opts.direct ?? true)) throw err;
          fh = await files.open(path, constants.O_WRONLY);
          if ((await fh.stat()).size !== 0) {
            await fh.close();
            throw err;
          }
        }
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') throw new NbdsnapError('EXISTS', `${path} already exists`);
      throw new NbdsnapError('BAD_ARGUMENT', `cannot create ${path}: ${(err as Error).message}`);
    }
    return new StagedFile(path, fh, direct, n);
  }

  /** Writes go through O_DIRECT (false from the start, or since the file system refused them). */
  get direct(): boolean {
    return this.openedDirect && this.buffered === undefined;
  }

  /** Bytes appended so far. */
  get position(): number {
    return this.base + this.used;
  }

  /** Copy `bytes` in (the caller may reuse them at once). */
  append(bytes: Buffer): void {
    this.check();
    if (this.finished) throw new Error('StagedFile: append after sync');
    for (let at = 0; at < bytes.length; ) {
      const k = bytes.copy(this.chunk.buf, this.used, at);
      this.used += k;
      at += k;
      if (this.used === CHUNK) this.submit();
    }
  }

  /** Resolves when few enough chunks are in flight; throws the first failure. */
  async settle(): Promise<void> {
    for (this.check(); this.inFlight > MAX_IN_FLIGHT; this.check())
      await new Promise<void>((r) => this.waiting.push(r));
    this.startBackgroundSync();
  }

  /** SHA-256 of every byte appended so far (bytes appended later are not part of it). */
  async digest(): Promise<Buffer> {
    this.check();
    const c = this.chunk;
    if (this.used > this.hashedTo) {
      c.busy += 1;
      this.hash(c.buf.subarray(this.hashedTo, this.used), c);
      this.hashedTo = this.used;
    }
    await new Promise<void>((r) => {
      if (!this.hashing && this.hashQueue.length === 0) r();
      else this.hashDone.push(r);
    });
    this.check();
    return this.n.sha256Digest(this.sha);
  }

  /** Write what is left (the last chunk), wait for every write, and make the file durable. */
  async sync(): Promise<void> {
    this.check();
    const size = this.position;
    this.finished = true;
    const c = this.chunk;
    this.inFlight += 1;
    if (this.used > 0) {
      const len = this.direct ? Math.ceil(this.used / ALIGN) * ALIGN : this.used;
      c.busy += 1;
      this.write(c.buf.subarray(0, len), this.base, c);
    }
    c.busy += 1; // now an outstanding chunk like the others
    this.chunk = { buf: Buffer.alloc(0), busy: 0 };
    this.done(c);
    while (this.inFlight > 0) {
      this.check();
      await new Promise<void>((r) => this.waiting.push(r));
    }
    this.check();
    await this.background;
    this.check();
    // A last chunk written through O_DIRECT (or refused there, then written again) was rounded up.
    if (this.openedDirect) await this.fh.truncate(size);
    await (this.buffered ?? this.fh).sync();
  }

  async close(): Promise<void> {
    while (this.inFlight > 0) await new Promise<void>((r) => this.waiting.push(r));
    await this.background;
    await this.fallingBack?.catch(() => undefined);
    await this.buffered?.close();
    await this.fh.close();
  }

  private check(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  private fail(err: Error): void {
    this.failure ??= new NbdsnapError(
      'EIO',
      `cannot write ${this.path}: ${err.message}${(err as NodeJS.ErrnoException).code ? ` (${(err as NodeJS.ErrnoException).code})` : ''}`,
    );
  }

  /** The current chunk is full: write it, hash what is not hashed yet, take the next. */
  private submit(): void {
    const c = this.chunk;
    c.busy += 2;
    this.inFlight += 1;
    this.hash(c.buf.subarray(this.hashedTo, CHUNK), c);
    this.write(c.buf, this.base, c);
    this.base += CHUNK;
    this.used = 0;
    this.hashedTo = 0;
    let buf = this.free.pop();
    if (buf === undefined) {
      buf = this.n.alignedBuffer(CHUNK);
      this.chunks += 1;
    }
    this.chunk = { buf, busy: 0 };
  }

  private write(buf: Buffer, at: number, c: Chunk): void {
    const direct = this.direct;
    (helper as NativeFs & { writeBatch: NonNullable<NativeFs['writeBatch']> }).writeBatch(
      (this.buffered ?? this.fh).fd,
      [buf],
      [at],
      (errors) => {
        const e = errors[0] as NodeJS.ErrnoException | undefined;
        if (e?.code === 'EINVAL' && direct && this.failure === undefined) {
          // O_DIRECT taken at open but not for writes: this chunk again, through the page cache.
          this.fallBack().then(
            () => this.write(buf, at, c),
            (err: unknown) => {
              this.fail(err as Error);
              this.done(c);
            },
          );
          return;
        }
        if (e !== undefined) this.fail(e);
        this.done(c);
      },
    );
  }

  /** The same file opened again without O_DIRECT (once; writes in flight meanwhile wait for it). */
  private fallBack(): Promise<FileHandle> {
    this.fallingBack ??= (async () => {
      const fh = await files.open(this.path, constants.O_WRONLY);
      const [a, b] = await Promise.all([this.fh.stat(), fh.stat()]);
      if (a.dev !== b.dev || a.ino !== b.ino) {
        await fh.close();
        throw Object.assign(new Error(`${this.path} was replaced while being written`), { code: 'ESTALE' });
      }
      this.buffered = fh;
      return fh;
    })();
    return this.fallingBack;
  }

  private hash(part: Buffer, c: Chunk): void {
    this.hashQueue.push({ part, c });
    this.pump();
  }

  private pump(): void {
    if (this.hashing) return;
    const next = this.hashQueue.shift();
    if (next === undefined) {
      for (const r of this.hashDone.splice(0)) r();
      return;
    }
    const { part, c } = next;
    this.hashing = true;
    this.n.sha256Update(this.sha, part, (err) => {
      this.hashing = false;
      if (err !== null) this.fail(err);
      this.done(c);
      this.pump();
    });
  }

  /** One more write or hash of `c` finished; a chunk with none left is free again. */
  private done(c: Chunk): void {
    c.busy -= 1;
    if (c.busy === 0 && c !== this.chunk) {
      this.free.push(c.buf);
      this.inFlight -= 1;
    }
    for (const w of this.waiting.splice(0)) w();
  }

  /** Buffered writes: start writing back what is written so far, so the final sync is short. */
  private startBackgroundSync(): void {
    if (this.direct || this.background !== undefined) return;
    const written = this.base - (this.inFlight + 1) * CHUNK;
    if (written - this.syncedTo < BACKGROUND_SYNC_EVERY) return;
    this.background = this.fh.datasync().then(
      () => {
        this.syncedTo = written;
        this.background = undefined;
      },
      (err: unknown) => {
        this.fail(err as Error);
        this.background = undefined;
      },
    );
  }
}
