/**
 * The process's own figures, read at scrape time only. prom-client's default metrics are not
 * used: their GC observer and event-loop monitor work all the time (a callback per garbage
 * collection, a 10 ms timer), whether anyone scrapes or not.
 */
import { readdirSync } from 'node:fs';
import { Counter, Gauge, type Registry } from 'prom-client';

const startSeconds = Math.round(Date.now() / 1000 - process.uptime());

function openFds(): number | undefined {
  try {
    return readdirSync('/proc/self/fd').length;
  } catch {
    return undefined; // not Linux
  }
}

export function defineProcessFamilies(registry: Registry): void {
  new Counter({
    name: 'nbdsnap_process_cpu_seconds_total',
    help: 'CPU time of the server process, user and system, in seconds',
    registers: [registry],
    collect() {
      const { user, system } = process.cpuUsage();
      this.reset();
      this.inc((user + system) / 1e6);
    },
  });
  const gauge = (name: string, help: string, read: () => number | undefined) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        const v = read();
        if (v !== undefined) this.set(v);
      },
    });
  gauge(
    'nbdsnap_process_start_time_seconds',
    'Start of the server process, seconds since the epoch',
    () => startSeconds,
  );
  gauge('nbdsnap_process_resident_memory_bytes', 'Resident memory of the server process', () =>
    process.memoryUsage.rss(),
  );
  gauge('nbdsnap_process_heap_used_bytes', 'JavaScript heap in use', () => process.memoryUsage().heapUsed);
  gauge(
    'nbdsnap_process_external_memory_bytes',
    'Memory held outside the JavaScript heap (buffers)',
    () => process.memoryUsage().external,
  );
  gauge('nbdsnap_process_open_fds', 'Open file descriptors of the server process', openFds);
}
