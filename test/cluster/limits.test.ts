/**
 * Limits shared by four gateway processes through one Redis and one Postgres schema. A burst of
 * concurrent requests is spread round-robin over the replicas. Whichever replica each request
 * reaches, the burst must not get more than the actor's request quota, token budget or concurrency.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { generateResponse, openaiChatCompletion, UpstreamServer } from '../helpers/upstream-server.ts';
import { dropSchema, SHARED_POSTGRES_URL, uniqueSchemaName } from '../postgres/shared-postgres.ts';
import { deleteKeys, SHARED_REDIS_URL, uniquePrefix } from '../redis/support.ts';
import { createActor, openaiChat, PROMPT, tally, warmUp, type ApiResult } from './client.ts';
import { clusterSkipReason, upstreamEnv, useReplicaSet } from './replicas.ts';

const REPLICAS = 4;
const CLIENTS = 200;
const SETTLE_TIMEOUT_MS = 5000;
/**
 * The default command timeout of 50 ms includes the time the reply waits for the replica's event
 * loop. With four replicas and 200 clients on a two-CPU machine, the loops were busy for longer
 * than that, so commands to a healthy Redis timed out, the circuit opened and `open` mode admitted
 * requests unchecked. The longer timeout keeps these tests about shared counting, and
 * redis-fault.test.ts covers the default timeout.
 */
const REDIS_TIMEOUT = '1s';

const skip = await clusterSkipReason('shared-redis', 'shared-postgres');

/** Sends `count` requests at once, request i to replica i mod the number of replicas. */
function burst(urls: string[], count: number, call: (url: string) => Promise<ApiResult>): Promise<ApiResult[]> {
  return Promise.all(Array.from({ length: count }, (_, i) => call(urls[i % urls.length])));
}

function withStatus(results: ApiResult[], status: number, code?: string): ApiResult[] {
  return results.filter((result) => result.status === status && (code === undefined || result.code === code));
}

describe('limits across four replicas', { skip }, () => {
  const replicas = useReplicaSet();
  const schema = uniqueSchemaName('cluster_limits');
  const keyPrefix = uniquePrefix('cluster-limits');
  let upstream: UpstreamServer | undefined;
  let redis: Redis | undefined;
  let urls: string[];

  before(async () => {
    upstream = await UpstreamServer.start();
    redis = new Redis(SHARED_REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
    await redis.connect();
    await replicas.start(REPLICAS, {
      ...upstreamEnv(upstream),
      LLM_PROXY_REDIS_URL: SHARED_REDIS_URL,
      LLM_PROXY_REDIS_KEY_PREFIX: keyPrefix,
      LLM_PROXY_REDIS_TIMEOUT: REDIS_TIMEOUT,
      LLM_PROXY_DATABASE_URL: SHARED_POSTGRES_URL,
      LLM_PROXY_DATABASE_SCHEMA: schema,
    });
    urls = replicas.urls;
  });

  after(async () => {
    await upstream?.close();
    await dropSchema(schema);
    if (redis !== undefined) {
      await deleteKeys(redis, keyPrefix);
      redis.disconnect();
    }
  });

  it('admits exactly the request quota', async () => {
    const server = upstream as UpstreamServer;
    server.reset();
    server.setDefault(generateResponse);
    const actor = await createActor(urls[0], { chat_completions: { limit: 100, interval: '1h', allowedModels: ['*'] } });
    await warmUp(urls, actor.token);

    const results = await burst(urls, CLIENTS, (url) => openaiChat(url, actor.token));

    assert.equal(withStatus(results, 200).length, 100, tally(results));
    assert.equal(withStatus(results, 429, 'rate_limited').length, 100, tally(results));
    assert.equal(server.requests.length, 100, 'upstream requests');
  });

  it('keeps admitted tokens within the token budget', async () => {
    const server = upstream as UpstreamServer;
    server.reset();
    const usage = { prompt_tokens: 12, completion_tokens: 40, total_tokens: 52 };
    server.setDefault(() => ({ body: openaiChatCompletion('Hello.', { usage }) }));
    const tokenLimit = 5000;
    const maxTokens = 100;
    // The gateway reserves ceil(prompt characters / 3) + max_tokens when it admits a request.
    const reservation = Math.ceil(PROMPT.length / 3) + maxTokens;
    assert.ok(usage.total_tokens <= reservation, 'the fixed usage must not exceed the reservation for the bound below to hold');
    const actor = await createActor(urls[0], { chat_completions: { limit: 10_000, interval: '1h', allowedModels: ['*'], tokenLimit } });
    await warmUp(urls, actor.token);

    const results = await burst(urls, CLIENTS, (url) => openaiChat(url, actor.token, { max_tokens: maxTokens }));

    const admitted = withStatus(results, 200).length;
    assert.ok(admitted > 0, tally(results));
    assert.ok(admitted * usage.total_tokens <= tokenLimit + reservation, `${admitted} admitted × ${usage.total_tokens} tokens exceeds ${tokenLimit} + ${reservation}: ${tally(results)}`);
    assert.equal(withStatus(results, 429, 'rate_limited').length, CLIENTS - admitted, tally(results));
    assert.equal(server.requests.length, admitted, 'upstream requests');

    // Each admitted request settles its reservation to the reported usage after its response.
    const key = `${keyPrefix}{${actor.id}}:q:chat_completions:tokens`;
    const expected = admitted * usage.total_tokens;
    let charged = -1;
    for (const deadline = Date.now() + SETTLE_TIMEOUT_MS; Date.now() < deadline; await sleep(50)) {
      charged = Number(await (redis as Redis).get(key));
      if (charged === expected) break;
    }
    assert.equal(charged, expected, 'tokens charged in Redis after every request settled');
  });

  it('holds the concurrency limit across replicas', async () => {
    const server = upstream as UpstreamServer;
    server.reset();
    server.setDefault((req) => ({ ...generateResponse(req), delayBeforeHeadersMs: 300 }));
    const actor = await createActor(urls[0], { chat_completions: { limit: 1000, interval: '1h', allowedModels: ['*'], concurrency: 5 } });
    await warmUp(urls, actor.token);

    const results = await burst(urls, 40, (url) => openaiChat(url, actor.token));

    assert.ok(server.maxInFlight <= 5, `the upstream saw ${server.maxInFlight} requests in flight`);
    const succeeded = withStatus(results, 200).length;
    const limited = withStatus(results, 429, 'concurrency_limited').length;
    assert.ok(succeeded > 0, tally(results));
    assert.ok(limited > 0, tally(results));
    assert.equal(succeeded + limited, results.length, tally(results));
  });
});
