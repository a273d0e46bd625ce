/**
 * An error as the one line a person reads (log.ts re-exports it). A module of its own, free of
 * pino, because every command's error path needs it and most commands never log.
 */
const SYSCALL_VERBS: Record<string, string> = {
  open: 'cannot open',
  read: 'cannot read',
  write: 'cannot write',
  fsync: 'cannot sync',
  fdatasync: 'cannot sync',
  ftruncate: 'cannot resize',
  unlink: 'cannot remove',
  rename: 'cannot rename',
  mkdir: 'cannot create directory',
  stat: 'cannot stat',
  lstat: 'cannot stat',
  connect: 'cannot connect to',
  listen: 'cannot listen on',
  bind: 'cannot bind',
};

/**
 * An error as the one line a person reads: an NbdsnapError's message as it is; a system error
 * (EPERM, EROFS, ENOENT, ...) as "cannot open PATH: operation not permitted (EPERM)" rather than
 * Node's "EPERM: operation not permitted, open 'PATH'"; anything else by its message. Never a
 * stack, never more than one line.
 */
export function errorText(err: unknown): string {
  const e = err as (Error & { code?: unknown; syscall?: unknown; path?: unknown }) | null;
  let text: string;
  if (e instanceof Error && typeof e.code === 'string' && typeof e.syscall === 'string' && e.name !== 'NbdsnapError') {
    // Node's text is "CODE: description, syscall 'path'"; keep the description.
    const description = /^[A-Z0-9]+: ([^,]*)/.exec(e.message)?.[1] ?? e.message;
    const verb = SYSCALL_VERBS[e.syscall] ?? e.syscall;
    const target = typeof e.path === 'string' ? ` ${e.path}` : '';
    text = `${verb}${target}: ${description} (${e.code})`;
  } else {
    text = e instanceof Error ? e.message : String(err);
  }
  return text.replace(/\s*\n\s*/g, ' ').trim();
}
