/**
 * Fault tests on a private redis-server: SIGSTOP plays a Redis that stopped responding with its
 * connections still open, and stopping the server plays one that refuses connections.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { isGatewayError } from '../../src/errors/errors.ts';
import type { AdmitResult, QuotaCheck } from '../../src/limits/limiter.ts';
import { RedisLimiter } from '../../src/limits/redis.ts';
import { startPrivateRedis, type PrivateRedis } from '../helpers/private-redis.ts';
import { capturingLogger, silentLogger } from './support.ts';

const COMMAND_TIMEOUT_MS = 50;
/** An admit on a dead Redis must return within the command timeout plus this slack. */
const MAX_EXTRA_MS = 100;
const RECOVERY_WAIT_MS = 5000;
const KEY_PREFIX = 'llmp-fault:';

function requestsCheck(actorId: string, limit: number): QuotaCheck {
  return { key: { actorId, feature: 'chat_completions', counter: 'requests' }, limit, intervalMs: 60_000, cost: 1, mode: 'fit' };
}

async function timed<T>(operation: () => Promise<T>): Promise<{ value?: T; error?: unknown; ms: number }> {
  const startedAt = performance.now();
  try {
    const value = await operation();
    return { value, ms: performance.now() - startedAt };
  } catch (error) {
    return { error, ms: performance.now() - startedAt };
  }
}

/** Admits on a fresh actor until Redis charges the counter again; returns how long that took. */
async function waitUntilEnforced(limiter: RedisLimiter, limit: number): Promise<number> {
  const startedAt = Date.now();
  while (Date.now() - startedAt < RECOVERY_WAIT_MS) {
    let result: AdmitResult | undefined;
    try {
      result = await limiter.admit([requestsCheck(`act_${randomUUID()}`, limit)]);
    } catch {
      // Closed mode throws until Redis responds.
    }
    if (result !== undefined && result.counters[0].remaining === limit - 1) return Date.now() - startedAt;
    await sleep(100);
  }
  throw new Error(`limits were not enforced again within ${RECOVERY_WAIT_MS} ms of SIGCONT`);
}

/** Asserts that a fresh actor gets exactly `limit` admissions. */
async function assertEnforced(limiter: RedisLimiter, limit: number): Promise<void> {
  const actorId = `act_${randomUUID()}`;
  for (let i = 0; i < limit; i++) assert.equal((await limiter.admit([requestsCheck(actorId, limit)])).allowed, true, `admission ${i + 1} of ${limit}`);
  const rejected = await limiter.admit([requestsCheck(actorId, limit)]);
  assert.equal(rejected.allowed, false);
  assert.equal(rejected.rejectedBy, 0);
}

