/**
 * Redis and PostgreSQL for the `gateway-redis-postgres` target. The benchmark uses servers that
 * already run on 127.0.0.1, gives the gateway its own Postgres schema and Redis key prefix, and
 * removes both afterwards, so it never touches other data on those servers.
 */
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { REPO_ROOT } from './targets.ts';

const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
const DEFAULT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/test';
const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);

export interface BackendSetup {
  redisUrl: string;
  databaseUrl: string;
  schema: string;
  keyPrefix: string;
  /** Environment variables that point the gateway at these backends. */
  env: Record<string, string>;
}

/** Resolves when a TCP connection to `url`'s host and port succeeds within one second. */
function reachable(url: URL, defaultPort: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port || defaultPort) });
    socket.setTimeout(1000, () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('connect', () => {
      socket.end();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * Picks the Redis and Postgres URLs (BENCH_REDIS_URL, then LLM_PROXY_REDIS_URL, then
 * redis://127.0.0.1:6379; BENCH_DATABASE_URL, then LLM_PROXY_DATABASE_URL, then
 * LLM_PROXY_TEST_DATABASE_URL, then postgres://postgres@127.0.0.1:5432/test) and checks that
 * both are on loopback and answer. Returns why not when the target cannot run.
 */
export async function prepareBackends(runId: string): Promise<BackendSetup | { reason: string }> {
  if (!existsSync(join(REPO_ROOT, 'src', 'limits', 'redis.ts'))) return { reason: 'not available: backend not implemented (no src/limits/redis.ts)' };
  const redisUrl = process.env.BENCH_REDIS_URL ?? process.env.LLM_PROXY_REDIS_URL ?? DEFAULT_REDIS_URL;
  const databaseUrl = process.env.BENCH_DATABASE_URL ?? process.env.LLM_PROXY_DATABASE_URL ?? process.env.LLM_PROXY_TEST_DATABASE_URL ?? DEFAULT_DATABASE_URL;
  for (const [url, defaultPort] of [
    [redisUrl, 6379],
    [databaseUrl, 5432],
  ] as const) {
    const parsed = new URL(url);
    if (!LOOPBACK_HOSTS.has(parsed.hostname)) return { reason: `not measured: ${parsed.hostname} is not a loopback address, and the benchmark sends traffic to this machine only` };
    if (!(await reachable(parsed, defaultPort))) return { reason: `not available: nothing answers at ${parsed.hostname}:${parsed.port || defaultPort}; start Redis and PostgreSQL or set BENCH_REDIS_URL and BENCH_DATABASE_URL` };
  }
  const schema = `llm_proxy_bench_${runId}`;
  const keyPrefix = `llmp-bench-${runId}:`;
  const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
  } catch (error) {
    return { reason: `not available: cannot log in to Postgres (${(error as Error).message})` };
  } finally {
    await client.end().catch(() => undefined);
  }
  return {
    redisUrl,
    databaseUrl,
    schema,
    keyPrefix,
    env: { LLM_PROXY_REDIS_URL: redisUrl, LLM_PROXY_REDIS_KEY_PREFIX: keyPrefix, LLM_PROXY_DATABASE_URL: databaseUrl, LLM_PROXY_DATABASE_SCHEMA: schema },
  };
}

/** Drops the benchmark's Postgres schema and deletes its Redis keys. */
export async function cleanUpBackends(setup: BackendSetup): Promise<void> {
  const client = new pg.Client({ connectionString: setup.databaseUrl, connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS ${setup.schema} CASCADE`);
  } finally {
    await client.end().catch(() => undefined);
  }
  const redis = new Redis(setup.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await redis.connect();
    let cursor = '0';
    // SCAN visits every key once per full cycle; the loop ends when the cursor returns to 0.
    for (let pass = 0; pass < 100_000; pass++) {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${setup.keyPrefix}*`, 'COUNT', 1000);
      if (keys.length > 0) await redis.del(...keys);
      cursor = next;
      if (cursor === '0') break;
    }
  } finally {
    redis.disconnect();
  }
}
