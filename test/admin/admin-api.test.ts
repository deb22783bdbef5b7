/**
 * The admin API (`/-/admin/...`), the caller's `/v1/limits`, the health routes and anonymous
 * access, over raw HTTP against a gateway and a scripted upstream on 127.0.0.1.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { ADMIN_TOKEN, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { UpstreamServer } from '../helpers/upstream-server.ts';

const REQUEST_ID = /^req_[0-9a-f]{32}$/;
const RFC_3339_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
const CHAT_LIMITS = { chat_completions: { limit: 1000, interval: '1h', allowedModels: ['*'] } };

interface Reply {
  status: number;
  headers: Headers;
  json: any;
}

interface CallOptions {
  /** Sent as `Authorization: Bearer`. Without it the request carries no credential. */
  token?: string;
  body?: unknown;
}

async function call(gw: TestGateway, method: string, path: string, options: CallOptions = {}): Promise<Reply> {
  const headers: Record<string, string> = {};
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(gw.url + path, {
    method,
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await response.text();
  return { status: response.status, headers: response.headers, json: text === '' ? undefined : JSON.parse(text) };
}

function admin(gw: TestGateway, method: string, path: string, body?: unknown): Promise<Reply> {
  return call(gw, method, `/-/admin${path}`, { token: ADMIN_TOKEN, body });
}

function chat(gw: TestGateway, token: string | undefined, model = 'gpt-test'): Promise<Reply> {
  return call(gw, 'POST', '/v1/chat/completions', { token, body: { model, messages: [{ role: 'user', content: 'Say hello' }] } });
}

/** Checks the status and the gateway's error code, showing the whole body when either differs. */
function assertError(reply: Reply, status: number, code: string): void {
  assert.equal(reply.status, status, JSON.stringify(reply.json));
  assert.equal(reply.json?.error?.code, code, JSON.stringify(reply.json));
}

describe('admin API disabled', { timeout: 30_000 }, () => {
  let gw: TestGateway;

  before(async () => {
    gw = await startTestGateway(undefined, { LLM_PROXY_ADMIN_TOKEN: '' });
  });

  after(async () => {
    await gw?.close();
  });

  test('admin routes not found', async () => {
    const reply = await admin(gw, 'GET', '/actors');

    assertError(reply, 404, 'not_found');
  });
});

describe('admin API', { timeout: 60_000 }, () => {
  let upstream: UpstreamServer;
  let gw: TestGateway;

  before(async () => {
    upstream = await UpstreamServer.start();
    gw = await startTestGateway(upstream);
  });

  after(async () => {
    await gw?.close();
    await upstream?.close();
  });

  test('wrong admin token', async () => {
    const reply = await call(gw, 'GET', '/-/admin/actors', { token: `${ADMIN_TOKEN}-wrong` });

    assertError(reply, 401, 'invalid_token');
    assert.match(reply.json.error.message, /LLM_PROXY_ADMIN_TOKEN/);
    assert.match(reply.headers.get('x-request-id') ?? '', REQUEST_ID);
  });

  test('missing admin token', async () => {
    const reply = await call(gw, 'GET', '/-/admin/actors');

    assertError(reply, 401, 'missing_token');
  });

  test('actor token rejected', async () => {
    const actor = await gw.createActor();

    const reply = await call(gw, 'GET', '/-/admin/actors', { token: actor.token });

    assertError(reply, 401, 'invalid_token');
  });

  test('create actor without name', async () => {
    const reply = await admin(gw, 'POST', '/actors', { limits: CHAT_LIMITS });

    assertError(reply, 400, 'invalid_request');
    assert.equal(reply.json.error.param, 'name');
    assert.match(reply.json.error.message, /^name: /);
  });

  test('create actor unknown feature', async () => {
    const reply = await admin(gw, 'POST', '/actors', { name: 'bad-feature', limits: { teleport: { limit: 1, interval: '1h' } } });

    assertError(reply, 400, 'invalid_request');
    assert.equal(reply.json.error.param, 'limits');
    assert.match(reply.json.error.message, /unknown feature "teleport"/);
  });

  test('create actor bad interval', async () => {
    const reply = await admin(gw, 'POST', '/actors', { name: 'bad-interval', limits: { chat_completions: { limit: 1, interval: 'soon' } } });

    assertError(reply, 400, 'invalid_request');
    assert.equal(reply.json.error.param, 'limits');
    assert.match(reply.json.error.message, /limits\.chat_completions\.interval: got "soon"/);
  });

  test('create actor invalid JSON', async () => {
    const response = await fetch(`${gw.url}/-/admin/actors`, { method: 'POST', headers: gw.adminHeaders, body: '{"name": ', signal: AbortSignal.timeout(10_000) });
    const json = (await response.json()) as { error: { code: string } };

    assert.equal(response.status, 400);
    assert.equal(json.error.code, 'invalid_json');
  });

  test('token for unknown actor', async () => {
    const reply = await admin(gw, 'POST', '/actors/act_0000000000000000/tokens', {});

    assertError(reply, 404, 'not_found');
    assert.match(reply.json.error.message, /act_0000000000000000/);
  });

  test('actor lifecycle', async () => {
    const created = await admin(gw, 'POST', '/actors', { name: 'lifecycle', limits: CHAT_LIMITS });
    assert.equal(created.status, 201);
    const id = created.json.id as string;
    assert.equal(created.json.name, 'lifecycle');
    assert.equal(created.json.enabled, true);
    assert.deepEqual(created.json.limits, { chat_completions: { limit: 1000, interval: '1h0m0s', intervalSeconds: 3600, allowedModels: ['*'] } });

    const fetched = await admin(gw, 'GET', `/actors/${id}`);
    assert.equal(fetched.status, 200);
    assert.deepEqual(fetched.json, created.json);

    const listed = await admin(gw, 'GET', '/actors');
    assert.equal(listed.status, 200);
    assert.ok(listed.json.actors.some((actor: { id: string }) => actor.id === id));

    const patched = await admin(gw, 'PATCH', `/actors/${id}`, { name: 'renamed' });
    assert.equal(patched.status, 200);
    assert.equal(patched.json.name, 'renamed');
    assert.deepEqual(patched.json.limits, created.json.limits);

    const deleted = await admin(gw, 'DELETE', `/actors/${id}`);
    assert.equal(deleted.status, 204);

    const missing = await admin(gw, 'GET', `/actors/${id}`);
    assertError(missing, 404, 'not_found');
  });

  test('token shown once', async () => {
    const actor = await gw.createActor();

    const created = await admin(gw, 'POST', `/actors/${actor.id}/tokens`, {});
    assert.equal(created.status, 201);
    assert.match(created.json.token, /^llmp_[A-Za-z0-9_-]{43}$/);
    assert.equal(created.json.hint, created.json.token.slice(0, 12));
    assert.equal(created.json.expiresAt, null);

    const listed = await admin(gw, 'GET', `/actors/${actor.id}/tokens`);
    assert.equal(listed.status, 200);
    const entry = listed.json.tokens.find((token: { id: string }) => token.id === created.json.id);
    assert.equal(entry.hint, created.json.hint);
    assert.equal(Object.hasOwn(entry, 'token'), false);
    assert.equal(JSON.stringify(listed.json).includes(created.json.token), false);
  });

  test('token expiry in the past', async () => {
    const actor = await gw.createActor();

    const reply = await admin(gw, 'POST', `/actors/${actor.id}/tokens`, { expiresAt: '2020-01-01T00:00:00Z' });

    assertError(reply, 400, 'invalid_request');
    assert.equal(reply.json.error.param, 'expiresAt');
    assert.match(reply.json.error.message, /in the past/);
  });

  test('token expires after expiresIn', async () => {
    const actor = await gw.createActor();
    const created = await admin(gw, 'POST', `/actors/${actor.id}/tokens`, { expiresIn: '1s' });
    assert.equal(created.status, 201);
    const untilExpiryMs = Date.parse(created.json.expiresAt) - Date.now();
    assert.ok(untilExpiryMs > 0, `expiresAt ${created.json.expiresAt}`);
    assert.ok(untilExpiryMs <= 1000, `expiresAt ${created.json.expiresAt}`);

    const before = await call(gw, 'GET', '/v1/limits', { token: created.json.token });
    assert.equal(before.status, 200);

    await sleep(1200);
    const expired = await call(gw, 'GET', '/v1/limits', { token: created.json.token });
    assertError(expired, 401, 'token_expired');
  });

  test('revoked token rejected at once', async () => {
    const actor = await gw.createActor();
    const created = await admin(gw, 'POST', `/actors/${actor.id}/tokens`, {});
    // The first request puts the token into the gateway's cache.
    assert.equal((await chat(gw, created.json.token)).status, 200);

    const revoked = await admin(gw, 'DELETE', `/tokens/${created.json.id}`);
    assert.equal(revoked.status, 200);
    assert.match(revoked.json.revokedAt, RFC_3339_UTC);

    assertError(await chat(gw, created.json.token), 401, 'token_revoked');
    assert.equal((await chat(gw, actor.token)).status, 200);
  });

  test('limit change applies at once', async () => {
    const actor = await gw.createActor({ chat_completions: { limit: 1, interval: '1h', allowedModels: ['*'] } });
    assert.equal((await chat(gw, actor.token)).status, 200);
    assertError(await chat(gw, actor.token), 429, 'rate_limited');

    const raised = await admin(gw, 'PATCH', `/actors/${actor.id}`, { limits: { chat_completions: { limit: 3, interval: '1h', allowedModels: ['*'] } } });
    assert.equal(raised.status, 200);
    assert.equal((await chat(gw, actor.token)).status, 200);

    const narrowed = await admin(gw, 'PATCH', `/actors/${actor.id}`, { limits: { chat_completions: { limit: 3, interval: '1h', allowedModels: ['gpt-other'] } } });
    assert.equal(narrowed.status, 200);
    assertError(await chat(gw, actor.token), 400, 'model_not_allowed');
  });

  test('disabled actor rejected at once', async () => {
    const actor = await gw.createActor();
    assert.equal((await chat(gw, actor.token)).status, 200);

    const disabled = await admin(gw, 'PATCH', `/actors/${actor.id}`, { enabled: false });
    assert.equal(disabled.status, 200);
    assert.equal(disabled.json.enabled, false);

    assertError(await chat(gw, actor.token), 403, 'actor_disabled');
  });

  test('deleted actor token rejected', async () => {
    const actor = await gw.createActor();
    assert.equal((await chat(gw, actor.token)).status, 200);

    assert.equal((await admin(gw, 'DELETE', `/actors/${actor.id}`)).status, 204);

    assertError(await chat(gw, actor.token), 401, 'invalid_token');
  });

  test('usage listing', async () => {
    const actor = await gw.createActor();
    for (const model of ['gpt-1', 'gpt-2', 'gpt-3']) assert.equal((await chat(gw, actor.token, model)).status, 200);
    await gw.waitForEvents(actor.id, 3);

    const page = await admin(gw, 'GET', `/usage?actor=${actor.id}&since=1h&limit=2`);
    assert.equal(page.status, 200);
    assert.deepEqual(
      page.json.events.map((event: { requested_model: string }) => event.requested_model),
      ['gpt-3', 'gpt-2'],
    );
    assert.deepEqual(
      page.json.events.map((event: { actor_id: string }) => event.actor_id),
      [actor.id, actor.id],
    );

    const all = await admin(gw, 'GET', `/usage?actor=${actor.id}`);
    assert.equal(all.json.events.length, 3);

    const future = await admin(gw, 'GET', `/usage?actor=${actor.id}&since=2999-01-01T00:00:00Z`);
    assert.deepEqual(future.json.events, []);
  });

  test('usage listing bad query', async () => {
    for (const query of ['limit=0', 'limit=abc', 'limit=1001', 'limit=-1']) {
      const reply = await admin(gw, 'GET', `/usage?${query}`);
      assertError(reply, 400, 'invalid_request');
      assert.equal(reply.json.error.param, 'limit', query);
    }
    const since = await admin(gw, 'GET', '/usage?since=yesterday');
    assertError(since, 400, 'invalid_request');
    assert.equal(since.json.error.param, 'since');
  });

  test('limits before and after use', async () => {
    const actor = await gw.createActor({ chat_completions: { limit: 5, interval: '1h', allowedModels: ['gpt-test'] } });

    const unused = await call(gw, 'GET', '/v1/limits', { token: actor.token });
    assert.equal(unused.status, 200);
    assert.deepEqual(unused.json, { chat_completions: { limit: 5, interval: '1h0m0s', usage: 0, allowedModels: ['gpt-test'] } });

    assert.equal((await chat(gw, actor.token)).status, 200);
    await gw.waitForEvents(actor.id, 1);
    const used = await call(gw, 'GET', '/v1/limits', { token: actor.token });
    assert.deepEqual(Object.keys(used.json), ['chat_completions']);
    const entry = used.json.chat_completions;
    assert.equal(entry.usage, 1);
    assert.match(entry.expiry, RFC_3339_UTC);
    const untilExpiryMs = Date.parse(entry.expiry) - Date.now();
    assert.ok(untilExpiryMs > 0, `expiry ${entry.expiry}`);
    assert.ok(untilExpiryMs <= 3_600_000, `expiry ${entry.expiry}`);
  });

  test('health check', async () => {
    const reply = await call(gw, 'GET', '/-/healthz');

    assert.equal(reply.status, 200);
    assert.match(reply.headers.get('content-type') ?? '', /^application\/json/);
    assert.equal(reply.json.status, 'ok');
  });

  test('version route', async () => {
    const reply = await call(gw, 'GET', '/-/__version');

    assert.equal(reply.status, 200);
    assert.equal(typeof reply.json.version, 'string');
    assert.equal(reply.json.node, process.version);
  });

  test('unknown route', async () => {
    const reply = await call(gw, 'GET', '/v2/nothing-here');

    assertError(reply, 404, 'not_found');
    assert.match(reply.headers.get('content-type') ?? '', /^application\/json/);
    assert.match(reply.json.request_id, REQUEST_ID);
  });

  test('wrong method', async () => {
    const proxied = await call(gw, 'GET', '/v1/chat/completions');
    assertError(proxied, 405, 'method_not_allowed');
    assert.equal(proxied.headers.get('allow'), 'POST');

    const adminRoute = await admin(gw, 'PUT', '/actors');
    assertError(adminRoute, 405, 'method_not_allowed');
    assert.equal(adminRoute.headers.get('allow'), 'GET, POST');
  });

  test('anonymous access off by default', async () => {
    const upstreamRequests = upstream.requests.length;

    const reply = await chat(gw, undefined);

    assertError(reply, 401, 'missing_token');
    assert.equal(upstream.requests.length, upstreamRequests);
  });
});

describe('anonymous access', { timeout: 30_000 }, () => {
  let upstream: UpstreamServer;
  let gw: TestGateway;

  before(async () => {
    upstream = await UpstreamServer.start();
    gw = await startTestGateway(upstream, { LLM_PROXY_ALLOW_ANONYMOUS: 'true' });
  });

  after(async () => {
    await gw?.close();
    await upstream?.close();
  });

  test('request without token', async () => {
    const reply = await chat(gw, undefined);

    assert.equal(reply.status, 200, JSON.stringify(reply.json));
    const [event] = await gw.waitForEvents('anonymous', 1);
    assert.equal(event.actorId, 'anonymous');
    assert.equal(event.outcome, 'completed');
  });

  test('bad token not anonymous', async () => {
    const reply = await chat(gw, `llmp_${'A'.repeat(43)}`);

    assertError(reply, 401, 'invalid_token');
  });

  test('anonymous limits', async () => {
    const reply = await call(gw, 'GET', '/v1/limits');

    assert.equal(reply.status, 200);
    assert.equal(reply.json.chat_completions.limit, 50);
    assert.equal(reply.json.chat_completions.interval, '24h0m0s');
  });
});
