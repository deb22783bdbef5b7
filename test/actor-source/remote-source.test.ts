/**
 * Tokens that only the remote actor source stores, used through a real gateway: lookups, the
 * found and not-found caches, the background refresh, outages and the entry contract. The
 * periodic sync is off here, so every call the mock source records comes from a request.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { generateToken, hashToken } from '../../src/actors/tokens.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { UpstreamServer } from '../helpers/upstream-server.ts';
import { CHAT_LIMITS, entryFor, MockActorSource } from './mock-source.ts';
import { chat, LOOKUP_FAILED_MESSAGE, logsWithMessage, REFRESH_FAILED_MESSAGE, SOURCE_SECRET, sourceEnv, waitUntil } from './support.ts';

let upstream: UpstreamServer;
const gateways: TestGateway[] = [];
const sources: MockActorSource[] = [];

before(async () => {
  upstream = await UpstreamServer.start();
});

afterEach(async () => {
  await Promise.all(gateways.splice(0).map((gateway) => gateway.close()));
  await Promise.all(sources.splice(0).map((source) => source.stop()));
});

after(async () => {
  await upstream.close();
});

async function setUp(overrides: Record<string, string> = {}): Promise<{ source: MockActorSource; gateway: TestGateway }> {
  const source = await MockActorSource.start();
  sources.push(source);
  const gateway = await startTestGateway(upstream, sourceEnv(source, overrides));
  gateways.push(gateway);
  return { source, gateway };
}

describe('remote token lookup', () => {
  test('caches found token', async () => {
    // A 30 s TTL keeps the entry fresh however slowly the 20 requests run.
    const { source, gateway } = await setUp({ LLM_PROXY_ACTOR_SOURCE_TTL: '30s' });
    const token = generateToken();
    const entry = entryFor(token);
    source.put(entry);

    const first = await chat(gateway, token);
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.equal(source.lookups().length, 1);

    for (let i = 0; i < 20; i++) {
      const result = await chat(gateway, token);
      assert.equal(result.status, 200, `request ${i + 2}: ${JSON.stringify(result.body)}`);
    }
    assert.equal(source.lookups().length, 1);

    const [lookup] = source.lookups();
    assert.equal(lookup.method, 'POST');
    assert.equal(lookup.authorization, `Bearer ${SOURCE_SECRET}`);
    assert.equal(lookup.tokenHash, hashToken(token));
    assert.deepEqual(JSON.parse(lookup.body), { tokenHash: hashToken(token) });
    assert.ok(!JSON.stringify(source.calls).includes(token), 'the token itself reached the actor source');
  });

  test('records usage under remote actor', async () => {
    const { source, gateway } = await setUp();
    const token = generateToken();
    const entry = entryFor(token);
    source.put(entry);

    assert.equal((await chat(gateway, token)).status, 200);
    const events = await gateway.waitForEvents(entry.actor.id, 1);
    assert.equal(events[0].actorId, entry.actor.id);
  });

  test('caches unknown token for negative TTL', async () => {
    const { source, gateway } = await setUp();
    const token = generateToken();
    const hash = hashToken(token);

    const first = await chat(gateway, token);
    assert.equal(first.status, 401);
    assert.equal(first.code, 'invalid_token');
    assert.equal(source.lookups({ tokenHash: hash }).length, 1);
    assert.equal(source.lookups()[0].status, 404);

    // The source learns the token now, but the gateway keeps the 404 until the negative TTL ends.
    source.put(entryFor(token));
    for (let i = 0; i < 5; i++) {
      const repeated = await chat(gateway, token);
      assert.equal(repeated.status, 401);
      assert.equal(repeated.code, 'invalid_token');
    }
    assert.equal(source.lookups({ tokenHash: hash }).length, 1);

    await sleep(1100);
    const later = await chat(gateway, token);
    assert.equal(later.status, 200, JSON.stringify(later.body));
    assert.equal(source.lookups({ tokenHash: hash }).length, 2);
  });

  test('refreshes stale entry in background', async () => {
    const { source, gateway } = await setUp();
    const token = generateToken();
    const entry = entryFor(token);
    source.put(entry);
    assert.equal((await chat(gateway, token)).status, 200);
    assert.equal(source.lookups().length, 1);

    source.put({ ...entry, actor: { ...entry.actor, enabled: false } });
    source.delayMs = 1000;
    await sleep(1100);

    const stale = await chat(gateway, token);
    assert.equal(stale.status, 200, JSON.stringify(stale.body));
    assert.ok(stale.elapsedMs < 500, `the request waited ${Math.round(stale.elapsedMs)} ms for the slow source`);
    await waitUntil(() => source.lookups().length >= 2, 1000, 'the background refresh reaches the source');

    for (let i = 0; i < 5; i++) {
      const during = await chat(gateway, token);
      assert.equal(during.status, 200, `request ${i + 1} during the refresh: ${JSON.stringify(during.body)}`);
      assert.ok(during.elapsedMs < 500, `request ${i + 1} during the refresh took ${Math.round(during.elapsedMs)} ms`);
    }
    assert.equal(source.lookups().length, 2);

    await waitUntil(() => source.lookups()[1].status !== undefined, 3000, 'the source answers the refresh');
    let refreshed = await chat(gateway, token);
    for (let attempt = 0; attempt < 25 && refreshed.status === 200; attempt++) {
      await sleep(20);
      refreshed = await chat(gateway, token);
    }
    assert.equal(refreshed.status, 403);
    assert.equal(refreshed.code, 'actor_disabled');
    assert.equal(source.lookups().length, 2);
  });

  test('applies token state from source', async () => {
    const { source, gateway } = await setUp();
    const cases: { name: string; build(token: string): ReturnType<typeof entryFor>; status: number; code: string }[] = [
      { name: 'revoked token', build: (token) => entryFor(token, {}, { revokedAt: '2024-01-01T00:00:00Z' }), status: 401, code: 'token_revoked' },
      { name: 'expired token', build: (token) => entryFor(token, {}, { expiresAt: '2024-01-01T00:00:00Z' }), status: 401, code: 'token_expired' },
      { name: 'disabled actor', build: (token) => entryFor(token, { enabled: false }), status: 403, code: 'actor_disabled' },
      { name: 'feature without limits', build: (token) => entryFor(token, { limits: {} }), status: 403, code: 'feature_not_allowed' },
    ];
    for (const testCase of cases) {
      const token = generateToken();
      source.put(testCase.build(token));
      const result = await chat(gateway, token);
      assert.equal(result.status, testCase.status, `${testCase.name}: ${JSON.stringify(result.body)}`);
      assert.equal(result.code, testCase.code, testCase.name);
    }
    const future = generateToken();
    source.put(entryFor(future, {}, { expiresAt: new Date(Date.now() + 3_600_000).toISOString() }));
    assert.equal((await chat(gateway, future)).status, 200);
  });

  test('prefers local store token', async () => {
    const { source, gateway } = await setUp();
    const local = await gateway.createActor({ chat_completions: CHAT_LIMITS.chat_completions });
    // The source claims the same token for a disabled actor, and the gateway must not ask it.
    source.put(entryFor(local.token, { enabled: false }));

    for (let i = 0; i < 3; i++) {
      const result = await chat(gateway, local.token);
      assert.equal(result.status, 200, JSON.stringify(result.body));
    }
    await sleep(1100);
    assert.equal((await chat(gateway, local.token)).status, 200);
    assert.equal(source.calls.length, 0);
  });
});

describe('actor source outage', () => {
  const faults: { name: string; apply(source: MockActorSource): Promise<void> | void }[] = [
    { name: '503 answers', apply: (source) => void (source.failing = true) },
    { name: 'stopped source', apply: (source) => source.stop() },
    { name: 'hanging source', apply: (source) => void (source.hanging = true) },
  ];

  for (const fault of faults) {
    test(`keeps cached token on ${fault.name}`, async () => {
      // The 1 s timeout makes a request that waits for a hanging source take at least 1 s.
      const { source, gateway } = await setUp({ LLM_PROXY_ACTOR_SOURCE_TIMEOUT: '1s' });
      const cached = generateToken();
      const unseen = generateToken();
      source.put(entryFor(cached));
      source.put(entryFor(unseen));
      assert.equal((await chat(gateway, cached)).status, 200);

      await fault.apply(source);
      await sleep(1100);

      for (let i = 0; i < 3; i++) {
        const result = await chat(gateway, cached);
        assert.equal(result.status, 200, `request ${i + 1} past the TTL: ${JSON.stringify(result.body)}`);
        assert.ok(result.elapsedMs < 500, `request ${i + 1} past the TTL took ${Math.round(result.elapsedMs)} ms`);
      }
      await waitUntil(() => logsWithMessage(gateway, REFRESH_FAILED_MESSAGE).length >= 1, 2000, 'the failed refresh is logged');
      const again = await chat(gateway, cached);
      assert.equal(again.status, 200, `after the failed refresh: ${JSON.stringify(again.body)}`);

      const fresh = await chat(gateway, unseen);
      assert.equal(fresh.status, 503, JSON.stringify(fresh.body));
      assert.equal(fresh.code, 'store_unavailable');
      assert.equal(logsWithMessage(gateway, LOOKUP_FAILED_MESSAGE).length, 1);
      assert.ok(!gateway.logText().includes(SOURCE_SECRET), 'the source secret appears in the logs');
      assert.ok(!gateway.logText().includes(cached), 'a token appears in the logs');
    });
  }

  test('keeps cached token across retries', async () => {
    const { source, gateway } = await setUp();
    const token = generateToken();
    source.put(entryFor(token));
    assert.equal((await chat(gateway, token)).status, 200);

    source.failing = true;
    await sleep(1100);
    assert.equal((await chat(gateway, token)).status, 200);
    await waitUntil(() => logsWithMessage(gateway, REFRESH_FAILED_MESSAGE).length >= 1, 2000, 'the first failed refresh is logged');

    // After a failed refresh the resolver waits 5 s before the next try, then fails again.
    await sleep(5200);
    assert.equal((await chat(gateway, token)).status, 200);
    await waitUntil(() => logsWithMessage(gateway, REFRESH_FAILED_MESSAGE).length >= 2, 2000, 'the second failed refresh is logged');
    assert.equal((await chat(gateway, token)).status, 200);
    assert.equal(source.lookups().length, 3);

    source.failing = false;
    source.remove(hashToken(token));
    await sleep(5200);
    let result = await chat(gateway, token);
    for (let attempt = 0; attempt < 25 && result.status === 200; attempt++) {
      await sleep(20);
      result = await chat(gateway, token);
    }
    assert.equal(result.status, 401, 'a refresh that finds the token gone rejects it');
    assert.equal(result.code, 'invalid_token');
  });
});

describe('actor source entry contract', () => {
  const cases: { name: string; reason: RegExp; corrupt(entry: any): unknown }[] = [
    { name: 'upper-case tokenHash', reason: /tokenHash: expected 64 lower-case hex/, corrupt: (entry) => ({ ...entry, tokenHash: entry.tokenHash.toUpperCase() }) },
    { name: 'short tokenHash', reason: /tokenHash: expected 64 lower-case hex/, corrupt: (entry) => ({ ...entry, tokenHash: 'abc123' }) },
    { name: 'missing actor.id', reason: /actor\.id: expected a non-empty string/, corrupt: (entry) => ({ ...entry, actor: { ...entry.actor, id: undefined } }) },
    { name: 'missing actor', reason: /actor: expected an object/, corrupt: (entry) => ({ ...entry, actor: undefined }) },
    { name: 'missing token.id', reason: /token\.id: expected a non-empty string/, corrupt: (entry) => ({ ...entry, token: {} }) },
    { name: 'negative limit', reason: /actor\.limits\.chat_completions\.limit/, corrupt: (entry) => ({ ...entry, actor: { ...entry.actor, limits: { chat_completions: { limit: -1, interval: '1h' } } } }) },
    { name: 'unknown feature', reason: /actor\.limits.*unknown feature "images"/, corrupt: (entry) => ({ ...entry, actor: { ...entry.actor, limits: { images: { limit: 1, interval: '1h' } } } }) },
    { name: 'limits array', reason: /actor\.limits/, corrupt: (entry) => ({ ...entry, actor: { ...entry.actor, limits: [] } }) },
    { name: 'invalid expiresAt', reason: /token\.expiresAt: expected an ISO 8601 date-time/, corrupt: (entry) => ({ ...entry, token: { ...entry.token, expiresAt: 'tomorrow' } }) },
    { name: 'other token hash', reason: /another token hash/, corrupt: (entry) => ({ ...entry, tokenHash: hashToken(generateToken()) }) },
    { name: 'JSON string', reason: /entry: expected an object/, corrupt: () => 'not an entry' },
  ];

  test('rejects malformed entries with 503', async () => {
    const { source, gateway } = await setUp();
    for (const [index, testCase] of cases.entries()) {
      const token = generateToken();
      const hash = hashToken(token);
      source.putRaw(hash, testCase.corrupt(entryFor(token)));

      const result = await chat(gateway, token);
      assert.equal(result.status, 503, `${testCase.name}: ${JSON.stringify(result.body)}`);
      assert.equal(result.code, 'store_unavailable', testCase.name);

      const failures = logsWithMessage(gateway, LOOKUP_FAILED_MESSAGE);
      assert.equal(failures.length, index + 1, `${testCase.name}: lookup failures logged`);
      const logged = String(failures.at(-1)?.err?.message);
      assert.match(logged, testCase.reason, `${testCase.name}: logged reason`);
    }

    // A malformed response is not remembered as an unknown token: the next request asks again.
    const token = generateToken();
    source.putRaw(hashToken(token), cases[2].corrupt(entryFor(token)));
    assert.equal((await chat(gateway, token)).status, 503);
    assert.equal((await chat(gateway, token)).status, 503);
    assert.equal(source.lookups({ tokenHash: hashToken(token) }).length, 2);

    const valid = generateToken();
    source.put(entryFor(valid));
    const served = await chat(gateway, valid);
    assert.equal(served.status, 200, `a valid entry after the malformed ones: ${JSON.stringify(served.body)}`);
  });
});
