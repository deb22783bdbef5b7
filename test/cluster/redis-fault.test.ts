/**
 * Two replicas under steady load while their Redis stops responding: a private redis-server is
 * frozen with SIGSTOP for 5 s in the middle of the run, with its connections left open. Requests
 * must stay fast in both failure modes, `open` must admit them, `closed` must reject them with
 * 503 store_unavailable, and limits must be enforced again after SIGCONT without a restart.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startPrivateRedis, type PrivateRedis } from '../helpers/private-redis.ts';
import { UpstreamServer } from '../helpers/upstream-server.ts';
import { dropSchema, SHARED_POSTGRES_URL, uniqueSchemaName } from '../postgres/shared-postgres.ts';
import { anthropicMessages, createActor, openaiChat, send, tally, warmUp, type ApiResult } from './client.ts';
import { clusterSkipReason, upstreamEnv, useReplicaSet } from './replicas.ts';

const REQUEST_INTERVAL_MS = 50;
const LOAD_MS = 10_000;
const PAUSE_AT_MS = 2000;
const STALL_MS = 5000;
/** Health probes run this long into the stall. */
const PROBE_AT_MS = PAUSE_AT_MS + STALL_MS / 2;
/** The upstream responds at once, so this bounds what the gateway adds to a request. */
const MAX_LATENCY_MS = 250;
/** Requests sent this long after SIGCONT must be checked against Redis again. */
const RECOVERY_MS = 2000;
const HEALTH_RECOVERY_TIMEOUT_MS = 5000;
const SMALL_LIMIT = 30;

const skip = await clusterSkipReason('redis-server', 'shared-postgres');

type Shape = 'openai' | 'anthropic';

interface LoadResult extends ApiResult {
  shape: Shape;
  replica: number;
}

interface StallRun {
  results: LoadResult[];
  /** `performance.now()` right after SIGSTOP and right after SIGCONT. */
  pausedAt: number;
  resumedAt: number;
  /** Probes of each replica in the middle of the stall. */
  readyDuringStall: ApiResult[];
  healthDuringStall: ApiResult[];
  limitsDuringStall: ApiResult[];
}

/**
 * Sends one request every 50 ms for 10 s, alternating replicas and the OpenAI and Anthropic
 * routes, and freezes Redis from 2 s to 7 s into the run.
 */
async function runStall(urls: string[], token: string, redis: PrivateRedis): Promise<StallRun> {
  const startedAt = performance.now();
  const at = (ms: number) => sleep(Math.max(0, startedAt + ms - performance.now()));
  const count = LOAD_MS / REQUEST_INTERVAL_MS;

  const load = Promise.all(
    Array.from({ length: count }, async (_, i): Promise<LoadResult> => {
      await at(i * REQUEST_INTERVAL_MS);
      const replica = i % urls.length;
      const shape: Shape = Math.floor(i / urls.length) % 2 === 0 ? 'openai' : 'anthropic';
      const result = shape === 'openai' ? await openaiChat(urls[replica], token) : await anthropicMessages(urls[replica], token);
      return { ...result, shape, replica };
    }),
  );

  await at(PAUSE_AT_MS);
  redis.pause();
  const pausedAt = performance.now();
  try {
    await at(PROBE_AT_MS);
    const auth = { authorization: `Bearer ${token}` };
    const [readyDuringStall, healthDuringStall, limitsDuringStall] = await Promise.all([
      Promise.all(urls.map((url) => send(url, '/-/readyz'))),
      Promise.all(urls.map((url) => send(url, '/-/healthz'))),
      Promise.all(urls.map((url) => send(url, '/v1/limits', { headers: auth }))),
    ]);
    await at(PAUSE_AT_MS + STALL_MS);
    redis.resume();
    const resumedAt = performance.now();
    return { results: await load, pausedAt, resumedAt, readyDuringStall, healthDuringStall, limitsDuringStall };
  } finally {
    redis.resume();
  }
}

/** Waits until every replica's `/-/healthz` reports Redis as ok, for at most 5 s. Returns the last responses. */
async function waitForRedisHealthy(urls: string[]): Promise<ApiResult[]> {
  const deadline = performance.now() + HEALTH_RECOVERY_TIMEOUT_MS;
  for (;;) {
    const answers = await Promise.all(urls.map((url) => send(url, '/-/healthz')));
    if (answers.every((answer) => answer.body?.checks?.redis === 'ok') || performance.now() > deadline) return answers;
    await sleep(100);
  }
}

function assertShapedUnavailable(result: LoadResult): void {
  const where = `${result.shape} request to replica ${result.replica}: ${result.text}`;
  assert.equal(result.status, 503, where);
  assert.equal(result.code, 'store_unavailable', where);
  assert.equal(result.headers?.get('retry-after'), '1', where);
  if (result.shape === 'anthropic') {
    assert.equal(result.body.type, 'error', where);
    assert.equal(result.body.error.type, 'overloaded_error', where);
  } else {
    assert.equal(result.body.error.type, 'server_error', where);
  }
}

