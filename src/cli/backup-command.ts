/**
 * `nbdsnap backup`, `nbdsnap restore` and `nbdsnap verify` (the code is in src/backup/):
 *   backup nbd://HOST:PORT/DEVICE@SNAP FILE [--since FROM] [--progress=MODE] [--json]
 *   restore FILE... TARGET [--journal PATH] [--progress=MODE] [--json]
 *   restore --undo JOURNAL TARGET [--force]
 *   verify FILE... [--json]
 * Progress goes to stderr, the one-line summary (or --json) to stdout. Wherever a backup FILE is
 * named, `s3://BUCKET/KEY` names an object in S3 instead (src/backup/README.md, "Backups in S3").
 */
import type { Argv } from 'yargs';
import { backup } from '../backup/backup.ts';
import { PROGRESS_MODES, Progress, type ProgressMode } from '../backup/progress.ts';
import { restore } from '../backup/restore.ts';
import { isS3Url } from '../backup/s3-url.ts';
import { parseSnapshotUri } from '../backup/source.ts';
import { undo } from '../backup/undo.ts';
import { describeFile, verify } from '../backup/verify.ts';
import { NbdsnapError } from '../errors.ts';
import { defineCommand } from './command.ts';

const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;

const common = <T>(y: Argv<T>) =>
  y
    .option('progress', {
      type: 'string',
      choices: PROGRESS_MODES as ProgressMode[],
      default: 'auto',
      describe: 'progress on stderr: a bar on a terminal, plain lines otherwise, JSON lines, or none',
    })
    .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' });

function backupBuilder(y: Argv) {
  return common(y)
    .positional('source', { type: 'string', demandOption: true, describe: 'nbd://HOST:PORT/DEVICE@SNAP' })
    .positional('file', {
      type: 'string',
      demandOption: true,
      describe: 'the backup file to write, or s3://BUCKET/KEY (endpoint and keys from the AWS_* variables)',
    })
    .option('since', {
      type: 'string',
      describe: 'incremental since FROM: a snapshot name of the same device, or a previous backup file (or s3://...)',
    })
    .option('samples', { type: 'number', default: 128, describe: 'unchanged blocks fingerprinted (incrementals)' })
    .option('connections', { type: 'number', default: 2, describe: 'NBD connections the data is read over' })
    .option('depth', { type: 'number', default: 16, describe: 'reads in flight (over all connections)' });
}

/** The source must be an NBD URI naming a snapshot: nbd://HOST:PORT/DEVICE@SNAP. */
export function checkBackupSource(source: string): void {
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(source)) {
    const fix = /^[^/]+:\d+\//.test(source) ? `: did you mean nbd://${source}?` : ': give nbd://HOST:PORT/DEVICE@SNAP';
    throw new NbdsnapError('BAD_ARGUMENT', `backup source ${source} is not an nbd:// URI${fix}`);
  }
  parseSnapshotUri(source);
}

export const backupCommand = defineCommand({
  command: 'backup <source> <file>',
  describe: 'back up DEVICE@SNAP over NBD to FILE: full, or incremental with --since FROM',
  builder: backupBuilder,
  parse: (a) => {
    const source = String(a.source);
    checkBackupSource(source);
    if (!Number.isSafeInteger(a.samples) || a.samples < 0) {
      throw new NbdsnapError('BAD_ARGUMENT', `--samples ${a.samples} must be a whole number`);
    }
    for (const [name, v] of [
      ['connections', a.connections],
      ['depth', a.depth],
    ] as const) {
      if (!Number.isSafeInteger(v) || v < 1 || v > 256)
        throw new NbdsnapError('BAD_ARGUMENT', `--${name} ${v} must be a whole number from 1 to 256`);
    }
    return { ...a, source, file: String(a.file), since: a.since === undefined ? undefined : String(a.since) };
  },
  run: runBackup,
});

