/**
 * The payloads of the journal's records (records.ts has the record and block framing): one
 * encoder and one decoder per record type, little-endian, pure. The layouts are the table in
 * src/store/README.md.
 */
import type { JournalRecord, RecordType } from './records.ts';

/** The payload of `rec` (without the record header). */
export function encodePayload(rec: JournalRecord): Buffer {
  switch (rec.type) {
    case 'DEVICE': {
      const name = Buffer.from(rec.name, 'utf8');
      const b = Buffer.alloc(12 + name.length);
      b.writeUInt32LE(rec.device, 0);
      b.writeBigUInt64LE(BigInt(rec.size), 4);
      name.copy(b, 12);
      return b;
    }
    case 'SNAPSHOT': {
      const name = Buffer.from(rec.name, 'utf8');
      const b = Buffer.alloc(12 + rec.members.length * 13 + name.length);
      b.writeBigUInt64LE(BigInt(rec.created), 0);
      b.writeUInt32LE(rec.members.length, 8);
      rec.members.forEach((m, i) => {
        const o = 12 + i * 13;
        b.writeUInt32LE(m.snapshot, o);
        b.writeUInt32LE(m.device, o + 4);
        b.writeUInt32LE(m.seq, o + 8);
        b.writeUInt8(m.writable ? 1 : 0, o + 12);
      });
      name.copy(b, 12 + rec.members.length * 13);
      return b;
    }
    case 'DELETE':
      return u32s(rec.snapshot);
    case 'INVALID':
      return Buffer.concat([u32s(rec.snapshot), Buffer.from(rec.reason, 'utf8')]);
    case 'EXCEPTION': {
      const b = Buffer.alloc(24);
      b.writeUInt32LE(rec.device, 0);
      b.writeUInt32LE(rec.seq, 4);
      b.writeBigUInt64LE(BigInt(rec.chunk), 8);
      b.writeUInt32LE(rec.slot, 16);
      b.writeUInt32LE(rec.crc >>> 0, 20);
      return b;
    }
    case 'PRIVATE': {
      const b = Buffer.alloc(20);
      b.writeUInt32LE(rec.snapshot, 0);
      b.writeBigUInt64LE(BigInt(rec.chunk), 4);
      b.writeUInt32LE(rec.slot, 12);
      b.writeUInt32LE(rec.crc >>> 0, 16);
      return b;
    }
    case 'LOST': {
      const b = Buffer.alloc(16);
      b.writeUInt32LE(rec.device, 0);
      b.writeBigUInt64LE(BigInt(rec.chunk), 4);
      b.writeUInt32LE(rec.slot, 12);
      return b;
    }
    case 'MERGE':
      return u32s(rec.snapshot, rec.deferred ? 1 : 0);
    case 'CBT': {
      const b = Buffer.alloc(20);
      b.writeUInt32LE(rec.device, 0);
      b.writeUInt32LE(rec.era, 4);
      b.writeBigUInt64LE(BigInt(rec.block), 8);
      b.writeUInt32LE(rec.count, 16);
      return b;
    }
    case 'CBT_GEN':
      return Buffer.concat([u32s(rec.device, rec.blockSize), Buffer.from(rec.generation, 'utf8')]);
    case 'FORGET':
      return Buffer.concat([u32s(rec.device), Buffer.from(rec.name, 'utf8')]);
    case 'COMMIT': {
      const b = Buffer.alloc(16);
      b.writeBigUInt64LE(BigInt(rec.firstSeq), 0);
      b.writeUInt32LE(rec.count, 8);
      b.writeUInt32LE(rec.chain >>> 0, 12);
      return b;
    }
    case 'CLEAN': {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(BigInt(rec.at), 0);
      return b;
    }
    case 'MERGED': {
      const b = Buffer.alloc(16);
      b.writeUInt32LE(rec.snapshot, 0);
      b.writeUInt32LE(rec.count, 4);
      b.writeBigUInt64LE(BigInt(rec.chunk), 8);
      return b;
    }
    case 'CHECKPOINT': {
      const b = Buffer.alloc(16);
      b.writeUInt32LE(rec.nextSnapshotId, 0);
      b.writeUInt32LE(rec.nextSeq, 4);
      b.writeBigUInt64LE(BigInt(rec.at), 8);
      return b;
    }
    case 'BOOKMARK':
      return Buffer.concat([u32s(rec.device, rec.seq), Buffer.from(rec.name, 'utf8')]);
    case 'MERGE_PLAN': {
      const b = Buffer.alloc(8 + 12 * rec.runs.length);
      b.writeUInt32LE(rec.snapshot, 0);
      b.writeUInt32LE(rec.runs.length, 4);
      rec.runs.forEach(([chunk, count], i) => {
        b.writeBigUInt64LE(BigInt(chunk), 8 + 12 * i);
        b.writeUInt32LE(count, 16 + 12 * i);
      });
      return b;
    }
  }
}

