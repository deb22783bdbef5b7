/**
 * Regression tests for the fixes of a new-user review, at the HTTP boundary: a real gateway in
 * front of a scripted upstream, both on 127.0.0.1. Each test fails on the code before the fix.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, beforeEach, test } from 'node:test';
import type { UsageEvent } from '../../src/usage/event.ts';
import { ADMIN_TOKEN, DEFAULT_LIMITS, OPENAI_KEY, startTestGateway, type TestActor, type TestGateway } from '../helpers/gateway.ts';
import { UpstreamServer, openaiChatCompletion, openaiChatStream, splitSseEvents } from '../helpers/upstream-server.ts';
import { bearer, createAgent, post, settle, type RawResponse } from './client.ts';

const SSE_HEADERS = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' };
const ANTHROPIC_REQUEST = { model: 'claude-test', max_tokens: 64, messages: [{ role: 'user', content: 'Hi' }] };
const OPENAI_REQUEST = { model: 'gpt-test', messages: [{ role: 'user', content: 'Hi' }] };
const OPENAI_STREAM_REQUEST = { ...OPENAI_REQUEST, stream: true, stream_options: { include_usage: true } };
/** A stream request without `include_usage`, whose stream the gateway rewrites. */
const OPENAI_BARE_STREAM_REQUEST = { ...OPENAI_REQUEST, stream: true };
const REQUEST_ID = /^req_[0-9a-f]{32}$/;
/** Upper bound for one raw-socket exchange. */
const RAW_TIMEOUT_MS = 5_000;

const agent = createAgent();
let upstream: UpstreamServer;
let gateway: TestGateway;

before(async () => {
  upstream = await UpstreamServer.start();
  gateway = await startTestGateway(upstream);
});

after(async () => {
  await agent.close();
  await gateway?.close();
  await upstream?.close();
});

beforeEach(() => {
  upstream.reset();
});

function send(path: string, body: string | Buffer | object, actor: TestActor, target: TestGateway = gateway): Promise<RawResponse> {
  return post(agent, target.url + path, body, { headers: bearer(actor.token) });
}

function json(response: RawResponse): any {
  return JSON.parse(response.body.toString('utf8'));
}

/** Waits for the actor's usage events and checks that exactly `count` exist. Newest first. */
async function eventsOf(actor: TestActor, count: number, target: TestGateway = gateway): Promise<UsageEvent[]> {
  await target.waitForEvents(actor.id, count);
  await settle(30);
  const events = await target.usageEvents(actor.id);
  assert.equal(events.length, count, `usage events of ${actor.id}`);
  return events;
}

interface AdminReply {
  status: number;
  json: any;
}

/** Calls the admin API. With `token` null no Authorization header is sent, and with `body` undefined no body. */
async function admin(method: string, path: string, body?: unknown, token: string | null = ADMIN_TOKEN): Promise<AdminReply> {
  const headers: Record<string, string> = {};
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(`${gateway.url}/-/admin${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await response.text();
  return { status: response.status, json: text === '' ? undefined : JSON.parse(text) };
}

async function limitsOf(token: string): Promise<any> {
  const response = await fetch(`${gateway.url}/v1/limits`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(10_000) });
  assert.equal(response.status, 200, '/v1/limits status');
  return response.json();
}

interface RawReply {
  statusLine: string;
  status: number;
  reason: string;
  /** Headers by lower-case name. A repeated header keeps its last value. */
  headers: Record<string, string>;
  body: Buffer;
}

/**
 * Writes `request` to the gateway over a plain TCP socket and reads until the gateway closes it.
 * Used where an HTTP client would refuse to send the request or would hide the status line.
 */
function rawExchange(target: TestGateway, request: Buffer): Promise<RawReply> {
  const { hostname, port } = new URL(target.url);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: hostname, port: Number(port) });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no complete response within ${RAW_TIMEOUT_MS} ms, received ${JSON.stringify(Buffer.concat(chunks).toString('latin1'))}`));
    }, RAW_TIMEOUT_MS);
    // Written without a FIN, because the gateway aborts a request whose client half-closed the connection.
    socket.on('connect', () => socket.write(request));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    // The gateway may reset the connection after its response, while request bytes were unread.
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      const bytes = Buffer.concat(chunks);
      const split = bytes.indexOf('\r\n\r\n');
      if (split === -1) {
        reject(new Error(`no response head in ${JSON.stringify(bytes.toString('latin1'))}`));
        return;
      }
      const [statusLine, ...headerLines] = bytes.subarray(0, split).toString('latin1').split('\r\n');
      const match = /^HTTP\/1\.1 (\d{3}) ?(.*)$/.exec(statusLine);
      if (match === null) {
        reject(new Error(`invalid status line ${JSON.stringify(statusLine)}`));
        return;
      }
      const headers: Record<string, string> = {};
      for (const line of headerLines) {
        const colon = line.indexOf(':');
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      resolve({ statusLine, status: Number(match[1]), reason: match[2], headers, body: bytes.subarray(split + 4) });
    });
  });
}

