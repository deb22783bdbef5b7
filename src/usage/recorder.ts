import type { Logger } from '../logging/logger.ts';
import type { UsageStore } from '../storage/store.ts';
import type { UsageEvent } from './event.ts';

const BATCH_SIZE = 500;
/** Events kept while the store is failing; past this the oldest are dropped and counted. */
const MAX_PENDING = 200_000;

/**
 * Collects usage events off the request path and writes them in batches: every flush interval,
 * or at once when a batch fills. A crash loses at most one interval of events.
 */
export class UsageRecorder {
  private pending: UsageEvent[] = [];
  private flushing: Promise<void> | undefined;
  private readonly timer: NodeJS.Timeout;
  private dropped = 0;
  private closed = false;

  constructor(private readonly store: UsageStore, private readonly logger: Logger, intervalMs: number) {
    this.timer = setInterval(() => void this.flush(), intervalMs);
    this.timer.unref();
  }

  record(event: UsageEvent): void {
    this.pending.push(event);
    if (this.pending.length > MAX_PENDING) {
      this.pending.shift();
      this.dropped++;
      if (this.dropped === 1 || this.dropped % 1000 === 0) {
        this.logger.error({ dropped: this.dropped }, 'usage event buffer full, dropping oldest events');
      }
    }
    if (this.pending.length >= BATCH_SIZE && this.flushing === undefined) void this.flush();
  }

  /** Writes every pending event. Concurrent calls share one write. */
  flush(): Promise<void> {
    if (this.flushing !== undefined) return this.flushing;
    if (this.pending.length === 0) return Promise.resolve();
    this.flushing = this.writePending().finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  private async writePending(): Promise<void> {
    while (this.pending.length > 0) {
      const batch = this.pending.slice(0, BATCH_SIZE);
      try {
        await this.store.insertEvents(batch);
      } catch (error) {
        this.logger.error({ err: error, pending: this.pending.length }, 'failed to write usage events, will retry');
        return;
      }
      this.pending.splice(0, batch.length);
    }
  }

  pendingCount(): number {
    return this.pending.length;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    await this.flushing;
    await this.flush();
    if (this.pending.length > 0) {
      this.logger.error({ lost: this.pending.length }, 'usage events could not be written before exit');
    }
  }
}
