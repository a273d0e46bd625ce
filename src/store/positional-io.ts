/**
 * Positional reads and writes of the store's files that loop until every byte is done (short
 * transfers happen), on libuv's pool; reads of cached data on this thread first (native.ts).
 */
import { read, write } from 'node:fs';
import { promisify } from 'node:util';
import { native } from '../block/native.ts';
import { NbdsnapError } from '../errors.ts';

const readAsync = promisify(read);
const writeAsync = promisify(write);

export async function writeFully(fd: number, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await writeAsync(fd, data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

export async function readFully(fd: number, length: number, position: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  // Cached data without the thread-pool round trip (as FileDevice.read does).
  if (length <= 128 * 1024 && native?.readNowait !== undefined && native.readNowait(fd, buf, position) === length) {
    return buf;
  }
  let done = 0;
  while (done < length) {
    const { bytesRead } = await readAsync(fd, buf, done, length - done, position + done);
    if (bytesRead === 0) throw new NbdsnapError('EIO', `short read: ${done} of ${length} bytes at ${position}`);
    done += bytesRead;
  }
  return buf;
}
