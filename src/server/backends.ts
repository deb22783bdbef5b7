import type { Agent } from 'undici';
import type { ActorChangeBus } from '../actors/changes.ts';
import { RedisChangeBus } from '../actors/redis-changes.ts';
import { RemoteActorSource } from '../actors/remote-source.ts';
import { ActorSyncWorker, RedisLeaderLock, soleLeader, type LeaderLock } from '../actors/sync.ts';
import type { ActorResolver } from '../actors/resolver.ts';
import { ConfigError, type Config } from '../config/config.ts';
import type { Limiter } from '../limits/limiter.ts';
import { MemoryLimiter } from '../limits/memory.ts';
import { createRedisClient, RedisLimiter } from '../limits/redis.ts';
import type { Logger } from '../logging/logger.ts';
import { openPostgresStore } from '../storage/postgres.ts';
import { openSqliteStore } from '../storage/sqlite.ts';
import type { Store, UsageStore } from '../storage/store.ts';
import { openSpoolingUsageStore, usageSpoolDir, type SpoolingUsageStore } from '../usage/spool.ts';
import type { Dependency } from './health.ts';

/** The stores and shared services chosen by the configuration. */
export interface Backends {
  store: Store;
  /** The recorder's destination for usage events: the store, behind a disk spool for network stores. */
  usageStore: UsageStore;
  limiter: Limiter;
  bus: ActorChangeBus | undefined;
  remote: RemoteActorSource | undefined;
  /** The disk spool in front of a network store, for health output. */
  spool: SpoolingUsageStore | undefined;
  dependencies: Dependency[];
  /** Starts background work that needs the resolver (the actor sync). */
  startWorkers(resolver: ActorResolver): void;
  close(): Promise<void>;
}

const REDIS_READY_WAIT_MS = 2000;

export async function openBackends(config: Config, logger: Logger, dispatcher: Agent, injected: { store?: Store; limiter?: Limiter }): Promise<Backends> {
  const dependencies: Dependency[] = [];
  const closers: (() => Promise<void>)[] = [];

  let store: Store;
  let usageStore: UsageStore;
  let spool: SpoolingUsageStore | undefined;
  if (injected.store !== undefined) {
    store = injected.store;
    usageStore = store;
  } else if (config.databaseUrl !== null) {
    store = await openPostgresStore(config.databaseUrl, { logger, schema: config.databaseSchema ?? undefined });
    spool = await openSpoolingUsageStore(store, { dir: usageSpoolDir(config.dataDir), maxBytes: config.usageSpoolMaxBytes, logger });
    usageStore = spool;
  } else {
    try {
      store = openSqliteStore(config.dataDir, { backgroundWriter: true });
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
      throw new ConfigError('LLM_PROXY_DATA_DIR', `cannot open the database in ${config.dataDir} (${code})`, 'a writable folder');
    }
    usageStore = store;
  }
  dependencies.push({ name: 'store', required: true, check: () => store.ping() });

  let limiter: Limiter;
  let bus: ActorChangeBus | undefined;
  let lock: LeaderLock = soleLeader;
  const redisUrl = config.redis.url;
  if (injected.limiter !== undefined) {
    limiter = injected.limiter;
  } else if (redisUrl !== null) {
    const redisLimiter = new RedisLimiter({ url: redisUrl, keyPrefix: config.redis.keyPrefix, commandTimeoutMs: config.redis.commandTimeoutMs, failureMode: config.redis.failureMode, logger });
    await redisLimiter.waitUntilReady(REDIS_READY_WAIT_MS).catch((error: unknown) => logger.warn({ err: error }, 'Redis is not reachable at start-up; limits follow LLM_PROXY_REDIS_FAILURE_MODE until it is'));
    limiter = redisLimiter;
    dependencies.push({ name: 'redis', required: config.redis.failureMode === 'closed', check: () => redisLimiter.ping() });
  } else {
    limiter = new MemoryLimiter();
  }
  if (redisUrl !== null) {
    bus = new RedisChangeBus({ url: redisUrl, keyPrefix: config.redis.keyPrefix, commandTimeoutMs: config.redis.commandTimeoutMs, logger });
    const lockClient = createRedisClient(redisUrl, { commandTimeoutMs: Math.max(config.redis.commandTimeoutMs, 1000), connectionName: 'llm-proxy-sync-lock' });
    lockClient.on('error', () => undefined);
    lock = new RedisLeaderLock(lockClient, `${config.redis.keyPrefix}actor-sync-lock`);
    closers.push(async () => {
      lockClient.disconnect();
    });
  }

  const source = config.actorSource;
  const remote = source.url === null ? undefined : new RemoteActorSource({ url: source.url, secret: source.secret, timeoutMs: source.timeoutMs, dispatcher, logger });
  let worker: ActorSyncWorker | undefined;

  return {
    store,
    usageStore,
    limiter,
    bus,
    remote,
    spool,
    dependencies,
    startWorkers(resolver) {
      if (remote !== undefined && source.syncIntervalMs > 0) {
        worker = new ActorSyncWorker(remote, resolver, lock, source.syncIntervalMs, logger);
        worker.start();
      }
    },
    async close() {
      await worker?.stop();
      await limiter.close();
      await bus?.close();
      for (const close of closers) await close();
      await spool?.close();
      await store.close();
    },
  };
}
