/**
 * The actor sync on two gateways that share Redis: the leader lock lets one replica sync at a
 * time, and the evictions of the leader's sync reach the other replica over the change bus.
 *
 * Uses the machine's shared Redis at 127.0.0.1:6379 with a key prefix of its own, deleted
 * afterwards. Without a reachable Redis the tests are skipped, unless CI is set.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { generateToken, hashToken } from '../../src/actors/tokens.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { UpstreamServer } from '../helpers/upstream-server.ts';
import { deleteKeys, scanKeys, SHARED_REDIS_URL, sharedRedisSkip, uniquePrefix } from '../redis/support.ts';
import { entryFor, MockActorSource } from './mock-source.ts';
import { chat, logsWithMessage, sourceEnv, SYNC_FAILED_MESSAGE, SYNCED_MESSAGE, waitUntil } from './support.ts';

const skip = await sharedRedisSkip();

/**
 * How long the leader test counts sync runs, in ms. With a 1 s interval a single leader runs about
 * 4 syncs in that time, and two replicas that both sync run about 8.
 */
const OBSERVE_MS = 3500;
const POLL_MS = 100;

describe('actor sync on shared Redis', { skip }, () => {
  let upstream: UpstreamServer;
  let admin: Redis;
  let source: MockActorSource;
  let keyPrefix: string;
  const gateways: TestGateway[] = [];

  before(async () => {
    upstream = await UpstreamServer.start();
    admin = new Redis(SHARED_REDIS_URL, { maintNotifications: 'disabled' });
  });

  afterEach(async () => {
    await Promise.all(gateways.splice(0).map((gateway) => gateway.close()));
    await source?.stop();
    if (keyPrefix === undefined) return;
    await deleteKeys(admin, keyPrefix);
    assert.deepEqual(await scanKeys(admin, keyPrefix), []);
  });

  after(async () => {
    await admin?.quit();
    await upstream?.close();
  });

  /** Starts two gateways with one key prefix. Each calls the source under its own base path. */
  async function startPair(syncInterval = '1s'): Promise<{ a: TestGateway; b: TestGateway }> {
    source = await MockActorSource.start();
    keyPrefix = uniquePrefix('actor-sync');
    const env = (base: string) => ({
      ...sourceEnv(source, { LLM_PROXY_ACTOR_SOURCE_SYNC_INTERVAL: syncInterval, LLM_PROXY_ACTOR_SOURCE_TTL: '60s' }),
      LLM_PROXY_ACTOR_SOURCE_URL: `${source.url}${base}`,
      LLM_PROXY_REDIS_URL: SHARED_REDIS_URL,
      LLM_PROXY_REDIS_KEY_PREFIX: keyPrefix,
      LLM_PROXY_REDIS_TIMEOUT: '1s',
    });
    const a = await startTestGateway(upstream, env('/gw-a'));
    gateways.push(a);
    const b = await startTestGateway(upstream, env('/gw-b'));
    gateways.push(b);
    return { a, b };
  }

  test('one replica syncs at a time', async () => {
    const startedAt = Date.now();
    await startPair();
    for (let i = 0; i < 3; i++) source.put(entryFor(generateToken()));
    await sleep(Math.max(0, OBSERVE_MS - (Date.now() - startedAt)));

    const firstPages = source.syncPages({ firstOnly: true });
    const bases = new Set(firstPages.map((call) => call.base));
    assert.equal(bases.size, 1, `both gateways ran syncs: ${JSON.stringify(firstPages.map((call) => call.base))}`);
    assert.ok(firstPages.length >= 3, `expected at least 3 sync runs in ${OBSERVE_MS} ms, got ${firstPages.length}`);
    assert.ok(firstPages.length <= 5, `expected at most 5 sync runs in ${OBSERVE_MS} ms, got ${firstPages.length}`);
  });

  test('leader sync evicts on follower', async () => {
    const { a, b } = await startPair();
    const token = generateToken();
    const entry = entryFor(token);
    source.put(entry);
    for (let i = 0; i < 2; i++) source.put(entryFor(generateToken()));
    await waitUntil(() => logsWithMessage(a, SYNCED_MESSAGE).length + logsWithMessage(b, SYNCED_MESSAGE).length >= 1, 5000, 'either gateway completes a sync');

    const leaderBase = source.syncPages({ firstOnly: true })[0].base;
    const followerBase = leaderBase === '/gw-a' ? '/gw-b' : '/gw-a';
    const follower = followerBase === '/gw-a' ? a : b;

    // The follower runs no sync, so it learns the token by a lookup and keeps it for the 60 s TTL.
    assert.equal((await chat(follower, token)).status, 200);
    assert.equal((await chat(follower, token)).status, 200);
    assert.equal(source.lookups({ base: followerBase, tokenHash: entry.tokenHash }).length, 1);

    source.remove(entry.tokenHash);
    const removedAt = Date.now();
    let result = await chat(follower, token);
    for (let attempt = 0; attempt < 30 && result.status === 200; attempt++) {
      await sleep(POLL_MS);
      result = await chat(follower, token);
    }
    const elapsedMs = Date.now() - removedAt;
    assert.equal(result.status, 401, `the follower still served the removed token after ${elapsedMs} ms`);
    assert.equal(result.code, 'invalid_token');
    assert.ok(elapsedMs < 2500, `the follower rejected the removed token only after ${elapsedMs} ms`);
    // Rejected after a second lookup that found nothing, not by its own expiry or sync.
    const lookups = source.lookups({ base: followerBase, tokenHash: hashToken(token) });
    assert.equal(lookups.length, 2);
    assert.equal(lookups[1].status, 404);
    assert.equal(source.syncPages({ base: followerBase }).length, 0);
  });

  test('leader syncs at start-up', async () => {
    // With a 10 s interval, only the sync that start() runs at once can land within the wait.
    const { a, b } = await startPair('10s');
    const started = Date.now();
    await waitUntil(() => source.syncPages({ firstOnly: true }).length >= 1, 3000, 'a gateway requests the first sync page').catch(() => undefined);
    const waitedMs = Date.now() - started;
    const failures = [...logsWithMessage(a, SYNC_FAILED_MESSAGE), ...logsWithMessage(b, SYNC_FAILED_MESSAGE)];
    assert.deepEqual(
      failures.map((line) => line.err?.message),
      [],
      'a sync failed at start-up',
    );
    assert.equal(source.syncPages({ firstOnly: true }).length, 1, `no sync within ${waitedMs} ms of start-up`);
  });

  test('follower takes over from stopped leader', async () => {
    const { a, b } = await startPair();
    await waitUntil(() => source.syncPages({ firstOnly: true }).length >= 1, 3000, 'a gateway requests the first sync page');
    const leaderBase = source.syncPages({ firstOnly: true })[0].base;
    const leader = leaderBase === '/gw-a' ? a : b;
    const followerBase = leaderBase === '/gw-a' ? '/gw-b' : '/gw-a';

    // Closing the gateway releases the lock, so the follower takes it on its next tick.
    await leader.close();
    gateways.splice(gateways.indexOf(leader), 1);
    const stoppedAt = Date.now();
    await waitUntil(() => source.syncPages({ firstOnly: true, base: followerBase }).length >= 1, 2500, 'the follower requests a sync page');
    assert.ok(Date.now() - stoppedAt < 2500);
  });
});