/** Builds a request with `Connection: close`. Header values that are Buffers are sent as those bytes. */
function rawRequest(method: string, path: string, headers: [string, string | Buffer][], body = ''): Buffer {
  const parts: Buffer[] = [Buffer.from(`${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n`, 'latin1')];
  for (const [name, value] of headers) {
    parts.push(Buffer.from(`${name}: `, 'latin1'), Buffer.isBuffer(value) ? value : Buffer.from(value, 'latin1'), Buffer.from('\r\n', 'latin1'));
  }
  parts.push(Buffer.from('\r\n', 'latin1'), Buffer.from(body, 'utf8'));
  return Buffer.concat(parts);
}

test('embeddings budget under concurrency', async () => {
  const actor = await gateway.createActor({ embeddings: { limit: 50, interval: '1h', allowedModels: ['*'] } });
  const reportedTokens = 7;
  // 30 characters, which the gateway estimates at ceil(30 / 3) = 10 tokens.
  const input = 'The quick brown fox jumps over';
  const reservation = Math.ceil(input.length / 3);
  const embeddings = {
    delayBeforeHeadersMs: 100,
    body: {
      object: 'list',
      data: [{ object: 'embedding', index: 0, embedding: [0.25, -0.5] }],
      model: 'text-embedding-test',
      usage: { prompt_tokens: reportedTokens, total_tokens: reportedTokens },
    },
  };
  upstream.enqueue(...Array.from({ length: 40 }, () => embeddings));

  const responses = await Promise.all(Array.from({ length: 40 }, () => send('/v1/embeddings', { model: 'text-embedding-test', input }, actor)));
  await eventsOf(actor, 40);
  const admitted = responses.filter((response) => response.status === 200).length;
  const limits = await limitsOf(actor.token);

  assert.equal(input.length, 30);
  assert.ok(admitted >= 1, 'no request was admitted');
  assert.ok(admitted <= 15, `${admitted} of 40 concurrent requests were admitted to a 50-token budget`);
  assert.equal(responses.filter((response) => response.status === 429).length, 40 - admitted, '429 responses');
  assert.equal(upstream.requests.length, admitted, 'requests that reached the upstream');
  assert.ok(limits.embeddings.usage <= 50 + reportedTokens + reservation, `final usage ${limits.embeddings.usage}`);
  assert.equal(limits.embeddings.usage, admitted * reportedTokens, 'final usage after settlement');
});

test('limit fields round-trip', async () => {
  const sent = { chat_completions: { limit: 10, interval: '1h', concurrency: 2, tokenLimit: 1000 } };
  const created = await admin('POST', '/actors', { name: 'round-trip', limits: sent });
  assert.equal(created.status, 201, JSON.stringify(created.json));
  const id = created.json.id as string;

  const read = await admin('GET', `/actors/${id}`);
  const patched = await admin('PATCH', `/actors/${id}`, { limits: read.json.limits });
  const reread = await admin('GET', `/actors/${id}`);
  const token = await admin('POST', `/actors/${id}/tokens`, {});
  const limits = await limitsOf(token.json.token);

  assert.equal(read.json.limits.chat_completions.concurrency, 2, 'GET concurrency');
  assert.equal(read.json.limits.chat_completions.tokenLimit, 1000, 'GET tokenLimit');
  assert.equal(patched.status, 200, JSON.stringify(patched.json));
  assert.equal(reread.json.limits.chat_completions.concurrency, 2, 'GET after PATCH concurrency');
  assert.equal(reread.json.limits.chat_completions.tokenLimit, 1000, 'GET after PATCH tokenLimit');
  assert.equal(reread.json.limits.chat_completions.limit, 10, 'GET after PATCH limit');
  assert.equal(limits.chat_completions.concurrency, 2, '/v1/limits concurrency');
  assert.equal(limits.chat_completions.tokenLimit, 1000, '/v1/limits tokenLimit');
});

