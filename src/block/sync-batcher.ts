/**
 * Group commit for fdatasync: many FLUSH and FUA requests in flight share few syncs. A caller
 * is satisfied only by a sync that *started* after it called, so every write it completed
 * before calling is covered; callers that arrive while a sync runs all wait for the next one.
 *
 * A failed sync fails every later one too (fail-stop): Linux reports a write-back error to one
 * fdatasync and then forgets it, with the pages marked clean, so a later sync that "succeeds"
 * would vouch for writes that may be lost. The device must be opened again (a restart).
 */
export class SyncBatcher {
  private running: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  private failure: unknown;
  private failed = false;
  private readonly doSync: () => Promise<void>;

  constructor(doSync: () => Promise<void>) {
    this.doSync = doSync;
  }

  sync(): Promise<void> {
    if (this.failed) return Promise.reject(this.failure);
    if (this.running === undefined) {
      this.running = this.doSync()
        .catch((err: unknown) => {
          this.failed = true;
          this.failure = err;
          throw err;
        })
        .finally(() => {
          this.running = undefined;
        });
      return this.running;
    }
    if (this.queued === undefined) {
      // The queued callers wait for the running sync to end (its failure reaches its own
      // callers), then get a sync of their own, or the same failure (above) if it failed.
      this.queued = this.running
        .catch(() => undefined)
        .then(() => {
          this.queued = undefined;
          return this.sync();
        });
    }
    return this.queued;
  }
}
