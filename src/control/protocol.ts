/**
 * The control protocol: JSON lines over a local Unix socket (created mode 0600).
 *
 *   request   {"id": 1, "cmd": "snapshot.create", "args": {"devices": ["disk"], "name": "s1"}}
 *   response  {"id": 1, "ok": true, "result": ...}
 *             {"id": 1, "ok": false, "error": {"code": "NOT_FOUND", "message": "no device \"x\""}}
 *   stream    {"id": 1, "event": {...}}          (for "events", until the client hangs up)
 *
 * Commands and their args are listed in `Commands`; see src/control/README.md.
 */
export interface Commands {
  status: Record<string, never>;
  'snapshot.create': { devices: string[]; name: string; writable?: boolean };
  'snapshot.list': Record<string, never>;
  'snapshot.delete': { device: string; name: string };
  'store.append': { range: string };
  'store.status': Record<string, never>;
  'store.scrub': Record<string, never>;
  events: Record<string, never>;
  'merge.start': { device: string; name: string; onNextStart?: boolean };
  'merge.status': Record<string, never>;
}

export type CommandName = keyof Commands;

export interface Request {
  id: number;
  cmd: string;
  args?: Record<string, unknown>;
}

export type Response =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: { code: string; message: string } }
  | { id: number; event: unknown };

/** Split a byte stream into lines; returns the unfinished tail. */
export function splitLines(buffer: string, onLine: (line: string) => void): string {
  let rest = buffer;
  for (let nl = rest.indexOf('\n'); nl >= 0; nl = rest.indexOf('\n')) {
    const line = rest.slice(0, nl).trim();
    rest = rest.slice(nl + 1);
    if (line !== '') onLine(line);
  }
  return rest;
}
