/**
 * Revoking a token or disabling an actor through one replica must reach the token cache of
 * another replica quickly: through the Redis change bus when Redis is configured, and through the
 * store's change-version poll (once a second) without it.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { UpstreamServer } from '../helpers/upstream-server.ts';
import { dropSchema, SHARED_POSTGRES_URL, uniqueSchemaName } from '../postgres/shared-postgres.ts';
import { deleteKeys, SHARED_REDIS_URL, uniquePrefix } from '../redis/support.ts';
import { admin, createActor, openaiChat, type ApiResult } from './client.ts';
import { clusterSkipReason, upstreamEnv, useReplicaSet } from './replicas.ts';

const LIMITS = { chat_completions: { limit: 10_000, interval: '1h', allowedModels: ['*'] } };
const POLL_INTERVAL_MS = 50;
/** With the change bus, a change must reach the other replica within this time. */
const BUS_DEADLINE_MS = 1000;
/** Without Redis, the store poll runs every second; this adds one second for the poll's own query and the request. */
const POLL_DEADLINE_MS = 2000;

const skip = await clusterSkipReason('shared-redis', 'shared-postgres');

interface Rejection {
  result: ApiResult;
  /** Time from the start of polling to the first rejected request. */
  afterMs: number;
  /** Requests that still succeeded before the first rejection. */
  succeeded: number;
}

/**
 * Sends a request every 50 ms until one fails, for at most `deadlineMs` plus one request. Returns
 * the first failed request, or undefined when every request succeeded.
 */
async function pollUntilRejected(url: string, token: string, deadlineMs: number): Promise<Rejection | undefined> {
  const startedAt = performance.now();
  let succeeded = 0;
  while (performance.now() - startedAt <= deadlineMs) {
    const result = await openaiChat(url, token);
    if (result.status !== 200) return { result, afterMs: result.endedAt - startedAt, succeeded };
    succeeded++;
    await sleep(POLL_INTERVAL_MS);
  }
  return undefined;
}

function describeRejection(rejection: Rejection | undefined, deadlineMs: number): string {
  if (rejection === undefined) return `every request succeeded for ${deadlineMs} ms`;
  return `first rejection after ${Math.round(rejection.afterMs)} ms and ${rejection.succeeded} successful requests: ${rejection.result.status} ${rejection.result.text}`;
}

/** Checks that a change made through replica A reaches replica B within `deadlineMs`. */
function changeTests(urls: () => string[], deadlineMs: number): void {
  it('rejects a revoked token on another replica', async (t) => {
    const [a, b] = urls();
    const actor = await createActor(a, LIMITS);
    const cached = await openaiChat(b, actor.token);
    assert.equal(cached.status, 200, cached.text);

    await admin(a, 'DELETE', `/-/admin/tokens/${actor.tokenId}`);
    const rejection = await pollUntilRejected(b, actor.token, deadlineMs);

    assert.ok(rejection !== undefined, describeRejection(rejection, deadlineMs));
    t.diagnostic(describeRejection(rejection, deadlineMs));
    assert.ok(rejection.afterMs <= deadlineMs, describeRejection(rejection, deadlineMs));
    assert.equal(rejection.result.status, 401, rejection.result.text);
    assert.equal(rejection.result.code, 'token_revoked');
    const onA = await openaiChat(a, actor.token);
    assert.equal(onA.code, 'token_revoked', 'the replica that revoked the token');
  });

  it('rejects a disabled actor on another replica', async (t) => {
    const [a, b] = urls();
    const actor = await createActor(a, LIMITS);
    const cached = await openaiChat(b, actor.token);
    assert.equal(cached.status, 200, cached.text);

    await admin(a, 'PATCH', `/-/admin/actors/${actor.id}`, { enabled: false });
    const rejection = await pollUntilRejected(b, actor.token, deadlineMs);

    assert.ok(rejection !== undefined, describeRejection(rejection, deadlineMs));
    t.diagnostic(describeRejection(rejection, deadlineMs));
    assert.ok(rejection.afterMs <= deadlineMs, describeRejection(rejection, deadlineMs));
    assert.equal(rejection.result.status, 403, rejection.result.text);
    assert.equal(rejection.result.code, 'actor_disabled');
    const onA = await openaiChat(a, actor.token);
    assert.equal(onA.code, 'actor_disabled', 'the replica that disabled the actor');
  });
}

describe('revocation across replicas with Redis', { skip }, () => {
  const replicas = useReplicaSet();
  const schema = uniqueSchemaName('cluster_revoke_bus');
  const keyPrefix = uniquePrefix('cluster-revoke');
  let upstream: UpstreamServer | undefined;

  before(async () => {
    upstream = await UpstreamServer.start();
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

  changeTests(() => replicas.urls, BUS_DEADLINE_MS);
});

describe('revocation across replicas without Redis', { skip }, () => {
  const replicas = useReplicaSet();
  const schema = uniqueSchemaName('cluster_revoke_poll');
  let upstream: UpstreamServer | undefined;

  before(async () => {
    upstream = await UpstreamServer.start();
    await replicas.start(2, { ...upstreamEnv(upstream), LLM_PROXY_DATABASE_URL: SHARED_POSTGRES_URL, LLM_PROXY_DATABASE_SCHEMA: schema });
  });

  after(async () => {
    await upstream?.close();
    await dropSchema(schema);
  });

  changeTests(() => replicas.urls, POLL_DEADLINE_MS);
});