function stallTests(mode: 'open' | 'closed'): void {
  describe(`Redis stall with two replicas in ${mode} mode`, { skip }, () => {
    const replicas = useReplicaSet();
    const schema = uniqueSchemaName(`cluster_stall_${mode}`);
    let redis: PrivateRedis | undefined;
    let upstream: UpstreamServer | undefined;
    let urls: string[];
    let run: StallRun;

    before(async () => {
      redis = await startPrivateRedis();
      upstream = await UpstreamServer.start();
      await replicas.start(2, {
        ...upstreamEnv(upstream),
        LLM_PROXY_REDIS_URL: redis.url,
        LLM_PROXY_REDIS_FAILURE_MODE: mode,
        LLM_PROXY_DATABASE_URL: SHARED_POSTGRES_URL,
        LLM_PROXY_DATABASE_SCHEMA: schema,
      });
      urls = replicas.urls;
      run = await replicas.printOutputOnError('the stall scenario', async () => {
        const actor = await createActor(urls[0], { chat_completions: { limit: 100_000, interval: '1h', allowedModels: ['*'] } });
        await warmUp(urls, actor.token);
        return runStall(urls, actor.token, redis as PrivateRedis);
      });
    });

    after(async () => {
      await upstream?.close();
      await redis?.stop();
      await dropSchema(schema);
    });

    it(`keeps every request under ${MAX_LATENCY_MS} ms`, (t) => {
      t.diagnostic(`maximum latency ${Math.round(Math.max(...run.results.map((result) => result.latencyMs)))} ms over ${run.results.length} requests`);
      const slow = run.results.filter((result) => result.latencyMs > MAX_LATENCY_MS);
      const described = slow.map((result) => `${Math.round(result.latencyMs)} ms at ${Math.round(result.startedAt - run.pausedAt)} ms from SIGSTOP (${result.status})`);
      assert.deepEqual(described, []);
    });

    if (mode === 'open') {
      it('admits every request during the stall', () => {
        const failed = run.results.filter((result) => result.status !== 200);
        assert.equal(failed.length, 0, tally(run.results));
      });
    } else {
      it('rejects requests during the stall in the caller shape', () => {
        const during = run.results.filter((result) => result.startedAt >= run.pausedAt && result.endedAt <= run.resumedAt);
        assert.ok(during.length >= (STALL_MS / REQUEST_INTERVAL_MS) * 0.9, `only ${during.length} requests fell inside the stall`);
        for (const result of during) assertShapedUnavailable(result);
        assert.ok(during.some((result) => result.shape === 'anthropic'));
        assert.ok(during.some((result) => result.shape === 'openai'));
      });

      it('admits requests before and after the stall', (t) => {
        const firstAdmitted = run.results.find((result) => result.startedAt >= run.resumedAt && result.status === 200);
        t.diagnostic(`first request admitted ${firstAdmitted === undefined ? 'never' : `${Math.round(firstAdmitted.startedAt - run.resumedAt)} ms`} after SIGCONT`);
        const before = run.results.filter((result) => result.endedAt < run.pausedAt);
        const recovered = run.results.filter((result) => result.startedAt >= run.resumedAt + RECOVERY_MS);
        assert.ok(before.length > 0, 'no request ended before SIGSTOP');
        assert.ok(recovered.length > 0, `no request started ${RECOVERY_MS} ms after SIGCONT`);
        assert.equal(before.filter((result) => result.status === 200).length, before.length, `before SIGSTOP: ${tally(before)}`);
        assert.equal(recovered.filter((result) => result.status === 200).length, recovered.length, `${RECOVERY_MS} ms after SIGCONT: ${tally(recovered)}`);
      });
    }

    it(`answers readyz with ${mode === 'closed' ? 503 : 200} during the stall`, () => {
      for (const answer of run.readyDuringStall) {
        assert.equal(answer.status, mode === 'closed' ? 503 : 200, answer.text);
        assert.match(String(answer.body?.checks?.redis), /^error/, answer.text);
      }
    });

    it('reports Redis in the health checks', async () => {
      for (const answer of run.healthDuringStall) {
        assert.equal(answer.status, 200, answer.text);
        assert.match(String(answer.body?.checks?.redis), /^error/, answer.text);
      }
      const recovered = await waitForRedisHealthy(urls);
      for (const answer of recovered) assert.equal(answer.body?.checks?.redis, 'ok', answer.text);
    });

    it('answers /v1/limits with 503 during the stall', () => {
      for (const answer of run.limitsDuringStall) {
        assert.equal(answer.status, 503, answer.text);
        assert.equal(answer.code, 'store_unavailable', answer.text);
      }
    });

    it('enforces limits again after SIGCONT', async () => {
      await waitForRedisHealthy(urls);
      const actor = await createActor(urls[0], { chat_completions: { limit: SMALL_LIMIT, interval: '1h', allowedModels: ['*'] } });
      const results: ApiResult[] = [];
      for (let i = 0; i < SMALL_LIMIT + 4; i++) results.push(await openaiChat(urls[i % urls.length], actor.token));

      const admitted = results.slice(0, SMALL_LIMIT);
      const over = results.slice(SMALL_LIMIT);
      assert.equal(admitted.filter((result) => result.status === 200).length, SMALL_LIMIT, tally(admitted));
      assert.equal(over.filter((result) => result.status === 429 && result.code === 'rate_limited').length, over.length, tally(over));
    });
  });
}

stallTests('open');
stallTests('closed');