async function runBackup(a: {
  source: string;
  file: string;
  since?: string | undefined;
  samples: number;
  connections: number;
  depth: number;
  progress: string;
  json: boolean;
}): Promise<void> {
  const controller = new AbortController();
  const stop = () => controller.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const r = await backup({
      source: String(a.source),
      file: String(a.file),
      since: a.since === undefined ? undefined : String(a.since),
      samples: a.samples,
      connections: a.connections,
      depth: a.depth,
      progress: new Progress(a.progress as ProgressMode),
      signal: controller.signal,
    });
    const h = r.header;
    const t = r.totals;
    if (a.json) {
      process.stdout.write(`${JSON.stringify({ file: a.file, header: h, totals: t, sha256: r.sha256 }, null, 2)}\n`);
      return;
    }
    const what = h.kind === 'full' ? 'full backup' : `incremental since ${h.device}@${h.fromName}`;
    process.stdout.write(
      `wrote ${a.file}: ${what} of ${h.device}@${h.toName}, ${mib(r.plannedBytes)} ${h.kind === 'full' ? 'device' : 'changed'}: ` +
        `${mib(t.dataBytes)} data, ${mib(t.zeroBytes)} zero, ${mib(t.discardBytes)} discarded` +
        (r.trimmedBytes > 0 ? `, ${mib(r.trimmedBytes)} unchanged sectors trimmed` : '') +
        (t.samples > 0 ? `, ${t.samples} samples` : '') +
        '\n',
    );
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

function restoreBuilder(y: Argv) {
  return common(y)
    .positional('args', {
      type: 'string',
      array: true,
      demandOption: true,
      describe:
        'FILE... TARGET (FILE: a path or s3://BUCKET/KEY; TARGET: a file, a block device or nbd://HOST:PORT/EXPORT)',
    })
    .option('journal', { type: 'string', describe: 'undo journal to write [default: TARGET.undo-TIME]' })
    .option('undo', { type: 'string', describe: 'put TARGET back as it was before the restore that wrote JOURNAL' })
    .option('force', {
      type: 'boolean',
      default: false,
      describe: 'with --undo: undo even a restore that did not finish (no check for later changes)',
    });
}

interface RestoreOptions {
  args: string[];
  journal?: string | undefined;
  undo?: string | undefined;
  force: boolean;
  progress: string;
  json: boolean;
}

export const restoreCommand = defineCommand({
  command: 'restore <args..>',
  describe: 'apply backups FILE... (full, then incrementals) to TARGET; or --undo JOURNAL TARGET',
  builder: restoreBuilder,
  parse: (a): RestoreOptions => {
    const args = a.args.map(String);
    if (a.undo !== undefined) {
      if (args.length !== 1) throw new NbdsnapError('BAD_ARGUMENT', 'restore --undo JOURNAL takes one TARGET');
      if (a.journal !== undefined)
        throw new NbdsnapError('BAD_ARGUMENT', '--journal names the journal of a restore, not with --undo');
    } else {
      if (args.length < 2) throw new NbdsnapError('BAD_ARGUMENT', 'restore needs FILE... TARGET');
      if (isS3Url(args[args.length - 1] as string))
        throw new NbdsnapError('BAD_ARGUMENT', 'restore writes to a file, a block device or an NBD export, not to S3');
      if (a.force) throw new NbdsnapError('BAD_ARGUMENT', '--force goes with --undo only');
    }
    return { ...a, args };
  },
  run: runRestore,
});

async function runRestore(a: RestoreOptions): Promise<void> {
  const args = a.args;
  const progress = new Progress(a.progress as ProgressMode);
  if (a.undo !== undefined) {
    const target = args[0] as string;
    const r = await undo({ journal: String(a.undo), target, force: a.force, progress });
    if (a.json) process.stdout.write(`${JSON.stringify({ target, ...r }, null, 2)}\n`);
    else if (r.restoredBytes === 0 && !r.removed)
      process.stdout.write(`nothing to undo: ${target} already holds what it held before the restore\n`);
    else
      process.stdout.write(
        `undid the restore recorded in ${a.undo}: ${mib(r.restoredBytes)} put back into ${target}` +
          (r.alreadyOld > 0 ? ` (${r.alreadyOld} of ${r.pieces} ranges already held their old contents)` : '') +
          (r.removed ? `; ${target} removed (the restore had created it)` : '') +
          '\n',
      );
    return;
  }
  const target = args[args.length - 1] as string;
  const r = await restore({ files: args.slice(0, -1), target, journal: a.journal, progress });
  const last = r.files[r.files.length - 1]?.header;
  if (a.json) {
    process.stdout.write(
      `${JSON.stringify({ target, journal: r.journal, writtenBytes: r.writtenBytes, files: r.files.map((f) => f.path) }, null, 2)}\n`,
    );
    return;
  }
  process.stdout.write(
    `restored ${last === undefined ? 'nothing' : `${last.device}@${last.toName}`} to ${target} from ${r.files.length} file(s), ${mib(r.writtenBytes)} written; ` +
      `undo with: nbdsnap restore --undo ${r.journal} ${target}\n`,
  );
}

function verifyBuilder(y: Argv) {
  return y
    .positional('files', {
      type: 'string',
      array: true,
      demandOption: true,
      describe: 'a full backup and/or incrementals, in order (paths or s3://BUCKET/KEY)',
    })
    .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' });
}

export const verifyCommand = defineCommand({
  command: 'verify <files..>',
  describe: 'check backup files and their chain without restoring',
  builder: verifyBuilder,
  parse: (a) => ({ files: a.files.map(String), json: a.json }),
  run: runVerify,
});

async function runVerify(a: { files: string[]; json: boolean }): Promise<void> {
  const files = await verify(a.files);
  if (a.json) {
    process.stdout.write(
      `${JSON.stringify(
        files.map((f) => ({ path: f.path, header: f.header, totals: f.totals, sha256: f.sha256 })),
        null,
        2,
      )}\n`,
    );
    return;
  }
  const lines = files.map(describeFile);
  lines.push(`ok: ${files.length === 1 ? 'the file is' : `the chain of ${files.length} files is`} intact and in order`);
  process.stdout.write(`${lines.join('\n')}\n`);
}