test('invalid model names rejected', async () => {
  const actor = await gateway.createActor();
  const models = [
    { label: '300 characters', model: 'm'.repeat(300) },
    { label: 'escape character', model: 'gpt-\u001b[31mtest' },
  ];
  for (const { label, model } of models) {
    const response = await send('/v1/chat/completions', { ...OPENAI_REQUEST, model }, actor);

    assert.equal(response.status, 400, `${label}: status`);
    assert.equal(json(response).error.code, 'invalid_request', `${label}: error.code`);
    assert.equal(json(response).error.param, 'model', `${label}: error.param`);
  }
  assert.equal(upstream.requests.length, 0, 'requests that reached the upstream');

  const longest = await send('/v1/chat/completions', { ...OPENAI_REQUEST, model: 'm'.repeat(256) }, actor);
  assert.equal(longest.status, 200, '256-character model');
});

test('provider prefix stripped', async () => {
  const actor = await gateway.createActor();
  const prefixed = await send('/v1/messages', { ...ANTHROPIC_REQUEST, model: 'anthropic/claude-x' }, actor);
  const forwarded = upstream.requests[0];

  assert.equal(prefixed.status, 200);
  assert.equal(forwarded.json.model, 'claude-x', 'model the upstream received');
  assert.ok(forwarded.body.toString('utf8').includes('"model":"claude-x"'), `upstream body ${forwarded.body.toString('utf8')}`);

  // Spacing, key order and an escape that a re-serialization would change.
  const unprefixed = Buffer.from('{ "max_tokens": 64,\n  "model" : "claude-x", "messages": [{"role":"user","content":"caf\\u00e9"}] }', 'utf8');
  const plain = await send('/v1/messages', unprefixed, actor);
  const verbatim = upstream.requests[1];

  assert.equal(plain.status, 200);
  assert.ok(verbatim.body.equals(unprefixed), `upstream body ${verbatim.body.toString('utf8')}`);
});

test('provider key masked in stream', async () => {
  const errorEvent = `data: ${JSON.stringify({ error: { message: `quota exceeded for key ${OPENAI_KEY}`, type: 'server_error', param: null, code: null } })}\n\n`;
  const requests = [
    { label: 'stream with include_usage', request: OPENAI_STREAM_REQUEST },
    { label: 'rewritten stream', request: OPENAI_BARE_STREAM_REQUEST },
  ];
  for (const { label, request } of requests) {
    const actor = await gateway.createActor();
    const first = splitSseEvents(openaiChatStream('one two', { includeUsage: true }))[0];
    upstream.enqueue({ headers: SSE_HEADERS, chunks: [first, errorEvent] });
    const response = await send('/v1/chat/completions', request, actor);
    await eventsOf(actor, 1);

    assert.equal(response.status, 200, `${label}: status`);
    assert.ok(response.body.toString('utf8').includes('quota exceeded for key'), `${label}: the error event was not forwarded`);
    assert.ok(!response.body.toString('utf8').includes(OPENAI_KEY), `${label}: client body ${response.body.toString('utf8')}`);
  }
  assert.ok(!gateway.logText().includes(OPENAI_KEY), 'the provider key reached the logs');
});

test('provider key split across chunks masked', async () => {
  const actor = await gateway.createActor();
  const first = splitSseEvents(openaiChatStream('one two', { includeUsage: true }))[0];
  const errorEvent = `data: ${JSON.stringify({ error: { message: `quota exceeded for key ${OPENAI_KEY}`, type: 'server_error', param: null, code: null } })}\n\n`;
  const cut = errorEvent.indexOf(OPENAI_KEY) + 7;
  upstream.enqueue({ headers: SSE_HEADERS, chunks: [first, errorEvent.slice(0, cut), { delayMs: 20 }, errorEvent.slice(cut)] });
  const response = await send('/v1/chat/completions', OPENAI_STREAM_REQUEST, actor);
  await eventsOf(actor, 1);
  const text = response.body.toString('utf8');

  assert.equal(response.status, 200);
  assert.ok(text.includes('quota exceeded for key'), `the error event was not forwarded: ${text}`);
  assert.ok(!text.includes(OPENAI_KEY), `client body ${text}`);
});

