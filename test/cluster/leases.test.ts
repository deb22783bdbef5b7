/**
 * Concurrency leases of a replica that dies: replica A holds every slot of an actor with three
 * open streams and is killed with SIGKILL, so it never releases them. Replica B must count those
 * leases until their 30 s TTL runs out, and admit requests again after that without any restart.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { anthropicStream, generateResponse, splitSseEvents, UpstreamServer, type ScriptedResponse } from '../helpers/upstream-server.ts';
import { dropSchema, SHARED_POSTGRES_URL, uniqueSchemaName } from '../postgres/shared-postgres.ts';
import { deleteKeys, SHARED_REDIS_URL, uniquePrefix } from '../redis/support.ts';
import { anthropicMessages, createActor, tally, warmUp, type ApiResult } from './client.ts';
import { clusterSkipReason, upstreamEnv, useReplicaSet } from './replicas.ts';

const CONCURRENCY = 3;
/** LEASE_TTL_MS in src/limits/admission.ts: a lease that is not renewed for this long expires. */
const LEASE_TTL_MS = 30_000;
/** B must admit again within this time of the leases being taken. */
const RECOVERY_DEADLINE_MS = 40_000;
const POLL_INTERVAL_MS = 250;
const IMMEDIATE_MS = 500;
/** A held stream sends its first event, then nothing for this long. */
const HOLD_MS = 120_000;

const skip = await clusterSkipReason('shared-redis', 'shared-postgres');

/** Builds a stream that sends its first event and then stays open, and an immediate response for any other request. */
function holdStreams(req: Parameters<typeof generateResponse>[0]): ScriptedResponse {
  if (req.json?.stream !== true) return generateResponse(req);
  const [first, ...rest] = splitSseEvents(anthropicStream('Held open.'));
  return { headers: { 'content-type': 'text/event-stream' }, chunks: [first, { delayMs: HOLD_MS }, ...rest] };
}

describe('leases of a killed replica', { skip }, () => {
  const replicas = useReplicaSet();
  const schema = uniqueSchemaName('cluster_leases');
  const keyPrefix = uniquePrefix('cluster-leases');
  let upstream: UpstreamServer | undefined;

  before(async () => {
    upstream = await UpstreamServer.start();
    upstream.setDefault(holdStreams);
    await replicas.start(2, {
      ...upstreamEnv(upstream),
      LLM_PROXY_REDIS_URL: SHARED_REDIS_URL,
      LLM_PROXY_REDIS_KEY_PREFIX: keyPrefix,
      LLM_PROXY_DATABASE_URL: SHARED_POSTGRES_URL,
      LLM_PROXY_DATABASE_SCHEMA: schema,
    });
  });

  after(async () => {
    await upstream?.close();
    await dropSchema(schema);
    const redis = new Redis(SHARED_REDIS_URL, { maxRetriesPerRequest: 1 });
    try {
      await deleteKeys(redis, keyPrefix);
    } finally {
      redis.disconnect();
    }
  });

  it('frees the slots of a SIGKILLed replica after the lease TTL', async (t) => {
    const server = upstream as UpstreamServer;
    const [a, b] = replicas.replicas;
    const actor = await createActor(a.url, { chat_completions: { limit: 10_000, interval: '1h', allowedModels: ['*'], concurrency: CONCURRENCY } });
    await warmUp([a.url, b.url], actor.token);

    const leasesRequestedAt = performance.now();
    const streams = await Promise.all(
      Array.from({ length: CONCURRENCY }, () =>
        fetch(`${a.url}/v1/messages`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-api-key': actor.token, 'anthropic-version': '2023-06-01' },
          body: JSON.stringify({ model: 'claude-test', max_tokens: 64, stream: true, messages: [{ role: 'user', content: 'Hold this stream.' }] }),
          signal: AbortSignal.timeout(RECOVERY_DEADLINE_MS),
        }),
      ),
    );
    for (const stream of streams) assert.equal(stream.status, 200);
    assert.equal(server.inFlight(), CONCURRENCY, 'streams held open upstream');
    // The streams end with a network error once A is gone.
    const bodies = streams.map((stream) => stream.text().catch((error: unknown) => error));

    a.kill('SIGKILL');
    const exit = await a.exited;
    assert.equal(exit.signal, 'SIGKILL');
    await Promise.all(bodies);

    const fourth = await anthropicMessages(b.url, actor.token);
    assert.equal(fourth.status, 429, fourth.text);
    assert.equal(fourth.code, 'concurrency_limited');
    assert.ok(fourth.latencyMs < IMMEDIATE_MS, `the rejection took ${Math.round(fourth.latencyMs)} ms`);

    const rejected: ApiResult[] = [fourth];
    let admitted: ApiResult | undefined;
    while (performance.now() - leasesRequestedAt < RECOVERY_DEADLINE_MS) {
      await sleep(POLL_INTERVAL_MS);
      const result = await anthropicMessages(b.url, actor.token);
      if (result.status === 200) {
        admitted = result;
        break;
      }
      rejected.push(result);
    }

    assert.ok(admitted !== undefined, `B admitted nothing within ${RECOVERY_DEADLINE_MS} ms: ${tally(rejected)}`);
    const admittedAfterMs = admitted.startedAt - leasesRequestedAt;
    t.diagnostic(`B admitted again ${Math.round(admittedAfterMs)} ms after the leases were requested, after ${rejected.length} rejections`);
    assert.equal(rejected.filter((result) => result.code === 'concurrency_limited').length, rejected.length, tally(rejected));
    // The leases were taken after leasesRequestedAt, so they cannot have expired before their TTL.
    assert.ok(admittedAfterMs >= LEASE_TTL_MS - POLL_INTERVAL_MS, `B admitted after only ${Math.round(admittedAfterMs)} ms`);
    assert.equal(server.requests.length, CONCURRENCY + 1, 'upstream requests: the held streams and the admitted request');
  });
});
