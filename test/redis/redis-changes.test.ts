import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import type { ActorChange } from '../../src/actors/changes.ts';
import { RedisChangeBus } from '../../src/actors/redis-changes.ts';
import { startPrivateRedis, type PrivateRedis } from '../helpers/private-redis.ts';
import { capturingLogger, SHARED_REDIS_URL, sharedRedisSkip, silentLogger, uniquePrefix } from './support.ts';

const DELIVERY_TIMEOUT_MS = 1000;

/** Collects the changes a bus delivers. */
function collect(bus: RedisChangeBus): ActorChange[] {
  const received: ActorChange[] = [];
  bus.subscribe((change) => received.push(change));
  return received;
}

/** Waits until `count` changes arrived; returns how long that took. */
async function waitForCount(received: ActorChange[], count: number, timeoutMs = DELIVERY_TIMEOUT_MS): Promise<number> {
  const startedAt = Date.now();
  while (received.length < count) {
    if (Date.now() - startedAt > timeoutMs) throw new Error(`received ${received.length} of ${count} changes within ${timeoutMs} ms`);
    await sleep(5);
  }
  return Date.now() - startedAt;
}

/** Waits until `count` connections subscribe to the channel, so that no publish is lost to a race. */
async function waitForSubscribers(admin: Redis, channel: string, count: number): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const [, subscribers] = (await admin.pubsub('NUMSUB', channel)) as [string, number];
    if (subscribers >= count) return;
    await sleep(20);
  }
  throw new Error(`fewer than ${count} subscribers on ${channel} after 2 s`);
}

const skip = await sharedRedisSkip();

describe('RedisChangeBus on shared Redis', { skip }, () => {
  let admin: Redis;
  let keyPrefix: string;
  let buses: RedisChangeBus[] = [];

  before(() => {
    admin = new Redis(SHARED_REDIS_URL, { maintNotifications: 'disabled' });
  });

  after(async () => {
    await admin?.quit();
  });

  beforeEach(() => {
    keyPrefix = uniquePrefix('changes');
  });

  afterEach(async () => {
    await Promise.all(buses.map((bus) => bus.close()));
    buses = [];
  });

  function newBus(logger = silentLogger()): RedisChangeBus {
    const bus = new RedisChangeBus({ url: SHARED_REDIS_URL, keyPrefix, commandTimeoutMs: 1000, logger });
    buses.push(bus);
    return bus;
  }

  it('delivers to other instance', async () => {
    const publisher = newBus();
    const subscriber = newBus();
    const published = collect(publisher);
    const received = collect(subscriber);
    await waitForSubscribers(admin, `${keyPrefix}actor-changes`, 2);

    await publisher.publish({ actorId: 'act_1' });
    await publisher.publish({ tokenId: 'tok_1' });
    await publisher.publish({ syncedTokenHashes: ['a', 'b'] });
    const elapsed = await waitForCount(received, 3);
    assert.ok(elapsed < DELIVERY_TIMEOUT_MS);
    assert.deepEqual(received, [{ actorId: 'act_1' }, { tokenId: 'tok_1' }, { syncedTokenHashes: ['a', 'b'] }]);
    // The publishing replica applied its change itself, so its own bus skips the echo.
    await sleep(100);
    assert.deepEqual(published, []);
  });

  it('ignores invalid messages', async () => {
    const { logger, lines } = capturingLogger();
    const subscriber = newBus(logger);
    const publisher = newBus();
    const received = collect(subscriber);
    const channel = `${keyPrefix}actor-changes`;
    await waitForSubscribers(admin, channel, 2);

    await admin.publish(channel, 'not json');
    await admin.publish(channel, JSON.stringify({ source: 'x', change: { actorId: 42 } }));
    await admin.publish(channel, JSON.stringify({ actorId: 'act_1' }));
    await publisher.publish({ actorId: 'act_2' });
    await waitForCount(received, 1);
    assert.deepEqual(received, [{ actorId: 'act_2' }]);
    const warnings = lines.filter((line) => line.msg === 'ignored an invalid message on the actor change channel');
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0].suppressed, 0);
  });

  it('survives failing handler', async () => {
    const subscriber = newBus();
    const publisher = newBus();
    subscriber.subscribe(() => {
      throw new Error('handler bug');
    });
    const received = collect(subscriber);
    await waitForSubscribers(admin, `${keyPrefix}actor-changes`, 2);
    await publisher.publish({ actorId: 'act_1' });
    await publisher.publish({ actorId: 'act_2' });
    await waitForCount(received, 2);
    assert.deepEqual(received, [{ actorId: 'act_1' }, { actorId: 'act_2' }]);
  });

  it('keeps prefixes apart', async () => {
    const subscriber = newBus();
    const received = collect(subscriber);
    const other = new RedisChangeBus({ url: SHARED_REDIS_URL, keyPrefix: uniquePrefix('changes-other'), commandTimeoutMs: 1000, logger: silentLogger() });
    buses.push(other);
    await waitForSubscribers(admin, `${keyPrefix}actor-changes`, 1);
    await other.publish({ actorId: 'act_other' });
    await sleep(200);
    assert.deepEqual(received, []);
  });
});

