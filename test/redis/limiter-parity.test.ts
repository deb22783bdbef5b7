/**
 * One table of limiter cases, run against MemoryLimiter and RedisLimiter, so both provably give
 * the same results. Time passes for real (short windows and sleeps), because Redis uses its own
 * clock. resetAt is checked against the wall-clock time around each call.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import type { Feature } from '../../src/actors/types.ts';
import type { AdmitResult, Counter, LeaseRequest, LimitKey, Limiter, QuotaCheck } from '../../src/limits/limiter.ts';
import { MemoryLimiter } from '../../src/limits/memory.ts';
import { RedisLimiter } from '../../src/limits/redis.ts';
import { deleteKeys, SHARED_REDIS_URL, sharedRedisSkip, silentLogger, uniquePrefix } from './support.ts';

const MINUTE = 60_000;
/** resetAt values of one window may differ by this much in Redis, where resetAt is now + PTTL. */
const CLOCK_SLACK_MS = 3;

interface CaseContext {
  limiter: Limiter;
  /** A key of this case's own actor. */
  key(counter?: Counter, feature?: Feature): LimitKey;
  lease(id: string, max: number, ttlMs?: number): LeaseRequest;
  /** Admits and records the wall-clock time around the call. */
  timedAdmit(checks: QuotaCheck[], lease?: LeaseRequest): Promise<{ result: AdmitResult; startedAt: number; endedAt: number }>;
}

interface LimiterCase {
  name: string;
  run(context: CaseContext): Promise<void>;
}

function check(key: LimitKey, limit: number, cost: number, mode: QuotaCheck['mode'] = 'fit', intervalMs = MINUTE): QuotaCheck {
  return { key, limit, intervalMs, cost, mode };
}

/** Asserts that a window opened by a call between `startedAt` and `endedAt` ends `intervalMs` later. */
function assertWindowEnd(resetAt: number | undefined, startedAt: number, endedAt: number, intervalMs: number): void {
  assert.ok(resetAt !== undefined, 'resetAt is missing');
  assert.ok(resetAt >= startedAt + intervalMs - CLOCK_SLACK_MS, `resetAt ${resetAt} is before ${startedAt + intervalMs}`);
  assert.ok(resetAt <= endedAt + intervalMs + CLOCK_SLACK_MS, `resetAt ${resetAt} is after ${endedAt + intervalMs}`);
}

function assertSameInstant(actual: number | undefined, expected: number): void {
  assert.ok(actual !== undefined, 'resetAt is missing');
  assert.ok(Math.abs(actual - expected) <= CLOCK_SLACK_MS, `resetAt ${actual} differs from ${expected}`);
}

