/**
 * Two replicas under steady load while their Postgres is down for 30 s: tokens already cached keep
 * working, usage events wait in each replica's disk spool, and after Postgres is back every
 * request's event ends up in the database.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import pg from 'pg';
import { startPrivatePostgres, type PrivatePostgres } from '../helpers/private-postgres.ts';
import { UpstreamServer } from '../helpers/upstream-server.ts';
import { deleteKeys, SHARED_REDIS_URL, uniquePrefix } from '../redis/support.ts';
import { createActor, openaiChat, send, tally, warmUp, type ApiResult, type ClusterActor } from './client.ts';
import { clusterSkipReason, upstreamEnv, useReplicaSet } from './replicas.ts';

const REQUEST_INTERVAL_MS = 100;
const STOP_AT_MS = 2000;
const OUTAGE_MS = 30_000;
/** Load continues this long after Postgres is back. */
const AFTER_RESTART_MS = 3000;
/** Upper bound on the number of load requests, whatever the timing. */
const MAX_REQUESTS = 600;
const DRAIN_TIMEOUT_MS = 20_000;

const skip = await clusterSkipReason('postgres-server', 'shared-redis');

interface OutageRun {
  results: ApiResult[];
  /** `performance.now()` once Postgres had stopped, and once it accepted connections again. */
  stoppedAt: number;
  restartedAt: number;
  healthDuringOutage: ApiResult[];
  /** A request with a token that no replica had cached, sent during the outage. */
  uncachedDuringOutage: ApiResult[];
}

async function runOutage(urls: string[], token: string, uncachedToken: string, server: PrivatePostgres): Promise<OutageRun> {
  const startedAt = performance.now();
  let endAt = Number.POSITIVE_INFINITY;
  const at = (ms: number) => sleep(Math.max(0, startedAt + ms - performance.now()));

  const load = (async () => {
    const pending: Promise<ApiResult>[] = [];
    for (let i = 0; i < MAX_REQUESTS; i++) {
      await at(i * REQUEST_INTERVAL_MS);
      if (performance.now() >= endAt) break;
      pending.push(openaiChat(urls[i % urls.length], token));
    }
    return Promise.all(pending);
  })();

  await at(STOP_AT_MS);
  await server.stop();
  const stoppedAt = performance.now();
  await sleep(OUTAGE_MS / 2);
  const [healthDuringOutage, uncachedDuringOutage] = await Promise.all([
    Promise.all(urls.map((url) => send(url, '/-/healthz'))),
    Promise.all(urls.map((url) => openaiChat(url, uncachedToken))),
  ]);
  await sleep(Math.max(0, stoppedAt + OUTAGE_MS - performance.now()));
  await server.start();
  const restartedAt = performance.now();
  endAt = restartedAt + AFTER_RESTART_MS;
  return { results: await load, stoppedAt, restartedAt, healthDuringOutage, uncachedDuringOutage };
}

async function queryRequestIds(url: string, actorId: string): Promise<string[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    const { rows } = await client.query<{ request_id: string }>('SELECT request_id FROM usage_events WHERE actor_id = $1', [actorId]);
    return rows.map((row) => row.request_id);
  } finally {
    await client.end();
  }
}

describe('Postgres outage with two replicas', { skip }, () => {
  const replicas = useReplicaSet();
  const keyPrefix = uniquePrefix('cluster-pg-outage');
  let server: PrivatePostgres | undefined;
  let upstream: UpstreamServer | undefined;
  let actor: ClusterActor;
  let run: OutageRun;

  before(async () => {
    server = await startPrivatePostgres();
    upstream = await UpstreamServer.start();
    await replicas.start(2, {
      ...upstreamEnv(upstream),
      LLM_PROXY_DATABASE_URL: server.url,
      LLM_PROXY_REDIS_URL: SHARED_REDIS_URL,
      LLM_PROXY_REDIS_KEY_PREFIX: keyPrefix,
    });
    const urls = replicas.urls;
    const limits = { chat_completions: { limit: 100_000, interval: '1h', allowedModels: ['*'] } };
    run = await replicas.printOutputOnError('the outage scenario', async () => {
      actor = await createActor(urls[0], limits, 'outage-load');
      const uncached = await createActor(urls[0], limits, 'outage-uncached');
      await warmUp(urls, actor.token);
      return runOutage(urls, actor.token, uncached.token, server as PrivatePostgres);
    });
  });

  after(async () => {
    await upstream?.close();
    await server?.destroy();
    const redis = new Redis(SHARED_REDIS_URL, { maxRetriesPerRequest: 1 });
    try {
      await deleteKeys(redis, keyPrefix);
    } finally {
      redis.disconnect();
    }
  });

  it('serves cached tokens throughout the outage', () => {
    const during = run.results.filter((result) => result.startedAt >= run.stoppedAt && result.endedAt <= run.restartedAt);
    assert.ok(during.length >= (OUTAGE_MS / REQUEST_INTERVAL_MS) * 0.9, `only ${during.length} requests fell inside the outage`);
    assert.equal(run.results.filter((result) => result.status === 200).length, run.results.length, tally(run.results));
  });

  it('reports the store and the spool in healthz', () => {
    for (const answer of run.healthDuringOutage) {
      assert.equal(answer.status, 503, answer.text);
      assert.match(String(answer.body?.checks?.store), /^error/, answer.text);
      assert.ok(answer.body?.spooledUsageEvents > 0, `no spooled usage events: ${answer.text}`);
    }
  });

  it('answers an uncached token with 503 store_unavailable', () => {
    for (const answer of run.uncachedDuringOutage) {
      assert.equal(answer.status, 503, answer.text);
      assert.equal(answer.code, 'store_unavailable', answer.text);
    }
  });

  it('writes every usage event after the restart', async (t) => {
    const expected = run.results.map((result) => result.headers?.get('request-id'));
    assert.ok(expected.every((id) => typeof id === 'string'), 'every response has a request-id');
    const url = (server as PrivatePostgres).url;
    const deadline = run.restartedAt + DRAIN_TIMEOUT_MS;
    let stored: string[] = [];
    for (;;) {
      stored = await queryRequestIds(url, actor.id);
      if (stored.length >= expected.length || performance.now() > deadline) break;
      await sleep(250);
    }
    t.diagnostic(`${stored.length} of ${expected.length} events stored ${Math.round(performance.now() - run.restartedAt)} ms after the restart`);
    assert.equal(stored.length, expected.length, `events stored within ${DRAIN_TIMEOUT_MS} ms of the restart`);
    assert.deepEqual(new Set(stored), new Set(expected));
  });
});