describe('RedisChangeBus with a failing Redis', () => {
  let redis: PrivateRedis;
  let buses: RedisChangeBus[] = [];

  beforeEach(async () => {
    redis = await startPrivateRedis();
  });

  afterEach(async () => {
    redis.resume();
    await Promise.all(buses.map((bus) => bus.close()));
    buses = [];
    await redis.stop();
  });

  function newBus(logger = silentLogger()): RedisChangeBus {
    const bus = new RedisChangeBus({ url: redis.url, keyPrefix: 'llmp-fault:', commandTimeoutMs: 50, logger });
    buses.push(bus);
    return bus;
  }

  it('publishes without throwing while paused', async () => {
    const { logger, lines } = capturingLogger();
    const publisher = newBus(logger);
    const subscriber = newBus();
    const received = collect(subscriber);
    const admin = new Redis(redis.url, { maintNotifications: 'disabled' });
    try {
      await waitForSubscribers(admin, 'llmp-fault:actor-changes', 2);
    } finally {
      await admin.quit();
    }

    redis.pause();
    for (let i = 0; i < 3; i++) {
      const startedAt = performance.now();
      await publisher.publish({ actorId: `act_lost_${i}` });
      const ms = performance.now() - startedAt;
      assert.ok(ms <= 150, `publish took ${ms.toFixed(0)} ms`);
    }
    const warnings = lines.filter((line) => line.level === 'warn' && typeof line.msg === 'string' && line.msg.startsWith('failed to publish'));
    assert.equal(warnings.length, 1);

    redis.resume();
    // Publishes that timed out on the client may still reach Redis once it runs again, so wait
    // for a change sent after the pause.
    const deadline = Date.now() + 5000;
    while (!received.some((change) => change.actorId === 'act_after') && Date.now() < deadline) {
      await publisher.publish({ actorId: 'act_after' });
      await sleep(100);
    }
    assert.ok(received.some((change) => change.actorId === 'act_after'));
  });

  it('resubscribes after connection loss', async () => {
    const publisher = newBus();
    const subscriber = newBus();
    const received = collect(subscriber);
    const admin = new Redis(redis.url, { maintNotifications: 'disabled' });
    try {
      await waitForSubscribers(admin, 'llmp-fault:actor-changes', 2);
      const killed = await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub');
      assert.equal(killed, 2);
      await waitForSubscribers(admin, 'llmp-fault:actor-changes', 2);
    } finally {
      await admin.quit();
    }
    await publisher.publish({ actorId: 'act_1' });
    await waitForCount(received, 1);
    assert.deepEqual(received, [{ actorId: 'act_1' }]);
  });

  it('subscribes once Redis starts', async () => {
    const port = redis.port;
    await redis.stop();
    // Nothing listens on the port now: the buses must start anyway.
    const url = `redis://127.0.0.1:${port}`;
    const publisher = new RedisChangeBus({ url, keyPrefix: 'llmp-fault:', commandTimeoutMs: 50, logger: silentLogger() });
    const subscriber = new RedisChangeBus({ url, keyPrefix: 'llmp-fault:', commandTimeoutMs: 50, logger: silentLogger() });
    buses.push(publisher, subscriber);
    const received = collect(subscriber);
    await publisher.publish({ actorId: 'act_lost' });

    redis = await startPrivateRedis({ port });
    // The reconnect delay grows to at most about 2 s, so both connections are back within 5 s.
    const deadline = Date.now() + 5000;
    while (received.length === 0 && Date.now() < deadline) {
      await publisher.publish({ actorId: 'act_after_start' });
      await sleep(100);
    }
    assert.equal(received[0]?.actorId, 'act_after_start');
  });
});