const CASES: LimiterCase[] = [
  {
    name: 'window starts at first charge',
    async run({ key, timedAdmit }) {
      const { result, startedAt, endedAt } = await timedAdmit([check(key(), 3, 1)]);
      assert.equal(result.allowed, true);
      assert.equal(result.rejectedBy, undefined);
      assert.equal(result.inFlight, undefined);
      assert.equal(result.counters.length, 1);
      assert.deepEqual(result.counters[0].key, key());
      assert.equal(result.counters[0].limit, 3);
      assert.equal(result.counters[0].remaining, 2);
      assertWindowEnd(result.counters[0].resetAt, startedAt, endedAt, MINUTE);
    },
  },
  {
    name: 'later charges keep window end',
    async run({ key, limiter }) {
      const first = await limiter.admit([check(key(), 3, 1)]);
      await sleep(100);
      const second = await limiter.admit([check(key(), 3, 1)]);
      assert.equal(second.counters[0].remaining, 1);
      assertSameInstant(second.counters[0].resetAt, first.counters[0].resetAt);
      assertSameInstant((await limiter.usage(key())).resetAt, first.counters[0].resetAt);
    },
  },
  {
    name: 'rejects once limit is used',
    async run({ key, limiter }) {
      const first = await limiter.admit([check(key(), 3, 1)]);
      await limiter.admit([check(key(), 3, 1)]);
      await limiter.admit([check(key(), 3, 1)]);
      const result = await limiter.admit([check(key(), 3, 1)]);
      assert.equal(result.allowed, false);
      assert.equal(result.rejectedBy, 0);
      assert.equal(result.counters[0].remaining, 0);
      assertSameInstant(result.counters[0].resetAt, first.counters[0].resetAt);
    },
  },
  {
    name: 'rejection charges nothing',
    async run({ key, limiter }) {
      for (let i = 0; i < 5; i++) await limiter.admit([check(key(), 3, 1)]);
      assert.equal((await limiter.usage(key())).used, 3);
    },
  },
  {
    name: 'window resets after interval',
    async run({ key, limiter, timedAdmit }) {
      for (let i = 0; i < 3; i++) await limiter.admit([check(key(), 3, 1, 'fit', 300)]);
      assert.equal((await limiter.admit([check(key(), 3, 1, 'fit', 300)])).allowed, false);
      await sleep(400);
      assert.deepEqual(await limiter.usage(key()), { used: 0, resetAt: undefined });
      const { result, startedAt, endedAt } = await timedAdmit([check(key(), 3, 1, 'fit', 300)]);
      assert.equal(result.allowed, true);
      assert.equal(result.counters[0].remaining, 2);
      assertWindowEnd(result.counters[0].resetAt, startedAt, endedAt, 300);
    },
  },
  {
    name: 'zero cost only checks',
    async run({ key, timedAdmit, limiter }) {
      const { result, startedAt, endedAt } = await timedAdmit([check(key('tokens'), 5, 0, 'remaining')]);
      assert.equal(result.allowed, true);
      assert.equal(result.counters[0].remaining, 5);
      assertWindowEnd(result.counters[0].resetAt, startedAt, endedAt, MINUTE);
      assert.deepEqual(await limiter.usage(key('tokens')), { used: 0, resetAt: undefined });
    },
  },
  {
    name: 'fit mode rejects cost past limit',
    async run({ key, limiter }) {
      await limiter.admit([check(key('tokens'), 10, 8)]);
      const rejected = await limiter.admit([check(key('tokens'), 10, 3)]);
      assert.equal(rejected.allowed, false);
      assert.equal(rejected.rejectedBy, 0);
      assert.equal(rejected.counters[0].remaining, 2);
      const exact = await limiter.admit([check(key('tokens'), 10, 2)]);
      assert.equal(exact.allowed, true);
      assert.equal(exact.counters[0].remaining, 0);
    },
  },
  {
    name: 'remaining mode overshoots once',
    async run({ key, limiter }) {
      await limiter.admit([check(key('tokens'), 10, 8, 'remaining')]);
      const overshoot = await limiter.admit([check(key('tokens'), 10, 5, 'remaining')]);
      assert.equal(overshoot.allowed, true);
      assert.equal(overshoot.counters[0].remaining, 0);
      assert.equal((await limiter.usage(key('tokens'))).used, 13);
      const rejected = await limiter.admit([check(key('tokens'), 10, 1, 'remaining')]);
      assert.equal(rejected.allowed, false);
      assert.equal(rejected.rejectedBy, 0);
      assert.equal(rejected.counters[0].remaining, 0);
      assert.equal((await limiter.usage(key('tokens'))).used, 13);
    },
  },
  {
    name: 'failing later check charges none',
    async run({ key, limiter }) {
      await limiter.admit([check(key('tokens'), 10, 10, 'remaining')]);
      const result = await limiter.admit([check(key('requests'), 5, 1), check(key('tokens'), 10, 5, 'remaining'), check(key('output_tokens'), 100, 5, 'remaining')]);
      assert.equal(result.allowed, false);
      assert.equal(result.rejectedBy, 1);
      assert.deepEqual(
        result.counters.map((counter) => counter.remaining),
        [5, 0, 100],
      );
      assert.deepEqual(await limiter.usage(key('requests')), { used: 0, resetAt: undefined });
      assert.equal((await limiter.usage(key('tokens'))).used, 10);
      assert.deepEqual(await limiter.usage(key('output_tokens')), { used: 0, resetAt: undefined });
    },
  },
  {
    name: 'first failing check is reported',
    async run({ key, limiter }) {
      await limiter.admit([check(key('requests'), 1, 1), check(key('tokens'), 10, 10)]);
      const result = await limiter.admit([check(key('requests'), 1, 1), check(key('tokens'), 10, 1)]);
      assert.equal(result.allowed, false);
      assert.equal(result.rejectedBy, 0);
    },
  },
  {
    name: 'passing checks are all charged',
    async run({ key, limiter }) {
      const result = await limiter.admit([check(key('requests'), 5, 1), check(key('tokens'), 100, 10, 'remaining'), check(key('input_tokens'), 50, 7, 'remaining')]);
      assert.equal(result.allowed, true);
      assert.deepEqual(
        result.counters.map((counter) => counter.remaining),
        [4, 90, 43],
      );
      assert.equal((await limiter.usage(key('requests'))).used, 1);
      assert.equal((await limiter.usage(key('tokens'))).used, 10);
      assert.equal((await limiter.usage(key('input_tokens'))).used, 7);
    },
  },
  {
    name: 'refund clamps at zero',
    async run({ key, limiter }) {
      const first = await limiter.admit([check(key('tokens'), 100, 2, 'remaining')]);
      await limiter.settle([{ key: key('tokens'), delta: -5, intervalMs: MINUTE }]);
      const usage = await limiter.usage(key('tokens'));
      assert.equal(usage.used, 0);
      assertSameInstant(usage.resetAt, first.counters[0].resetAt);
      const next = await limiter.admit([check(key('tokens'), 100, 1, 'remaining')]);
      assert.equal(next.counters[0].remaining, 99);
      assertSameInstant(next.counters[0].resetAt, first.counters[0].resetAt);
    },
  },
  {
    name: 'refund after window end does nothing',
    async run({ key, limiter }) {
      await limiter.admit([check(key('tokens'), 100, 2, 'remaining', 200)]);
      await sleep(300);
      await limiter.settle([{ key: key('tokens'), delta: -1, intervalMs: 200 }]);
      assert.deepEqual(await limiter.usage(key('tokens')), { used: 0, resetAt: undefined });
    },
  },
  {
    name: 'positive adjustment opens window',
    async run({ key, limiter }) {
      const startedAt = Date.now();
      await limiter.settle([{ key: key('output_tokens'), delta: 5, intervalMs: 500 }]);
      const endedAt = Date.now();
      const usage = await limiter.usage(key('output_tokens'));
      assert.equal(usage.used, 5);
      assertWindowEnd(usage.resetAt, startedAt, endedAt, 500);
    },
  },
  {
    name: 'positive adjustment keeps window end',
    async run({ key, limiter }) {
      const first = await limiter.admit([check(key('tokens'), 100, 1, 'remaining')]);
      await sleep(50);
      await limiter.settle([{ key: key('tokens'), delta: 4, intervalMs: MINUTE }]);
      const usage = await limiter.usage(key('tokens'));
      assert.equal(usage.used, 5);
      assertSameInstant(usage.resetAt, first.counters[0].resetAt);
    },
  },
  {
    name: 'zero adjustment changes nothing',
    async run({ key, limiter }) {
      await limiter.settle([{ key: key('tokens'), delta: 0, intervalMs: MINUTE }]);
      assert.deepEqual(await limiter.usage(key('tokens')), { used: 0, resetAt: undefined });
    },
  },
  {
    name: 'lease max rejects extra request',
    async run({ key, lease, limiter }) {
      const first = await limiter.admit([check(key(), 10, 1)], lease('a', 2));
      const second = await limiter.admit([check(key(), 10, 1)], lease('b', 2));
      const third = await limiter.admit([check(key(), 10, 1)], lease('c', 2));
      assert.equal(first.allowed, true);
      assert.equal(first.inFlight, 1);
      assert.equal(second.allowed, true);
      assert.equal(second.inFlight, 2);
      assert.equal(third.allowed, false);
      assert.equal(third.rejectedBy, 'concurrency');
      assert.equal(third.inFlight, 2);
      assert.equal(third.counters[0].remaining, 8);
      assert.equal((await limiter.usage(key())).used, 2);
    },
  },
  {
    name: 'quota rejection wins over concurrency',
    async run({ key, lease, limiter }) {
      await limiter.admit([check(key(), 1, 1)], lease('a', 1));
      const result = await limiter.admit([check(key(), 1, 1)], lease('b', 1));
      assert.equal(result.allowed, false);
      assert.equal(result.rejectedBy, 0);
      assert.equal(result.inFlight, 1);
    },
  },
  {
    name: 'lease alone is admitted',
    async run({ lease, limiter }) {
      const result = await limiter.admit([], lease('a', 1));
      assert.deepEqual(result, { allowed: true, counters: [], inFlight: 1 });
      const rejected = await limiter.admit([], lease('b', 1));
      assert.deepEqual(rejected, { allowed: false, counters: [], rejectedBy: 'concurrency', inFlight: 1 });
    },
  },
  {
    name: 'settle releases lease',
    async run({ key, lease, limiter }) {
      await limiter.admit([check(key(), 10, 1)], lease('a', 1));
      await limiter.settle([], { actorId: lease('a', 1).actorId, feature: 'chat_completions', id: 'a' });
      const result = await limiter.admit([check(key(), 10, 1)], lease('b', 1));
      assert.equal(result.allowed, true);
      assert.equal(result.inFlight, 1);
    },
  },
  {
    name: 'lease expires after ttl',
    async run({ key, lease, limiter }) {
      await limiter.admit([check(key(), 10, 1)], lease('a', 1, 200));
      assert.equal((await limiter.admit([check(key(), 10, 1)], lease('b', 1, 200))).rejectedBy, 'concurrency');
      await sleep(300);
      const result = await limiter.admit([check(key(), 10, 1)], lease('c', 1, 200));
      assert.equal(result.allowed, true);
      assert.equal(result.inFlight, 1);
    },
  },
  {
    name: 'renewal extends lease',
    async run({ key, lease, limiter }) {
      await limiter.admit([check(key(), 10, 1)], lease('a', 1, 400));
      await sleep(200);
      await limiter.renewLease(lease('a', 1, 400));
      // Past the first expiry, before the renewed one.
      await sleep(250);
      const whileHeld = await limiter.admit([check(key(), 10, 1)], lease('b', 1, 400));
      assert.equal(whileHeld.allowed, false);
      assert.equal(whileHeld.rejectedBy, 'concurrency');
      await sleep(300);
      const freed = await limiter.admit([check(key(), 10, 1)], lease('c', 1, 400));
      assert.equal(freed.allowed, true);
    },
  },
  {
    name: 'renewal of unknown lease does nothing',
    async run({ key, lease, limiter }) {
      await limiter.renewLease(lease('ghost', 1));
      const result = await limiter.admit([check(key(), 10, 1)], lease('a', 1));
      assert.equal(result.allowed, true);
      assert.equal(result.inFlight, 1);
    },
  },
  {
    name: 'keys are independent',
    async run({ key, limiter }) {
      await limiter.admit([check(key(), 1, 1)]);
      const otherCounter = await limiter.admit([check(key('tokens'), 1, 1)]);
      const otherFeature = await limiter.admit([check(key('requests', 'embeddings'), 1, 1)]);
      const otherActor = await limiter.admit([check({ ...key(), actorId: `${key().actorId}-2` }, 1, 1)]);
      assert.equal(otherCounter.allowed, true);
      assert.equal(otherFeature.allowed, true);
      assert.equal(otherActor.allowed, true);
      assert.equal((await limiter.admit([check(key(), 1, 1)])).allowed, false);
    },
  },
  {
    name: 'no checks admit at once',
    async run({ limiter }) {
      assert.deepEqual(await limiter.admit([]), { allowed: true, counters: [], inFlight: undefined });
    },
  },
];

