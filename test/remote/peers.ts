/**
 * Remote NBD servers for the remote-origin tests: qemu-nbd over a raw or qcow2 file, nbdkit's
 * memory and file plugins, started in the foreground on a loopback port below 32768, stopped
 * (or SIGKILLed, then started again on the same port and file) by their PID.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Background, background, run, waitForFile } from '../helpers/clients.ts';
import { freshPort } from '../helpers/server.ts';

export interface Peer {
  port: number;
  /** nbd://127.0.0.1:PORT/EXPORT */
  uri: string;
  proc: Background;
  /** Start the same server again (after a kill), on the same port and file. */
  restart(): Promise<void>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

export type PeerKind = 'qemu-raw' | 'qemu-qcow2' | 'nbdkit-memory' | 'nbdkit-file' | 'nbdkit-file-single';

/** Start a peer serving `file` (ignored for nbdkit memory), `size` bytes. */
export async function startPeer(
  kind: PeerKind,
  dir: string,
  file: string,
  size: number,
  extra: string[] = [],
): Promise<Peer> {
  if (kind === 'qemu-qcow2') await run('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(size)]);
  else if (kind !== 'nbdkit-memory') await run('truncate', ['-s', String(size), file]);
  let port = freshPort();
  const exportName = kind.startsWith('qemu') ? 'disk' : '';
  const pidFile = join(dir, `${kind}-${port}.pid`);
  const args = (): [string, string[]] => {
    if (kind.startsWith('qemu')) {
      const fmt = kind === 'qemu-qcow2' ? 'qcow2' : 'raw';
      return [
        'qemu-nbd',
        [
          '-f',
          fmt,
          '-p',
          String(port),
          '-b',
          '127.0.0.1',
          '-x',
          exportName,
          '-t',
          '--shared=8',
          '--pid-file',
          pidFile,
          ...extra,
          file,
        ],
      ];
    }
    const plugin = kind === 'nbdkit-memory' ? ['memory', String(size)] : ['file', file];
    const filters = kind === 'nbdkit-file-single' ? ['--filter=multi-conn'] : [];
    const params = kind === 'nbdkit-file-single' ? ['multi-conn-mode=disable'] : [];
    return [
      'nbdkit',
      ['-f', '-p', String(port), '-i', '127.0.0.1', '-P', pidFile, ...filters, ...extra, ...plugin, ...params],
    ];
  };
  const peer: Peer = {
    port,
    uri: '',
    proc: undefined as unknown as Background,
    async restart() {
      for (let attempt = 0; ; attempt++) {
        await run('rm', ['-f', pidFile]);
        const [cmd, a] = args();
        peer.proc = background(cmd, a);
        try {
          await waitForFile(pidFile, peer.proc, 20_000);
          return;
        } catch (err) {
          // The port was still held (TIME_WAIT does not block listen, but a slow exit may): retry.
          if (attempt >= 20) throw err;
          await sleep(100);
        }
      }
    },
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      peer.proc.kill(signal);
      await peer.proc.exited;
    },
  };
  for (let attempt = 0; ; attempt++) {
    try {
      await peer.restart();
      break;
    } catch (err) {
      if (attempt >= 4 || !/Address already in use|bind/i.test(String(err))) throw err;
      port = freshPort();
    }
  }
  peer.port = port;
  peer.uri = `nbd://127.0.0.1:${port}/${exportName}`;
  return peer;
}
