import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { waitForReady } from '../limits/redis.ts';
import type { Logger } from '../logging/logger.ts';
import type { RemoteActorSource } from './remote-source.ts';
import type { ActorResolver } from './resolver.ts';

const LOCK_READY_WAIT_MS = 5000;

/** Decides which replica runs a periodic job. */
export interface LeaderLock {
  /** Takes or extends the lock for `ttlMs`; false when another holder has it. */
  tryAcquire(ttlMs: number): Promise<boolean>;
  release(): Promise<void>;
}

/** Without shared state there is one replica, and it always leads. */
export const soleLeader: LeaderLock = {
  tryAcquire: async () => true,
  release: async () => undefined,
};

const EXTEND_OR_TAKE = `
local current = redis.call('GET', KEYS[1])
if current == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0`;

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`;

/** A lock held in Redis with an expiry, so a crashed holder's lock frees itself. */
export class RedisLeaderLock implements LeaderLock {
  private readonly holder = randomUUID();

  constructor(private readonly redis: Redis, private readonly key: string) {}

  async tryAcquire(ttlMs: number): Promise<boolean> {
    // The client fails commands while it connects, so the first run waits for the connection.
    if (this.redis.status !== 'ready') await waitForReady(this.redis, LOCK_READY_WAIT_MS);
    return (await this.redis.eval(EXTEND_OR_TAKE, 1, this.key, this.holder, String(ttlMs))) === 1;
  }

  async release(): Promise<void> {
    await this.redis.eval(RELEASE, 1, this.key, this.holder);
  }
}

/**
 * Runs the full sync with the remote actor source every interval, on one replica at a time. The
 * lock lives four intervals, so a holder that stops renewing hands over within that time.
 */
export class ActorSyncWorker {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  /** Completed syncs on this replica, for health output and tests. */
  syncCount = 0;

  constructor(
    private readonly source: RemoteActorSource,
    private readonly resolver: ActorResolver,
    private readonly lock: LeaderLock,
    private readonly intervalMs: number,
    private readonly logger: Logger,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.runOnce(), this.intervalMs);
    this.timer.unref();
    void this.runOnce();
  }

  runOnce(): Promise<void> {
    this.running ??= this.sync().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async sync(): Promise<void> {
    try {
      if (!(await this.lock.tryAcquire(this.intervalMs * 4))) return;
      const entries = await this.source.listAll();
      this.resolver.applySync(entries);
      this.syncCount++;
      this.logger.info({ tokens: entries.length }, 'synced actors from the actor source');
    } catch (error) {
      this.logger.warn({ err: error }, 'actor sync failed; cached actors keep serving');
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
    await this.lock.release().catch(() => undefined);
  }
}
