import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import type { Counter, LeaseRequest, LimitKey, QuotaCheck } from '../../src/limits/limiter.ts';
import { MemoryLimiter } from '../../src/limits/memory.ts';

const START = Date.UTC(2030, 0, 1);
const MINUTE = 60_000;

let now: number;
let limiter: MemoryLimiter;

beforeEach(() => {
  now = START;
  limiter = new MemoryLimiter(() => now);
});

afterEach(async () => {
  await limiter.close();
});

function keyFor(counter: Counter = 'requests', actorId = 'act_1'): LimitKey {
  return { actorId, feature: 'chat_completions', counter };
}

const key = keyFor();

function check(limit: number, cost: number, mode: QuotaCheck['mode'] = 'fit', checkKey: LimitKey = key): QuotaCheck {
  return { key: checkKey, limit, intervalMs: MINUTE, cost, mode };
}

function lease(id: string, max: number, ttlMs = 30_000): LeaseRequest {
  return { actorId: 'act_1', feature: 'chat_completions', id, max, ttlMs };
}

describe('MemoryLimiter window', () => {
  it('starts at first admission', async () => {
    now = START + 5000;
    const result = await limiter.admit([check(3, 1)]);
    assert.equal(result.allowed, true);
    assert.deepEqual(result.counters, [{ key, limit: 3, remaining: 2, resetAt: START + 5000 + MINUTE }]);
  });

  it('is not extended by later requests', async () => {
    await limiter.admit([check(3, 1)]);
    now = START + 30_000;
    const result = await limiter.admit([check(3, 1)]);
    assert.equal(result.counters[0].resetAt, START + MINUTE);
    assert.equal(result.counters[0].remaining, 1);
  });

  it('rejects once limit is used', async () => {
    for (let i = 0; i < 3; i++) await limiter.admit([check(3, 1)]);
    now = START + MINUTE - 1;
    const result = await limiter.admit([check(3, 1)]);
    assert.equal(result.allowed, false);
    assert.equal(result.rejectedBy, 0);
    assert.deepEqual(result.counters, [{ key, limit: 3, remaining: 0, resetAt: START + MINUTE }]);
  });

  it('charges nothing on rejection', async () => {
    for (let i = 0; i < 4; i++) await limiter.admit([check(3, 1)]);
    assert.equal((await limiter.usage(key)).used, 3);
  });

  it('resets after interval', async () => {
    for (let i = 0; i < 3; i++) await limiter.admit([check(3, 1)]);
    now = START + MINUTE;
    const result = await limiter.admit([check(3, 1)]);
    assert.equal(result.allowed, true);
    assert.deepEqual(result.counters[0], { key, limit: 3, remaining: 2, resetAt: START + 2 * MINUTE });
  });

  it('keeps keys apart', async () => {
    await limiter.admit([check(1, 1)]);
    const otherActor = await limiter.admit([check(1, 1, 'fit', keyFor('requests', 'act_2'))]);
    const otherCounter = await limiter.admit([check(1, 1, 'fit', keyFor('tokens'))]);
    const otherFeature = await limiter.admit([check(1, 1, 'fit', { actorId: 'act_1', feature: 'embeddings', counter: 'requests' })]);
    assert.equal(otherActor.allowed, true);
    assert.equal(otherCounter.allowed, true);
    assert.equal(otherFeature.allowed, true);
  });
});

describe('MemoryLimiter fit mode', () => {
  it('rejects cost above remaining', async () => {
    await limiter.admit([check(10, 8)]);
    const result = await limiter.admit([check(10, 3)]);
    assert.equal(result.allowed, false);
    assert.equal(result.counters[0].remaining, 2);
    assert.equal((await limiter.usage(key)).used, 8);
  });

  it('admits cost equal to remaining', async () => {
    await limiter.admit([check(10, 8)]);
    const result = await limiter.admit([check(10, 2)]);
    assert.equal(result.allowed, true);
    assert.equal(result.counters[0].remaining, 0);
  });
});

