/**
 * The control protocol: JSON lines over a local Unix socket (created mode 0600).
 *
 *   request   {"id": 1, "cmd": "snapshot.create", "args": {"devices": ["disk"], "name": "s1"}}
 *   response  {"id": 1, "ok": true, "result": ...}
 *             {"id": 1, "ok": false, "error": {"code": "NOT_FOUND", "message": "no device \"x\""}}
 *   stream    {"id": 1, "event": {...}}          (for "events", then one response when it ends)
 *
 * Commands and their args are listed in `Commands` and checked by commands.ts; see
 * src/control/README.md. Pure code: line framing and request parsing, no sockets.
 */
import { StringDecoder } from 'node:string_decoder';
import { NbdsnapError } from '../errors.ts';

export interface Commands {
  status: Record<string, never>;
  'snapshot.create': { devices: string[]; name: string; writable?: boolean };
  'snapshot.list': Record<string, never>;
  'snapshot.delete': { device: string; name: string };
  'store.append': { range: string };
  'store.status': Record<string, never>;
  'store.scrub': { speed?: number };
  events: Record<string, never>;
  'merge.start': { device: string; name: string; onNextStart?: boolean };
  'merge.status': Record<string, never>;
  'cbt.changed': { device: string; from: string; to?: string };
  'cbt.markDirty': { device: string; offset: number; length: number };
  'cbt.points': { device: string };
  'cbt.forget': { device: string; name: string };
}

export type CommandName = keyof Commands;

export interface Request {
  id: number;
  cmd: string;
  args: Record<string, unknown>;
}

export type Response =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: { code: string; message: string } }
  | { id: number; event: unknown };

/** The longest request line the server reads (requests are small; this bounds its memory). */
export const MAX_REQUEST_LINE = 1024 * 1024;

/**
 * Splits a byte stream into lines (UTF-8, a character may be split across chunks). A line longer
 * than `maxLine` bytes is an error: `push` throws and the reader holds nothing more of it.
 */
export class LineReader {
  private readonly decoder = new StringDecoder('utf8');
  private readonly maxLine: number;
  private tail = '';
  private tailBytes = 0;

  constructor(maxLine = Number.POSITIVE_INFINITY) {
    this.maxLine = maxLine;
  }

  /** The complete, non-blank lines in `chunk` (trimmed); the unfinished rest is kept. */
  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    let start = 0;
    for (let nl = chunk.indexOf(0x0a); nl >= 0; nl = chunk.indexOf(0x0a, start)) {
      if (this.tailBytes + nl - start > this.maxLine) throw this.tooLong();
      const line = (this.tail + this.decoder.write(chunk.subarray(start, nl)) + this.decoder.end()).trim();
      this.tail = '';
      this.tailBytes = 0;
      if (line !== '') lines.push(line);
      start = nl + 1;
    }
    if (start < chunk.length) {
      this.tailBytes += chunk.length - start;
      if (this.tailBytes > this.maxLine) throw this.tooLong();
      this.tail += this.decoder.write(chunk.subarray(start));
    }
    return lines;
  }

  private tooLong(): NbdsnapError {
    this.tail = '';
    this.tailBytes = 0;
    this.decoder.end();
    return new NbdsnapError('BAD_ARGUMENT', `request line longer than ${this.maxLine} bytes`);
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** One request line -> a Request, or the error to answer (with the request's id when it has one). */
export function parseRequest(line: string): Request | { id: number; error: NbdsnapError } {
  const bad = (id: number, why: string) => ({ id, error: new NbdsnapError('BAD_ARGUMENT', `bad request: ${why}`) });
  let msg: unknown;
  try {
    msg = JSON.parse(line);
  } catch {
    return bad(0, 'not a JSON object');
  }
  if (!isObject(msg)) return bad(0, 'not a JSON object');
  const { id, cmd, args } = msg;
  if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) {
    return bad(0, '"id" must be a non-negative integer');
  }
  if (typeof cmd !== 'string' || cmd === '') return bad(id, '"cmd" must be a command name');
  if (args !== undefined && !isObject(args)) return bad(id, `"args" of ${cmd} must be an object`);
  return { id, cmd, args: args ?? {} };
}
