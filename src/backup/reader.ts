/**
 * Reading record files, streaming and validating as it goes: `RecordReader` checks the magic,
 * every frame and the CRC chain, hashes every byte before the end marker and checks the end
 * marker's hash and totals and that nothing follows it. `BackupReader` adds the backup rules
 * (FORMAT.md "Rules"): header first, samples before ranges, ranges ascending and inside the
 * device, a full backup covering the whole device. Every failure is one NbdsnapError('CORRUPT')
 * naming the file and the byte offset.
 */
import { createHash } from 'node:crypto';
import { type FileHandle, open, stat } from 'node:fs/promises';
import { errorMessage, NbdsnapError } from '../errors.ts';
import {
  BACKUP_MAGIC,
  type BackupHeader,
  CRC_SIZE,
  decodeEnd,
  decodeHead,
  decodeHeader,
  type EndTotals,
  HEAD_SIZE,
  initialCrc,
  MAGIC_SIZE,
  type RecordFrame,
  RecordType,
  recordCrc,
  SHA256_SIZE,
} from './format.ts';
import { isS3Url } from './s3-url.ts';

const READ_AHEAD = 4 * 1024 * 1024;

/** Positional reads of a record file: a local file, or an S3 object (s3-source.ts). */
export interface ByteSource {
  /** Fill `buf` from `position`; fewer bytes only at the end (0 past it). */
  read(buf: Buffer, position: number): Promise<number>;
  close(): Promise<void>;
}

const fileSource = (fh: FileHandle): ByteSource => ({
  read: async (buf, position) => (await fh.read(buf, 0, buf.length, position)).bytesRead,
  close: () => fh.close(),
});

/** A local path or an `s3://BUCKET/KEY` URL, opened for reading. */
export async function openSource(path: string): Promise<ByteSource> {
  if (isS3Url(path)) return (await import('./s3-source.ts')).S3Source.open(path);
  try {
    return fileSource(await open(path, 'r'));
  } catch (err) {
    throw new NbdsnapError('NOT_FOUND', `cannot open ${path}: ${errorMessage(err)}`);
  }
}

/** The size of a local file or of an S3 object. */
export async function sourceSize(path: string): Promise<number> {
  if (isS3Url(path)) return (await import('./s3-source.ts')).objectSize(path);
  try {
    return (await stat(path)).size;
  } catch {
    throw new NbdsnapError('NOT_FOUND', `${path}: no such file`);
  }
}

export interface ReadRecord extends RecordFrame {
  /** Byte offset of the record in the file. */
  at: number;
}

export class RecordReader {
  readonly path: string;
  /** Set once the end marker has been read and checked. */
  end: { totals: EndTotals; sha256: Buffer; covered: number } | undefined;
  private readonly fh: ByteSource;
  private chunk = Buffer.alloc(0);
  private pos = 0;
  /** File offset of chunk[0]. */
  private chunkAt = 0;
  private eof = false;
  private crc = 0;
  private readonly sha = createHash('sha256');
  private readonly counted: EndTotals = { records: 0, dataBytes: 0, zeroBytes: 0, discardBytes: 0, samples: 0 };
  private covered = 0;

  private constructor(path: string, fh: ByteSource) {
    this.path = path;
    this.fh = fh;
  }

  static async open(path: string, magic: Buffer, what: string): Promise<RecordReader> {
    const r = new RecordReader(path, await openSource(path));
    try {
      const m = await r.take(MAGIC_SIZE, true);
      if (m === undefined || !m.equals(magic)) throw new NbdsnapError('CORRUPT', `${path} is not ${what}`);
      r.sha.update(m);
      r.crc = initialCrc(magic);
    } catch (err) {
      await r.close();
      throw err;
    }
    return r;
  }

  /** The file offset of the next unread byte. */
  get offset(): number {
    return this.chunkAt + this.pos;
  }

  private fail(message: string, at = this.offset): NbdsnapError {
    return new NbdsnapError('CORRUPT', `${this.path}: ${message} (at byte ${at})`);
  }