test('header carrying key dropped', async () => {
  const actor = await gateway.createActor();
  upstream.enqueue({ headers: { 'x-echo': OPENAI_KEY, 'x-other': 'kept' }, body: openaiChatCompletion('Hello') });
  const response = await send('/v1/chat/completions', OPENAI_REQUEST, actor);

  assert.equal(response.status, 200);
  assert.equal(response.headers['x-echo'], undefined);
  assert.equal(response.headers['x-other'], 'kept');
  assert.ok(!JSON.stringify(response.headers).includes(OPENAI_KEY), 'the provider key is in a client header');
});

test('upstream request id carrying key dropped', async () => {
  const actor = await gateway.createActor();
  upstream.enqueue({ headers: { 'x-request-id': `req-${OPENAI_KEY}` }, body: openaiChatCompletion('Hello') });
  const response = await send('/v1/chat/completions', OPENAI_REQUEST, actor);

  assert.equal(response.status, 200);
  assert.equal(response.headers['upstream-request-id'], undefined);
  assert.ok(!JSON.stringify(response.headers).includes(OPENAI_KEY), 'the provider key is in a client header');
});

test('provider key masked in JSON body', async () => {
  const actor = await gateway.createActor();
  upstream.enqueue({ body: openaiChatCompletion(`Your key is ${OPENAI_KEY}`) });
  const response = await send('/v1/chat/completions', OPENAI_REQUEST, actor);

  assert.equal(response.status, 200);
  assert.ok(!response.body.toString('utf8').includes(OPENAI_KEY), `client body ${response.body.toString('utf8')}`);
});

test('masked key prefix removed', async () => {
  // Keys that start with "sk-" were masked before the fix by a pattern for OpenAI and Anthropic
  // keys. A key of another form, as an OpenAI-compatible provider may issue, was not.
  const otherKey = 'azkey0123456789abcdefTESTKEY';
  const other = await startTestGateway(upstream, { LLM_PROXY_OPENAI_API_KEY: otherKey });
  try {
    for (const [label, target, key] of [
      ['sk- key', gateway, OPENAI_KEY],
      ['key without sk-', other, otherKey],
    ] as const) {
      const actor = await target.createActor();
      const masked = `${key.slice(0, 12)}****${key.slice(-4)}`;
      upstream.enqueue({
        status: 401,
        body: { error: { message: `Incorrect API key provided: ${masked}. You can find your API key in your account.`, type: 'invalid_request_error', param: null, code: 'invalid_api_key' } },
      });
      const response = await send('/v1/chat/completions', OPENAI_REQUEST, actor, target);
      const text = response.body.toString('utf8');

      assert.equal(response.status, 401, `${label}: status`);
      assert.ok(text.includes('Incorrect API key provided'), `${label}: client body ${text}`);
      assert.ok(!text.includes(key.slice(0, 12)), `${label}: client body ${text}`);
    }
  } finally {
    await other.close();
  }
});

test('admin unknown field rejected', async () => {
  const created = await admin('POST', '/actors', { name: 'typo', limts: DEFAULT_LIMITS });
  const actor = await gateway.createActor();
  const patched = await admin('PATCH', `/actors/${actor.id}`, { limts: DEFAULT_LIMITS });

  assert.equal(created.status, 400, JSON.stringify(created.json));
  assert.equal(created.json.error.code, 'invalid_request');
  assert.equal(created.json.error.param, 'limts');
  assert.match(created.json.error.message, /limts/);
  assert.equal(patched.status, 400, JSON.stringify(patched.json));
  assert.equal(patched.json.error.param, 'limts');
});