/** The record of type `type` from its payload (checked by the record's CRC before). */
export function decodePayload(type: keyof typeof RecordType, p: Buffer): JournalRecord {
  switch (type) {
    case 'DEVICE':
      return {
        type,
        device: p.readUInt32LE(0),
        size: Number(p.readBigUInt64LE(4)),
        name: p.subarray(12).toString('utf8'),
      };
    case 'SNAPSHOT': {
      const count = p.readUInt32LE(8);
      const members = Array.from({ length: count }, (_, i) => {
        const o = 12 + i * 13;
        return {
          snapshot: p.readUInt32LE(o),
          device: p.readUInt32LE(o + 4),
          seq: p.readUInt32LE(o + 8),
          writable: p[o + 12] === 1,
        };
      });
      return {
        type,
        created: Number(p.readBigUInt64LE(0)),
        members,
        name: p.subarray(12 + count * 13).toString('utf8'),
      };
    }
    case 'DELETE':
      return { type, snapshot: p.readUInt32LE(0) };
    case 'INVALID':
      return { type, snapshot: p.readUInt32LE(0), reason: p.subarray(4).toString('utf8') };
    case 'EXCEPTION':
      return {
        type,
        device: p.readUInt32LE(0),
        seq: p.readUInt32LE(4),
        chunk: u64(p, 8),
        slot: p.readUInt32LE(16),
        crc: p.readUInt32LE(20),
      };
    case 'PRIVATE':
      return {
        type,
        snapshot: p.readUInt32LE(0),
        chunk: Number(p.readBigUInt64LE(4)),
        slot: p.readUInt32LE(12),
        crc: p.readUInt32LE(16),
      };
    case 'LOST':
      return { type, device: p.readUInt32LE(0), chunk: Number(p.readBigUInt64LE(4)), slot: p.readUInt32LE(12) };
    case 'MERGE':
      return { type, snapshot: p.readUInt32LE(0), deferred: p.readUInt32LE(4) === 1 };
    case 'CBT':
      return {
        type,
        device: p.readUInt32LE(0),
        era: p.readUInt32LE(4),
        block: u64(p, 8),
        count: p.readUInt32LE(16),
      };
    case 'CBT_GEN':
      return {
        type,
        device: p.readUInt32LE(0),
        blockSize: p.readUInt32LE(4),
        generation: p.subarray(8).toString('utf8'),
      };
    case 'FORGET':
      return { type, device: p.readUInt32LE(0), name: p.subarray(4).toString('utf8') };
    case 'COMMIT':
      return { type, firstSeq: Number(p.readBigUInt64LE(0)), count: p.readUInt32LE(8), chain: p.readUInt32LE(12) };
    case 'CLEAN':
      return { type, at: Number(p.readBigUInt64LE(0)) };
    case 'MERGED':
      return { type, snapshot: p.readUInt32LE(0), count: p.readUInt32LE(4), chunk: Number(p.readBigUInt64LE(8)) };
    case 'CHECKPOINT':
      return {
        type,
        nextSnapshotId: p.readUInt32LE(0),
        nextSeq: p.readUInt32LE(4),
        at: Number(p.readBigUInt64LE(8)),
      };
    case 'BOOKMARK':
      return { type, device: p.readUInt32LE(0), seq: p.readUInt32LE(4), name: p.subarray(8).toString('utf8') };
    case 'MERGE_PLAN': {
      const count = p.readUInt32LE(4);
      if (8 + 12 * count !== p.length) throw new RangeError('MERGE_PLAN length');
      const runs = Array.from({ length: count }, (_, i): [number, number] => [
        Number(p.readBigUInt64LE(8 + 12 * i)),
        p.readUInt32LE(16 + 12 * i),
      ]);
      return { type, snapshot: p.readUInt32LE(0), runs };
    }
  }
}

/** A u64 as a number (exact below 2^53), without a BigInt. */
function u64(p: Buffer, at: number): number {
  return p.readUInt32LE(at) + p.readUInt32LE(at + 4) * 0x100000000;
}

function u32s(...values: number[]): Buffer {
  const b = Buffer.alloc(4 * values.length);
  for (const [i, v] of values.entries()) b.writeUInt32LE(v >>> 0, 4 * i);
  return b;
}