  /** Exactly n bytes, or undefined at a clean end of file (if allowed). */
  private async take(n: number, eofOk: boolean): Promise<Buffer | undefined> {
    if (this.chunk.length - this.pos >= n) {
      const out = this.chunk.subarray(this.pos, this.pos + n);
      this.pos += n;
      return out;
    }
    const parts: Buffer[] = [this.chunk.subarray(this.pos)];
    let have = parts[0]?.length ?? 0;
    const startAt = this.offset;
    while (have < n) {
      if (this.eof) {
        if (have === 0 && eofOk) return undefined;
        throw this.fail('truncated: the file ends inside a record', startAt);
      }
      const buf = Buffer.allocUnsafe(Math.max(READ_AHEAD, n - have));
      const bytesRead = await this.fh.read(buf, this.chunkAt + this.chunk.length);
      if (bytesRead === 0) this.eof = true;
      this.chunkAt += this.chunk.length;
      this.chunk = buf.subarray(0, bytesRead);
      this.pos = 0;
      const use = Math.min(bytesRead, n - have);
      parts.push(this.chunk.subarray(0, use));
      this.pos = use;
      have += use;
    }
    return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, n);
  }

  /** The next record before the end marker, or undefined once the end marker is read. */
  async next(): Promise<ReadRecord | undefined> {
    if (this.end !== undefined) return undefined;
    const at = this.offset;
    const head = await this.take(HEAD_SIZE, true);
    if (head === undefined) throw this.fail('truncated: no end marker');
    let h: ReturnType<typeof decodeHead>;
    try {
      h = decodeHead(head);
    } catch (err) {
      throw this.fail(errorMessage(err), at);
    }
    const payload = Buffer.from((await this.take(h.payloadLength, false)) as Buffer);
    const crcBytes = (await this.take(CRC_SIZE, false)) as Buffer;
    const crc = recordCrc(head, payload, this.crc);
    if (crc !== crcBytes.readUInt32LE(0)) throw this.fail(`checksum mismatch in ${h.type} record`, at);
    this.crc = crc;
    if (h.type === RecordType.END) {
      await this.finish(h.length, payload, at);
      return undefined;
    }
    this.sha.update(head).update(payload).update(crcBytes);
    this.count(h.type, h.length);
    return { type: h.type, offset: h.offset, length: h.length, payload, at };
  }

  private count(type: RecordType, length: number): void {
    if (type !== RecordType.HEAD) this.counted.records += 1;
    if (type === RecordType.DATA) this.counted.dataBytes += length;
    else if (type === RecordType.ZERO) this.counted.zeroBytes += length;
    else if (type === RecordType.DISC) this.counted.discardBytes += length;
    else if (type === RecordType.SMPL || type === RecordType.HASH) this.counted.samples += 1;
    if (type === RecordType.DATA || type === RecordType.ZERO || type === RecordType.DISC) this.covered += length;
  }

  private async finish(covered: number, payload: Buffer, at: number): Promise<void> {
    let end: ReturnType<typeof decodeEnd>;
    try {
      end = decodeEnd(payload);
    } catch (err) {
      throw this.fail(errorMessage(err), at);
    }
    const digest = this.sha.digest();
    if (!digest.equals(end.sha256)) throw this.fail('file hash in the end marker does not match', at);
    const c = this.counted;
    const t = end.totals;
    if (
      t.records !== c.records ||
      t.dataBytes !== c.dataBytes ||
      t.zeroBytes !== c.zeroBytes ||
      t.discardBytes !== c.discardBytes ||
      t.samples !== c.samples ||
      covered !== this.covered
    )
      throw this.fail('totals in the end marker do not match the records', at);
    if ((await this.take(1, true)) !== undefined) throw this.fail('data after the end marker');
    if (digest.length !== SHA256_SIZE) throw this.fail('hash size');
    this.end = { totals: t, sha256: digest, covered };
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}

export interface Sample {
  offset: number;
  length: number;
  sha256: Buffer;
}

/** A backup file, validated record by record as it is read. */
export class BackupReader {
  readonly header: BackupHeader;
  private readonly r: RecordReader;
  private prevEnd = 0;
  private sawRange = false;
  private lastSampleEnd = 0;