test('admin token expiry given twice', async () => {
  const actor = await gateway.createActor();
  const expiresAt = new Date(Date.now() + 86_400_000).toISOString();
  const reply = await admin('POST', `/actors/${actor.id}/tokens`, { expiresAt, expiresIn: '1h' });

  assert.equal(reply.status, 400, JSON.stringify(reply.json));
  assert.equal(reply.json.error.code, 'invalid_request');
});

test('admin token with empty body', async () => {
  const actor = await gateway.createActor();
  const reply = await admin('POST', `/actors/${actor.id}/tokens`);

  assert.equal(reply.status, 201, JSON.stringify(reply.json));
  assert.match(reply.json.token, /^llmp_/);
});

test('admin without Authorization header', async () => {
  const reply = await admin('GET', '/actors', undefined, null);

  assert.equal(reply.status, 401, JSON.stringify(reply.json));
  assert.equal(reply.json.error.code, 'missing_token');
});

test('stream with usage but no DONE', async () => {
  const actor = await gateway.createActor();
  const body = openaiChatStream('one two three', { includeUsage: true });
  const withoutDone = body.slice(0, body.lastIndexOf('data: [DONE]'));
  assert.ok(withoutDone.length < body.length, 'the scripted stream has no [DONE] to remove');
  upstream.enqueue({ headers: SSE_HEADERS, chunks: [withoutDone] });
  const response = await send('/v1/chat/completions', OPENAI_STREAM_REQUEST, actor);
  const [event] = await eventsOf(actor, 1);

  assert.equal(response.status, 200);
  assert.equal(response.body.toString('utf8'), withoutDone);
  assert.equal(event.outcome, 'completed');
});

test('oversized headers get JSON 431', async () => {
  const request = rawRequest('GET', '/v1/models', [['X-Padding', 'a'.repeat(20 * 1024)]]);
  const reply = await rawExchange(gateway, request);

  assert.equal(reply.status, 431, reply.statusLine);
  assert.match(reply.headers['content-type'] ?? '', /application\/json/);
  const body = JSON.parse(reply.body.toString('utf8'));
  assert.match(body.request_id, REQUEST_ID);
  assert.equal(reply.headers['request-id'], body.request_id);
});

test('conflicting Content-Length gets JSON 400', async () => {
  const request = rawRequest('POST', '/v1/chat/completions', [['Content-Length', '5'], ['Content-Length', '6']], 'hello!');
  const reply = await rawExchange(gateway, request);

  assert.equal(reply.status, 400, reply.statusLine);
  assert.match(reply.headers['content-type'] ?? '', /application\/json/);
  const body = JSON.parse(reply.body.toString('utf8'));
  assert.match(body.request_id, REQUEST_ID);
  assert.equal(reply.headers['request-id'], body.request_id);
});

test('UTF-8 header values stored', async () => {
  const actor = await gateway.createActor();
  const userAgent = 'Zoë-client/1.0 ✓';
  const actorUid = 'ユーザー-42';
  const body = JSON.stringify(OPENAI_REQUEST);
  const request = rawRequest('POST', '/v1/chat/completions', [
    ['Authorization', `Bearer ${actor.token}`],
    ['Content-Type', 'application/json'],
    ['Content-Length', String(Buffer.byteLength(body))],
    ['User-Agent', Buffer.from(userAgent, 'utf8')],
    ['X-Sourcegraph-Actor-UID', Buffer.from(actorUid, 'utf8')],
  ], body);
  const reply = await rawExchange(gateway, request);
  const [event] = await eventsOf(actor, 1);

  assert.equal(reply.status, 200, reply.statusLine);
  assert.equal(event.userAgent, userAgent);
  assert.equal(event.sgActorUid, actorUid);
});

test('529 reason phrase', async () => {
  const actor = await gateway.createActor();
  upstream.enqueue({ status: 529, body: { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } } });
  const body = JSON.stringify(ANTHROPIC_REQUEST);
  const request = rawRequest('POST', '/v1/messages', [
    ['Authorization', `Bearer ${actor.token}`],
    ['Content-Type', 'application/json'],
    ['Content-Length', String(Buffer.byteLength(body))],
  ], body);
  const reply = await rawExchange(gateway, request);

  assert.equal(reply.status, 529, reply.statusLine);
  assert.equal(reply.reason, 'Overloaded');
});