describe('MemoryLimiter remaining mode', () => {
  it('admits while used below limit', async () => {
    await limiter.admit([check(100, 99, 'remaining')]);
    const result = await limiter.admit([check(100, 50, 'remaining')]);
    assert.equal(result.allowed, true);
    assert.equal((await limiter.usage(key)).used, 149);
  });

  it('reports remaining 0 past limit', async () => {
    await limiter.admit([check(100, 99, 'remaining')]);
    const result = await limiter.admit([check(100, 50, 'remaining')]);
    assert.equal(result.counters[0].remaining, 0);
  });

  it('rejects at limit', async () => {
    await limiter.admit([check(100, 100, 'remaining')]);
    const result = await limiter.admit([check(100, 1, 'remaining')]);
    assert.equal(result.allowed, false);
    assert.equal(result.counters[0].remaining, 0);
  });
});

describe('MemoryLimiter cost 0', () => {
  it('admits while used below limit', async () => {
    await limiter.admit([check(100, 99, 'remaining')]);
    const result = await limiter.admit([check(100, 0, 'remaining')]);
    assert.equal(result.allowed, true);
    assert.equal(result.counters[0].remaining, 1);
  });

  it('rejects at limit', async () => {
    await limiter.admit([check(100, 100, 'remaining')]);
    const result = await limiter.admit([check(100, 0, 'remaining')]);
    assert.equal(result.allowed, false);
  });

  it('starts no window', async () => {
    const result = await limiter.admit([check(100, 0, 'remaining')]);
    assert.equal(result.allowed, true);
    assert.deepEqual(await limiter.usage(key), { used: 0, resetAt: undefined });
  });
});

describe('MemoryLimiter multiple checks', () => {
  const tokens = keyFor('tokens');

  it('charges every check', async () => {
    const result = await limiter.admit([check(10, 1), check(1000, 300, 'remaining', tokens)]);
    assert.equal(result.allowed, true);
    assert.equal((await limiter.usage(key)).used, 1);
    assert.equal((await limiter.usage(tokens)).used, 300);
  });

  it('charges nothing when one fails', async () => {
    await limiter.admit([check(1000, 1000, 'remaining', tokens)]);
    const result = await limiter.admit([check(10, 1), check(1000, 300, 'remaining', tokens)]);
    assert.equal(result.allowed, false);
    assert.equal(result.rejectedBy, 1);
    assert.equal((await limiter.usage(key)).used, 0);
    assert.equal((await limiter.usage(tokens)).used, 1000);
  });

  it('reports first failing check', async () => {
    await limiter.admit([check(1, 1), check(10, 10, 'remaining', tokens)]);
    const result = await limiter.admit([check(1, 1), check(10, 1, 'remaining', tokens)]);
    assert.equal(result.rejectedBy, 0);
  });
});

describe('MemoryLimiter settle', () => {
  it('refunds one unit', async () => {
    await limiter.admit([check(3, 1)]);
    await limiter.admit([check(3, 1)]);
    await limiter.settle([{ key, delta: -1, intervalMs: MINUTE }]);
    assert.equal((await limiter.usage(key)).used, 1);
  });

  it('never goes below 0', async () => {
    await limiter.admit([check(3, 1)]);
    await limiter.settle([{ key, delta: -1, intervalMs: MINUTE }]);
    await limiter.settle([{ key, delta: -1, intervalMs: MINUTE }]);
    assert.equal((await limiter.usage(key)).used, 0);
  });

  it('keeps window end', async () => {
    await limiter.admit([check(3, 1)]);
    now = START + 10_000;
    await limiter.settle([{ key, delta: 5, intervalMs: MINUTE }]);
    assert.deepEqual(await limiter.usage(key), { used: 6, resetAt: START + MINUTE });
  });

  it('ignores refund on expired window', async () => {
    await limiter.admit([check(3, 1)]);
    now = START + MINUTE;
    await limiter.settle([{ key, delta: -1, intervalMs: MINUTE }]);
    assert.deepEqual(await limiter.usage(key), { used: 0, resetAt: undefined });
  });

  it('starts new window on expired charge', async () => {
    await limiter.admit([check(3, 1)]);
    now = START + MINUTE + 500;
    await limiter.settle([{ key, delta: 2, intervalMs: MINUTE }]);
    assert.deepEqual(await limiter.usage(key), { used: 2, resetAt: START + 2 * MINUTE + 500 });
  });

  it('starts window on first charge', async () => {
    await limiter.settle([{ key, delta: 4, intervalMs: MINUTE }]);
    assert.deepEqual(await limiter.usage(key), { used: 4, resetAt: START + MINUTE });
  });
});