  private constructor(r: RecordReader, header: BackupHeader) {
    this.r = r;
    this.header = header;
  }

  static async open(path: string): Promise<BackupReader> {
    const r = await RecordReader.open(path, BACKUP_MAGIC, 'an nbdsnap backup (bad magic)');
    try {
      const first = await r.next();
      if (first === undefined || first.type !== RecordType.HEAD)
        throw new NbdsnapError('CORRUPT', `${path}: the first record is not a header`);
      let header: BackupHeader;
      try {
        header = decodeHeader(first.payload);
      } catch (err) {
        throw new NbdsnapError('CORRUPT', `${path}: ${errorMessage(err)}`);
      }
      if (first.offset !== 0 || first.length !== header.deviceSize)
        throw new NbdsnapError('CORRUPT', `${path}: header frame does not match its device size`);
      return new BackupReader(r, header);
    } catch (err) {
      await r.close();
      throw err;
    }
  }

  get path(): string {
    return this.r.path;
  }

  /** The end marker's totals and file hash (after `records()` has been read to the end). */
  get end() {
    return this.r.end;
  }

  /** Every record after the header, checked against the backup rules; closes the file at the end. */
  async *records(): AsyncGenerator<ReadRecord> {
    try {
      for (let rec = await this.r.next(); rec !== undefined; rec = await this.r.next()) {
        this.check(rec);
        yield rec;
      }
      if (this.header.kind === 'full' && this.prevEnd !== this.header.deviceSize)
        throw this.bad(`the full backup covers only ${this.prevEnd} of ${this.header.deviceSize} bytes`);
    } finally {
      await this.r.close();
    }
  }

  /** Read to the end, keeping the samples and the ranges the backup writes. */
  async readAll(): Promise<{ samples: Sample[]; ranges: [number, number][] }> {
    const samples: Sample[] = [];
    const ranges: [number, number][] = [];
    for await (const rec of this.records()) {
      if (rec.type === RecordType.SMPL) samples.push({ offset: rec.offset, length: rec.length, sha256: rec.payload });
      else {
        const last = ranges[ranges.length - 1];
        if (last !== undefined && last[0] + last[1] === rec.offset) last[1] += rec.length;
        else ranges.push([rec.offset, rec.length]);
      }
    }
    return { samples, ranges };
  }

  close(): Promise<void> {
    return this.r.close();
  }

  private bad(message: string, at?: number): NbdsnapError {
    return new NbdsnapError('CORRUPT', `${this.path}: ${message}${at === undefined ? '' : ` (at byte ${at})`}`);
  }

  private check(rec: ReadRecord): void {
    const { deviceSize, kind } = this.header;
    const where = `${rec.type} record [${rec.offset}, +${rec.length})`;
    if (rec.length === 0 || rec.offset + rec.length > deviceSize)
      throw this.bad(`${where} is empty or outside the ${deviceSize}-byte device`, rec.at);
    switch (rec.type) {
      case RecordType.SMPL:
        if (kind !== 'incremental') throw this.bad('a full backup holds samples', rec.at);
        if (this.sawRange) throw this.bad(`${where} after the data records`, rec.at);
        if (rec.payload.length !== SHA256_SIZE || rec.offset < this.lastSampleEnd)
          throw this.bad(`${where} is malformed or out of order`, rec.at);
        this.lastSampleEnd = rec.offset + rec.length;
        return;
      case RecordType.DATA:
      case RecordType.ZERO:
      case RecordType.DISC:
        if ((rec.type === RecordType.DATA ? rec.length : 0) !== rec.payload.length)
          throw this.bad(`${where} has a ${rec.payload.length}-byte payload`, rec.at);
        if (rec.offset < this.prevEnd) throw this.bad(`${where} overlaps or precedes the one before`, rec.at);
        if (kind === 'full' && rec.offset !== this.prevEnd)
          throw this.bad(`${where} leaves a gap in a full backup`, rec.at);
        this.sawRange = true;
        this.prevEnd = rec.offset + rec.length;
        return;
      default:
        throw this.bad(`unexpected ${rec.type} record in a backup`, rec.at);
    }
  }
}
