import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import type { LimitKey, QuotaCheck } from '../../src/limits/limiter.ts';
import { createRedisClient, RedisLimiter } from '../../src/limits/redis.ts';
import { deleteKeys, scanKeys, SHARED_REDIS_URL, sharedRedisSkip, silentLogger, uniquePrefix } from './support.ts';

const MINUTE = 60_000;
const skip = await sharedRedisSkip();

function newActor(): string {
  return `act_${randomUUID()}`;
}

function requestsCheck(actorId: string, limit: number, intervalMs = MINUTE): QuotaCheck {
  return { key: { actorId, feature: 'chat_completions', counter: 'requests' }, limit, intervalMs, cost: 1, mode: 'fit' };
}

describe('RedisLimiter on shared Redis', { skip }, () => {
  const keyPrefix = uniquePrefix('limiter');
  let admin: Redis;
  let limiter: RedisLimiter;

  before(async () => {
    admin = new Redis(SHARED_REDIS_URL, { maintNotifications: 'disabled' });
    limiter = new RedisLimiter({ url: SHARED_REDIS_URL, keyPrefix, commandTimeoutMs: 2000, failureMode: 'closed', logger: silentLogger() });
    await limiter.waitUntilReady(2000);
  });

  after(async () => {
    await limiter?.close();
    if (admin !== undefined) {
      await deleteKeys(admin, keyPrefix);
      assert.deepEqual(await scanKeys(admin, keyPrefix), []);
      await admin.quit();
    }
  });

  it('admits exactly limit across instances', async () => {
    const actorId = newActor();
    const instances = Array.from({ length: 4 }, () => new RedisLimiter({ url: SHARED_REDIS_URL, keyPrefix, commandTimeoutMs: 2000, failureMode: 'closed', logger: silentLogger() }));
    try {
      await Promise.all(instances.map((instance) => instance.waitUntilReady(2000)));
      const results = await Promise.all(Array.from({ length: 200 }, (_, i) => instances[i % 4].admit([requestsCheck(actorId, 100)])));
      assert.equal(results.filter((result) => result.allowed).length, 100);
      assert.equal(results.filter((result) => result.rejectedBy === 0).length, 100);
      assert.equal((await limiter.usage(requestsCheck(actorId, 100).key)).used, 100);
      const remaining = results.filter((result) => result.allowed).map((result) => result.counters[0].remaining);
      assert.deepEqual(
        remaining.sort((a, b) => a - b),
        Array.from({ length: 100 }, (_, i) => i),
      );
    } finally {
      await Promise.all(instances.map((instance) => instance.close()));
    }
  });

  it('uses documented key names', async () => {
    const actorId = newActor();
    await limiter.admit([requestsCheck(actorId, 5), { key: { actorId, feature: 'chat_completions', counter: 'input_tokens' }, limit: 100, intervalMs: MINUTE, cost: 7, mode: 'remaining' }], {
      actorId,
      feature: 'chat_completions',
      id: 'req_1',
      max: 3,
      ttlMs: 30_000,
    });
    const keys = (await scanKeys(admin, `${keyPrefix}{${actorId}}`)).sort();
    assert.deepEqual(keys, [`${keyPrefix}{${actorId}}:lease:chat_completions`, `${keyPrefix}{${actorId}}:q:chat_completions:input_tokens`, `${keyPrefix}{${actorId}}:q:chat_completions:requests`]);
    assert.equal(await admin.get(`${keyPrefix}{${actorId}}:q:chat_completions:requests`), '1');
    assert.equal(await admin.get(`${keyPrefix}{${actorId}}:q:chat_completions:input_tokens`), '7');
    assert.equal(await admin.type(`${keyPrefix}{${actorId}}:lease:chat_completions`), 'zset');
    const expiry = Number(await admin.zscore(`${keyPrefix}{${actorId}}:lease:chat_completions`, 'req_1'));
    assert.ok(Math.abs(expiry - (Date.now() + 30_000)) < 1000, `lease expiry ${expiry} is not about 30 s from now`);
  });

  it('sets TTL with first charge', async () => {
    const actorId = newActor();
    const key = `${keyPrefix}{${actorId}}:q:chat_completions:requests`;
    await limiter.admit([requestsCheck(actorId, 5, 10_000)]);
    const ttl = await admin.pttl(key);
    assert.ok(ttl > 0, `PTTL is ${ttl}`);
    assert.ok(ttl <= 10_000, `PTTL ${ttl} exceeds the interval`);
    await sleep(50);
    await limiter.admit([requestsCheck(actorId, 5, 10_000)]);
    const later = await admin.pttl(key);
    assert.ok(later > 0, `PTTL is ${later} after the second charge`);
    assert.ok(later < ttl, `PTTL went from ${ttl} to ${later}, but a later charge must not extend it`);
  });

  it('sets TTL on every key written', async () => {
    const actorId = newActor();
    const tokens: LimitKey = { actorId, feature: 'embeddings', counter: 'tokens' };
    await limiter.admit([requestsCheck(actorId, 5)], { actorId, feature: 'chat_completions', id: 'a', max: 2, ttlMs: 5000 });
    await limiter.admit([{ key: tokens, limit: 100, intervalMs: MINUTE, cost: 0, mode: 'remaining' }]);
    await limiter.settle([{ key: tokens, delta: 40, intervalMs: MINUTE }]);
    await limiter.settle([{ key: { actorId, feature: 'chat_completions', counter: 'output_tokens' }, delta: 3, intervalMs: MINUTE }]);
    await limiter.renewLease({ actorId, feature: 'chat_completions', id: 'a', max: 2, ttlMs: 20_000 });
    const keys = await scanKeys(admin, `${keyPrefix}{${actorId}}`);
    assert.equal(keys.length, 4);
    for (const key of keys) {
      const ttl = await admin.pttl(key);
      assert.ok(ttl > 0, `${key} has PTTL ${ttl}`);
    }
    const leaseTtl = await admin.pttl(`${keyPrefix}{${actorId}}:lease:chat_completions`);
    assert.ok(leaseTtl > 5000, `lease key PTTL ${leaseTtl} was not raised by the renewal`);
  });

  it('frees lease of crashed holder', async () => {
    const actorId = newActor();
    const lease = (id: string) => ({ actorId, feature: 'chat_completions' as const, id, max: 1, ttlMs: 300 });
    const crashed = new RedisLimiter({ url: SHARED_REDIS_URL, keyPrefix, commandTimeoutMs: 2000, failureMode: 'closed', logger: silentLogger() });
    await crashed.waitUntilReady(2000);
    assert.equal((await crashed.admit([requestsCheck(actorId, 10)], lease('held'))).allowed, true);
    // The holder goes away without settling.
    await crashed.close();

    const blocked = await limiter.admit([requestsCheck(actorId, 10)], lease('second'));
    assert.equal(blocked.rejectedBy, 'concurrency');
    await sleep(400);
    const freed = await limiter.admit([requestsCheck(actorId, 10)], lease('third'));
    assert.equal(freed.allowed, true);
    assert.equal(freed.inFlight, 1);
    assert.deepEqual(await admin.zrange(`${keyPrefix}{${actorId}}:lease:chat_completions`, 0, -1), ['third']);
  });

  it('rejects non-integer costs', async () => {
    const check = { ...requestsCheck(newActor(), 10), cost: 1.5 };
    await assert.rejects(limiter.admit([check]), RangeError);
    await assert.rejects(limiter.settle([{ key: check.key, delta: 0.5, intervalMs: MINUTE }]), RangeError);
    assert.equal(limiter.stats().errors, 0);
  });

  it('works with a given client', async () => {
    const client = createRedisClient(SHARED_REDIS_URL, { commandTimeoutMs: 2000, connectionName: 'llm-proxy-test' });
    try {
      const shared = new RedisLimiter({ client, keyPrefix, failureMode: 'closed', logger: silentLogger() });
      const actorId = newActor();
      await shared.waitUntilReady(2000);
      assert.equal((await shared.admit([requestsCheck(actorId, 1)])).allowed, true);
      assert.equal((await shared.admit([requestsCheck(actorId, 1)])).allowed, false);
      await shared.close();
      assert.equal(client.status, 'ready');
      assert.equal(await client.get(`${keyPrefix}{${actorId}}:q:chat_completions:requests`), '1');
    } finally {
      await client.quit();
    }
  });

  it('requires commandTimeout on a given client', async () => {
    const client = new Redis(SHARED_REDIS_URL, { lazyConnect: true, maintNotifications: 'disabled' });
    const prefixed = new Redis(SHARED_REDIS_URL, { lazyConnect: true, commandTimeout: 100, keyPrefix: 'x:', maintNotifications: 'disabled' });
    try {
      assert.throws(() => new RedisLimiter({ client, keyPrefix, failureMode: 'open', logger: silentLogger() }), /must set commandTimeout/);
      assert.throws(() => new RedisLimiter({ client: prefixed, keyPrefix, failureMode: 'open', logger: silentLogger() }), /must not set keyPrefix/);
    } finally {
      client.disconnect();
      prefixed.disconnect();
    }
  });

  it('replies to ping', async () => {
    await limiter.ping();
  });
});