function contextFor(limiter: Limiter): CaseContext {
  const actorId = `act_${randomUUID()}`;
  return {
    limiter,
    key: (counter = 'requests', feature = 'chat_completions') => ({ actorId, feature, counter }),
    lease: (id, max, ttlMs = 30_000) => ({ actorId, feature: 'chat_completions', id, max, ttlMs }),
    async timedAdmit(checks, lease) {
      const startedAt = Date.now();
      const result = await limiter.admit(checks, lease);
      return { result, startedAt, endedAt: Date.now() };
    },
  };
}

describe('MemoryLimiter cases', () => {
  for (const limiterCase of CASES) {
    it(limiterCase.name, async () => {
      const limiter = new MemoryLimiter();
      try {
        await limiterCase.run(contextFor(limiter));
      } finally {
        await limiter.close();
      }
    });
  }
});

const skip = await sharedRedisSkip();

describe('RedisLimiter cases', { skip }, () => {
  const keyPrefix = uniquePrefix('parity');
  let admin: Redis;
  let limiter: RedisLimiter;

  before(async () => {
    admin = new Redis(SHARED_REDIS_URL, { maintNotifications: 'disabled' });
    // A generous timeout and the closed mode turn any Redis trouble into a failed test rather than
    // an unchecked admission.
    limiter = new RedisLimiter({ url: SHARED_REDIS_URL, keyPrefix, commandTimeoutMs: 2000, failureMode: 'closed', logger: silentLogger() });
    await limiter.waitUntilReady(2000);
  });

  after(async () => {
    await limiter?.close();
    if (admin !== undefined) {
      await deleteKeys(admin, keyPrefix);
      await admin.quit();
    }
  });

  for (const limiterCase of CASES) {
    it(limiterCase.name, async () => {
      await limiterCase.run(contextFor(limiter));
      assert.deepEqual(limiter.stats(), { failOpenAdmissions: 0, errors: 0, breakerOpen: false });
    });
  }
});