describe('MemoryLimiter usage', () => {
  it('is empty before first request', async () => {
    assert.deepEqual(await limiter.usage(key), { used: 0, resetAt: undefined });
  });

  it('reports used units and resetAt', async () => {
    await limiter.admit([check(10, 1)]);
    now = START + 1000;
    await limiter.admit([check(10, 2)]);
    assert.deepEqual(await limiter.usage(key), { used: 3, resetAt: START + MINUTE });
  });

  it('is empty after window ends', async () => {
    await limiter.admit([check(10, 1)]);
    now = START + MINUTE;
    assert.deepEqual(await limiter.usage(key), { used: 0, resetAt: undefined });
  });
});

describe('MemoryLimiter leases', () => {
  it('rejects past max in flight', async () => {
    await limiter.admit([check(10, 1)], lease('req_1', 2));
    await limiter.admit([check(10, 1)], lease('req_2', 2));
    const result = await limiter.admit([check(10, 1)], lease('req_3', 2));
    assert.equal(result.allowed, false);
    assert.equal(result.rejectedBy, 'concurrency');
    assert.equal(result.inFlight, 2);
  });

  it('charges nothing on concurrency rejection', async () => {
    await limiter.admit([check(10, 1)], lease('req_1', 1));
    await limiter.admit([check(10, 1)], lease('req_2', 1));
    assert.equal((await limiter.usage(key)).used, 1);
  });

  it('counts admitted request in flight', async () => {
    const result = await limiter.admit([check(10, 1)], lease('req_1', 2));
    assert.equal(result.inFlight, 1);
  });

  it('frees slot on settle', async () => {
    await limiter.admit([check(10, 1)], lease('req_1', 1));
    await limiter.settle([], { actorId: 'act_1', feature: 'chat_completions', id: 'req_1' });
    const result = await limiter.admit([check(10, 1)], lease('req_2', 1));
    assert.equal(result.allowed, true);
  });

  it('frees slot after TTL', async () => {
    await limiter.admit([check(10, 1)], lease('req_1', 1, 30_000));
    now = START + 30_000;
    const result = await limiter.admit([check(10, 1)], lease('req_2', 1));
    assert.equal(result.allowed, true);
  });

  it('renewal extends TTL', async () => {
    await limiter.admit([check(10, 1)], lease('req_1', 1, 30_000));
    now = START + 20_000;
    await limiter.renewLease(lease('req_1', 1, 30_000));
    now = START + 40_000;
    const result = await limiter.admit([check(10, 1)], lease('req_2', 1));
    assert.equal(result.allowed, false);
    assert.equal(result.rejectedBy, 'concurrency');
  });

  it('renewal ignores released lease', async () => {
    await limiter.admit([check(10, 1)], lease('req_1', 1));
    await limiter.settle([], { actorId: 'act_1', feature: 'chat_completions', id: 'req_1' });
    await limiter.renewLease(lease('req_1', 1));
    const result = await limiter.admit([check(10, 1)], lease('req_2', 1));
    assert.equal(result.allowed, true);
  });

  it('quota rejection takes no slot', async () => {
    await limiter.admit([check(1, 1)]);
    const rejected = await limiter.admit([check(1, 1)], lease('req_1', 1));
    assert.equal(rejected.rejectedBy, 0);
    const result = await limiter.admit([check(1, 0)], lease('req_2', 1));
    assert.equal(result.allowed, true);
  });
});

describe('MemoryLimiter concurrency', () => {
  it('admits 10 of 50 concurrent requests', async () => {
    const results = await Promise.all(Array.from({ length: 50 }, () => limiter.admit([check(10, 1)])));
    const allowed = results.filter((result) => result.allowed);
    assert.equal(allowed.length, 10);
    assert.equal((await limiter.usage(key)).used, 10);
  });

  it('gives each admission its own remaining', async () => {
    const results = await Promise.all(Array.from({ length: 10 }, () => limiter.admit([check(10, 1)])));
    const remaining = results.map((result) => result.counters[0].remaining).sort((a, b) => a - b);
    assert.deepEqual(remaining, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('admits 5 of 50 concurrent leases', async () => {
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => limiter.admit([check(100, 1)], lease(`req_${i}`, 5))));
    const allowed = results.filter((result) => result.allowed);
    assert.equal(allowed.length, 5);
  });
});