describe('RedisLimiter with a stalled Redis', () => {
  let redis: PrivateRedis;
  let limiter: RedisLimiter | undefined;

  beforeEach(async () => {
    redis = await startPrivateRedis();
  });

  afterEach(async () => {
    redis.resume();
    await limiter?.close();
    limiter = undefined;
    await redis.stop();
  });

  it('admits unchecked in open mode', async () => {
    const { logger, lines } = capturingLogger();
    limiter = new RedisLimiter({ url: redis.url, keyPrefix: KEY_PREFIX, commandTimeoutMs: COMMAND_TIMEOUT_MS, failureMode: 'open', logger });
    await limiter.waitUntilReady(2000);
    await assertEnforced(limiter, 2);

    redis.pause();
    const actorId = `act_${randomUUID()}`;
    for (let i = 0; i < 20; i++) {
      const { value, error, ms } = await timed(() => limiter!.admit([requestsCheck(actorId, 3)]));
      assert.equal(error, undefined);
      assert.ok(ms <= COMMAND_TIMEOUT_MS + MAX_EXTRA_MS, `admit ${i} took ${ms.toFixed(0)} ms`);
      assert.equal(value?.allowed, true);
      assert.equal(value?.counters[0].remaining, 3);
      assert.ok(Math.abs(value!.counters[0].resetAt - (Date.now() + 60_000)) < 1000);
    }
    const concurrent = await Promise.all(Array.from({ length: 20 }, () => timed(() => limiter!.admit([requestsCheck(actorId, 3)]))));
    for (const { value, ms } of concurrent) {
      assert.ok(ms <= COMMAND_TIMEOUT_MS + MAX_EXTRA_MS, `concurrent admit took ${ms.toFixed(0)} ms`);
      assert.equal(value?.allowed, true);
    }
    const stats = limiter.stats();
    assert.equal(stats.failOpenAdmissions, 40);
    assert.equal(stats.errors, 40);
    assert.equal(stats.breakerOpen, true);

    // One warning for the 40 failures, plus one for the circuit opening.
    const failures = lines.filter((line) => line.operation === 'admit');
    assert.equal(failures.length, 1);
    assert.equal(failures[0].level, 'warn');
    assert.equal(lines.filter((line) => typeof line.msg === 'string' && line.msg.includes('circuit opened')).length, 1);

    redis.resume();
    const recoveryMs = await waitUntilEnforced(limiter, 2);
    assert.ok(recoveryMs < 2500, `recovery took ${recoveryMs} ms`);
    await assertEnforced(limiter, 2);
    assert.equal(limiter.stats().breakerOpen, false);
    assert.equal(lines.filter((line) => typeof line.msg === 'string' && line.msg.includes('circuit closed')).length, 1);
  });

  it('rejects with store_unavailable in closed mode', async () => {
    limiter = new RedisLimiter({ url: redis.url, keyPrefix: KEY_PREFIX, commandTimeoutMs: COMMAND_TIMEOUT_MS, failureMode: 'closed', logger: silentLogger() });
    await limiter.waitUntilReady(2000);
    const lease = { actorId: 'act_closed', feature: 'chat_completions' as const, id: 'req_1', max: 1, ttlMs: 1000 };

    redis.pause();
    for (let i = 0; i < 10; i++) {
      const { error, ms } = await timed(() => limiter!.admit([requestsCheck('act_closed', 3)], lease));
      assert.ok(ms <= COMMAND_TIMEOUT_MS + MAX_EXTRA_MS, `admit ${i} took ${ms.toFixed(0)} ms`);
      assert.ok(isGatewayError(error), `admit ${i} did not throw a GatewayError`);
      assert.equal(error.code, 'store_unavailable');
      assert.equal(error.status, 503);
      assert.equal(error.message, 'the rate limiter (Redis) is unavailable; retry shortly');
    }
    const settle = await timed(() => limiter!.settle([{ key: requestsCheck('act_closed', 3).key, delta: -1, intervalMs: 60_000 }], lease));
    assert.equal(settle.error, undefined);
    assert.ok(settle.ms <= COMMAND_TIMEOUT_MS + MAX_EXTRA_MS);
    const renew = await timed(() => limiter!.renewLease(lease));
    assert.equal(renew.error, undefined);
    assert.ok(renew.ms <= COMMAND_TIMEOUT_MS + MAX_EXTRA_MS);
    const usage = await timed(() => limiter!.usage(requestsCheck('act_closed', 3).key));
    assert.ok(isGatewayError(usage.error));
    assert.equal(usage.error.code, 'store_unavailable');
    const ping = await timed(() => limiter!.ping());
    assert.ok(ping.error instanceof Error);
    assert.ok(ping.ms <= COMMAND_TIMEOUT_MS + MAX_EXTRA_MS);
    assert.equal(limiter.stats().failOpenAdmissions, 0);

    redis.resume();
    await waitUntilEnforced(limiter, 2);
    await assertEnforced(limiter, 2);
    await limiter.ping();
  });

  it('fails fast when Redis is gone', async () => {
    limiter = new RedisLimiter({ url: redis.url, keyPrefix: KEY_PREFIX, commandTimeoutMs: COMMAND_TIMEOUT_MS, failureMode: 'open', logger: silentLogger() });
    await limiter.waitUntilReady(2000);
    await redis.stop();
    for (let i = 0; i < 10; i++) {
      const { value, ms } = await timed(() => limiter!.admit([requestsCheck('act_gone', 1)]));
      assert.ok(ms <= COMMAND_TIMEOUT_MS + MAX_EXTRA_MS, `admit ${i} took ${ms.toFixed(0)} ms`);
      assert.equal(value?.allowed, true);
    }
    assert.equal(limiter.stats().failOpenAdmissions, 10);
  });

  it('reloads scripts after SCRIPT FLUSH', async () => {
    limiter = new RedisLimiter({ url: redis.url, keyPrefix: KEY_PREFIX, commandTimeoutMs: 1000, failureMode: 'closed', logger: silentLogger() });
    await limiter.waitUntilReady(2000);
    await assertEnforced(limiter, 1);
    const admin = new Redis(redis.url, { maintNotifications: 'disabled' });
    try {
      await admin.script('FLUSH');
    } finally {
      await admin.quit();
    }
    await assertEnforced(limiter, 1);
    assert.equal(limiter.stats().errors, 0);
  });
});
