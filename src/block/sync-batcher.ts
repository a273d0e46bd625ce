/**
 * Group commit for fdatasync: many FLUSH and FUA requests in flight share few syncs. A caller
 * is satisfied only by a sync that *started* after it called, so every write it completed
 * before calling is covered; callers that arrive while a sync runs all wait for the next one.
 */
export class SyncBatcher {
  private running: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  private readonly doSync: () => Promise<void>;

  constructor(doSync: () => Promise<void>) {
    this.doSync = doSync;
  }

  sync(): Promise<void> {
    if (this.running === undefined) {
      this.running = this.doSync().finally(() => {
        this.running = undefined;
      });
      return this.running;
    }
    if (this.queued === undefined) {
      // The running sync's failure is its own callers' (they get it); the queued callers only
      // wait for it to end, then get a sync of their own, which fails or succeeds for them.
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