/** Returns a deterministic pseudo-random generator (mulberry32) so a failing sequence can be replayed. */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('limiters agree on random operations', { skip }, () => {
  const keyPrefix = uniquePrefix('parity-random');
  let admin: Redis;
  let redisLimiter: RedisLimiter;
  let memoryLimiter: MemoryLimiter;

  before(async () => {
    admin = new Redis(SHARED_REDIS_URL, { maintNotifications: 'disabled' });
    redisLimiter = new RedisLimiter({ url: SHARED_REDIS_URL, keyPrefix, commandTimeoutMs: 2000, failureMode: 'closed', logger: silentLogger() });
    await redisLimiter.waitUntilReady(2000);
    memoryLimiter = new MemoryLimiter();
  });

  after(async () => {
    await redisLimiter?.close();
    await memoryLimiter?.close();
    if (admin !== undefined) {
      await deleteKeys(admin, keyPrefix);
      await admin.quit();
    }
  });

  it('matches on 400 seeded steps', async () => {
    const seed = 20240611;
    const random = seededRandom(seed);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)];
    const actors = [`act_${randomUUID()}`, `act_${randomUUID()}`];
    const counters: Counter[] = ['requests', 'tokens', 'output_tokens'];
    const leaseIds = ['l1', 'l2', 'l3', 'l4'];

    for (let step = 0; step < 400; step++) {
      const actorId = pick(actors);
      const where = `seed ${seed}, step ${step}`;
      const operation = random();
      if (operation < 0.6) {
        const checks: QuotaCheck[] = [];
        const used = new Set<Counter>();
        const count = 1 + Math.floor(random() * 3);
        for (let i = 0; i < count; i++) {
          const counter = pick(counters);
          if (used.has(counter)) continue;
          used.add(counter);
          checks.push({ key: { actorId, feature: 'chat_completions', counter }, limit: 5 + Math.floor(random() * 20), intervalMs: MINUTE, cost: Math.floor(random() * 6), mode: pick(['fit', 'remaining'] as const) });
        }
        const lease = random() < 0.4 ? { actorId, feature: 'chat_completions' as const, id: pick(leaseIds), max: 2, ttlMs: MINUTE } : undefined;
        const expected = await memoryLimiter.admit(checks, lease);
        const actual = await redisLimiter.admit(checks, lease);
        assert.equal(actual.allowed, expected.allowed, where);
        assert.equal(actual.rejectedBy, expected.rejectedBy, where);
        assert.equal(actual.inFlight, expected.inFlight, where);
        assert.deepEqual(
          actual.counters.map((counter) => counter.remaining),
          expected.counters.map((counter) => counter.remaining),
          where,
        );
        actual.counters.forEach((counter, i) => assert.ok(Math.abs(counter.resetAt - expected.counters[i].resetAt) < 100, `${where}: resetAt differs`));
      } else if (operation < 0.85) {
        const adjustments = [{ key: { actorId, feature: 'chat_completions' as const, counter: pick(counters) }, delta: Math.floor(random() * 13) - 6, intervalMs: MINUTE }];
        const lease = random() < 0.5 ? { actorId, feature: 'chat_completions' as const, id: pick(leaseIds) } : undefined;
        await memoryLimiter.settle(adjustments, lease);
        await redisLimiter.settle(adjustments, lease);
      } else {
        const key: LimitKey = { actorId, feature: 'chat_completions', counter: pick(counters) };
        const expected = await memoryLimiter.usage(key);
        const actual = await redisLimiter.usage(key);
        assert.equal(actual.used, expected.used, where);
        assert.equal(actual.resetAt === undefined, expected.resetAt === undefined, where);
      }
    }
    assert.equal(redisLimiter.stats().errors, 0);
  });
});
