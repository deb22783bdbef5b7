import type { Agent } from 'undici';
import type { ActorResolver } from '../actors/resolver.ts';
import type { Config } from '../config/config.ts';
import type { Limiter } from '../limits/limiter.ts';
import type { Logger } from '../logging/logger.ts';
import type { Store } from '../storage/store.ts';
import type { UsageRecorder } from '../usage/recorder.ts';
import type { SpoolingUsageStore } from '../usage/spool.ts';
import type { Dependency } from './health.ts';

/** The long-lived parts every request handler uses. Built once at start-up. */
export interface Gateway {
  config: Config;
  logger: Logger;
  store: Store;
  limiter: Limiter;
  resolver: ActorResolver;
  recorder: UsageRecorder;
  dispatcher: Agent;
  version: string;
  /** Proxy requests still running or settling; shutdown waits for them before the last flush. */
  settling: Set<Promise<void>>;
  /** Dependencies checked by the health routes. */
  dependencies: Dependency[];
  /** The disk spool for usage events, when the store is Postgres. */
  spool?: SpoolingUsageStore;
}
