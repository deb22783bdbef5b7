/**
 * The periodic full sync with the remote actor source on one gateway without Redis: paging,
 * serving listed tokens without lookups, evicting tokens the listing drops, and keeping every
 * cached token when a sync fails part-way.
 *
 * The TTL is 30 s here, so a cached entry never goes stale during a test, and every lookup or
 * rejection the tests see comes from the sync.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';
import { generateToken, hashToken } from '../../src/actors/tokens.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { UpstreamServer } from '../helpers/upstream-server.ts';
import { entryFor, MockActorSource, type SourceEntry } from './mock-source.ts';
import { chat, logsWithMessage, SOURCE_SECRET, sourceEnv, SYNC_FAILED_MESSAGE, SYNCED_MESSAGE, waitForSyncs, waitUntil } from './support.ts';

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

interface Listed {
  token: string;
  entry: SourceEntry;
}

/** Starts a source that lists `count` tokens, two per page, and a gateway that syncs every second. */
async function setUp(count: number): Promise<{ source: MockActorSource; gateway: TestGateway; listed: Listed[] }> {
  const source = await MockActorSource.start();
  sources.push(source);
  const listed: Listed[] = [];
  for (let i = 0; i < count; i++) {
    const token = generateToken();
    const entry = entryFor(token);
    source.put(entry);
    listed.push({ token, entry });
  }
  const gateway = await startTestGateway(upstream, sourceEnv(source, { LLM_PROXY_ACTOR_SOURCE_SYNC_INTERVAL: '1s', LLM_PROXY_ACTOR_SOURCE_TTL: '30s' }));
  gateways.push(gateway);
  return { source, gateway, listed };
}

/** Asserts that every token is served, and that none of them made the gateway call /lookup. */
async function assertServedWithoutLookup(gateway: TestGateway, source: MockActorSource, tokens: Listed[]): Promise<void> {
  for (const { token } of tokens) {
    const result = await chat(gateway, token);
    assert.equal(result.status, 200, JSON.stringify(result.body));
  }
  assert.equal(source.lookups().length, 0);
}

test('sync pages through listing', async () => {
  const { source, gateway, listed } = await setUp(5);
  await waitForSyncs(gateway, 1);

  const firstSync = source.syncPages().slice(0, 3);
  assert.deepEqual(
    firstSync.map((call) => call.cursor),
    [null, 'offset-2', 'offset-4'],
  );
  for (const call of firstSync) {
    assert.equal(call.method, 'GET');
    assert.equal(call.authorization, `Bearer ${SOURCE_SECRET}`);
    assert.equal(call.status, 200);
  }
  assert.equal(logsWithMessage(gateway, SYNCED_MESSAGE)[0].tokens, 5);

  await assertServedWithoutLookup(gateway, source, listed);
});

test('sync evicts unlisted token', async () => {
  const { source, gateway, listed } = await setUp(5);
  await waitForSyncs(gateway, 1);
  await assertServedWithoutLookup(gateway, source, listed);

  const [removed, ...kept] = listed;
  source.remove(removed.entry.tokenHash);
  // The sync running at this moment may have read its pages before the removal, so wait for the one after it.
  await waitForSyncs(gateway, logsWithMessage(gateway, SYNCED_MESSAGE).length + 2);

  const rejected = await chat(gateway, removed.token);
  assert.equal(rejected.status, 401, JSON.stringify(rejected.body));
  assert.equal(rejected.code, 'invalid_token');
  const lookups = source.lookups();
  assert.equal(lookups.length, 1);
  assert.equal(lookups[0].tokenHash, hashToken(removed.token));
  assert.equal(lookups[0].status, 404);

  for (const { token } of kept) assert.equal((await chat(gateway, token)).status, 200);
  assert.equal(source.lookups().length, 1);
});

test('failed sync evicts nothing', async () => {
  const { source, gateway, listed } = await setUp(5);
  await waitForSyncs(gateway, 1);
  await assertServedWithoutLookup(gateway, source, listed);

  // The last token is on page 3. A complete listing without it would evict it, but page 2 fails.
  const last = listed[4];
  source.remove(last.entry.tokenHash);
  source.failSyncFromPage = 2;
  const failedBefore = logsWithMessage(gateway, SYNC_FAILED_MESSAGE).length;
  await waitUntil(() => logsWithMessage(gateway, SYNC_FAILED_MESSAGE).length >= failedBefore + 2, 5000, 'two failed syncs are logged');

  const failure = logsWithMessage(gateway, SYNC_FAILED_MESSAGE).at(-1);
  assert.match(String(failure?.err?.message), /actor source sync failed with status 503/);
  assert.ok(source.syncPages().some((call) => call.page === 2 && call.status === 503));
  assert.ok(!source.syncPages().some((call) => call.page === 3 && call.status === 503), 'the sync went on after page 2 failed');

  await assertServedWithoutLookup(gateway, source, listed);

  // Once the listing is complete again, the next sync evicts the removed token.
  source.failSyncFromPage = null;
  await waitForSyncs(gateway, logsWithMessage(gateway, SYNCED_MESSAGE).length + 1);
  const rejected = await chat(gateway, last.token);
  assert.equal(rejected.status, 401, JSON.stringify(rejected.body));
  assert.equal(rejected.code, 'invalid_token');
});

test('malformed sync entry evicts nothing', async () => {
  const { source, gateway, listed } = await setUp(3);
  await waitForSyncs(gateway, 1);
  await assertServedWithoutLookup(gateway, source, listed);

  source.remove(listed[0].entry.tokenHash);
  const badToken = generateToken();
  const bad = entryFor(badToken);
  source.putRaw(bad.tokenHash, { ...bad, actor: { ...bad.actor, limits: { chat_completions: { limit: 'many', interval: '1h' } } } });
  const failedBefore = logsWithMessage(gateway, SYNC_FAILED_MESSAGE).length;
  await waitUntil(() => logsWithMessage(gateway, SYNC_FAILED_MESSAGE).length >= failedBefore + 2, 5000, 'two failed syncs are logged');

  const failure = logsWithMessage(gateway, SYNC_FAILED_MESSAGE).at(-1);
  assert.match(String(failure?.err?.message), /actor\.limits\.chat_completions\.limit/);
  await assertServedWithoutLookup(gateway, source, listed);
});
