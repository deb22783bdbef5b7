/**
 * Shared pieces of the Redis tests: the machine's shared Redis at 127.0.0.1:6379, a unique key
 * prefix per test file, key cleanup with SCAN, and loggers that capture their lines.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { createLogger, type Logger } from '../../src/logging/logger.ts';
import { waitForPong } from '../helpers/private-redis.ts';

export const SHARED_REDIS_URL = 'redis://127.0.0.1:6379';
const SHARED_REDIS_PORT = 6379;
const MAX_SCAN_ROUNDS = 10_000;

/**
 * Returns false when the shared Redis replies to PING, else the reason to skip. In CI an unreachable
 * Redis is a failure, so this throws there instead.
 */
export async function sharedRedisSkip(): Promise<string | false> {
  if (await waitForPong(SHARED_REDIS_PORT, Date.now() + 1000)) return false;
  const reason = `no Redis replied to PING at ${SHARED_REDIS_URL}. Start one to run these tests`;
  if (process.env.CI) throw new Error(`${reason} (CI is set, so the Redis tests must run)`);
  console.log(`skipping Redis tests: ${reason}`);
  return reason;
}

/** Returns a key prefix no other test run uses, such as `llmp-test:parity:1f2e3d4c:`. */
export function uniquePrefix(name: string): string {
  return `llmp-test:${name}:${randomUUID().slice(0, 8)}:`;
}

/** Lists every key under `prefix` with SCAN. */
export async function scanKeys(client: Redis, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  for (let round = 0; round < MAX_SCAN_ROUNDS; round++) {
    const [next, batch] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    keys.push(...batch);
    cursor = next;
    if (cursor === '0') return keys;
  }
  throw new Error(`SCAN over ${prefix}* did not finish within ${MAX_SCAN_ROUNDS} rounds`);
}

/** Deletes every key under `prefix`. */
export async function deleteKeys(client: Redis, prefix: string): Promise<void> {
  const keys = await scanKeys(client, prefix);
  for (let i = 0; i < keys.length; i += 500) await client.unlink(...keys.slice(i, i + 500));
}

export function silentLogger(): Logger {
  return createLogger('silent');
}

/** Creates a logger that keeps each line, parsed, in `lines`. */
export function capturingLogger(): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger('info', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { logger, lines };
}
