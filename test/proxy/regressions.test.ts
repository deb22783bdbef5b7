/**
 * Failures seen at the boundary between the gateway, its clients and the providers: split and
 * broken streams, upstream errors and timeouts, header and secret handling, limits, malformed
 * requests. Every authenticated request must leave exactly one usage event.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { after, before, beforeEach, test } from 'node:test';
import zlib from 'node:zlib';
import { anthropicComplete } from '../../src/providers/anthropic/complete.ts';
import { anthropicMessages } from '../../src/providers/anthropic/messages.ts';
import { openaiChat } from '../../src/providers/openai/routes.ts';
import type { UsageEvent } from '../../src/usage/event.ts';
import { ANTHROPIC_KEY, DEFAULT_LIMITS, OPENAI_KEY, startTestGateway, type TestActor, type TestGateway } from '../helpers/gateway.ts';
import {
  DEFAULT_ANTHROPIC_USAGE,
  DEFAULT_OPENAI_USAGE,
  UpstreamServer,
  anthropicCompletionStream,
  anthropicMessage,
  anthropicStream,
  openaiChatCompletion,
  openaiChatStream,
  splitBody,
  splitSseEvents,
  type ScriptedChunk,
} from '../helpers/upstream-server.ts';
import { bearer, createAgent, open, parseSse, post, readUntilFailure, settle, type RawResponse } from './client.ts';
import { TapChunkCounter } from './tap-chunks.ts';

const SSE_HEADERS = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' };
const ANTHROPIC_STREAM_REQUEST = { model: 'claude-test', max_tokens: 64, stream: true, messages: [{ role: 'user', content: 'Hi' }] };
const ANTHROPIC_REQUEST = { ...ANTHROPIC_STREAM_REQUEST, stream: false };
const OPENAI_STREAM_REQUEST = { model: 'gpt-test', stream: true, stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'Hi' }] };
/** An OpenAI stream request without `include_usage`, which the gateway rewrites. */
const OPENAI_BARE_STREAM_REQUEST = { model: 'gpt-test', stream: true, messages: [{ role: 'user', content: 'Hi' }] };
const OPENAI_REQUEST = { model: 'gpt-test', messages: [{ role: 'user', content: 'Hi' }] };
const COMPLETE_STREAM_REQUEST = { model: 'claude-test', prompt: '\n\nHuman: Hi\n\nAssistant:', max_tokens_to_sample: 64, stream: true };
const EMBEDDINGS_REQUEST = { model: 'text-embedding-test', input: 'hello world' };
const OVERLOADED_ERROR = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}';

const agent = createAgent();
const tapChunks = new TapChunkCounter([anthropicMessages, anthropicComplete, openaiChat]);
let upstream: UpstreamServer;
let gateway: TestGateway;
/** A gateway with short timeouts and a small body limit. */
let strict: TestGateway;
/** Usage events each actor of `gateway` must have, checked again by the last test. */
const expectedEvents = new Map<string, number>();

before(async () => {
  upstream = await UpstreamServer.start();
  gateway = await startTestGateway(upstream);
  strict = await startTestGateway(upstream, {
    LLM_PROXY_UPSTREAM_TIMEOUT: '300ms',
    LLM_PROXY_STREAM_IDLE_TIMEOUT: '300ms',
    LLM_PROXY_MAX_BODY_BYTES: '2048',
  });
});

after(async () => {
  tapChunks.restore();
  await agent.close();
  await gateway?.close();
  await strict?.close();
  await upstream?.close();
});

beforeEach(() => {
  upstream.reset();
});

async function createActor(limits: object = DEFAULT_LIMITS, target: TestGateway = gateway): Promise<TestActor> {
  const actor = await target.createActor(limits);
  if (target === gateway) expectedEvents.set(actor.id, 0);
  return actor;
}

/** Waits for the actor's usage events and checks that exactly `count` exist. Newest first. */
async function eventsOf(actor: TestActor, count: number, target: TestGateway = gateway): Promise<UsageEvent[]> {
  await target.waitForEvents(actor.id, count);
  await settle(30);
  const events = await target.usageEvents(actor.id);
  assert.equal(events.length, count, `usage events of ${actor.id}`);
  if (target === gateway) expectedEvents.set(actor.id, count);
  return events;
}

async function onlyEvent(actor: TestActor, target: TestGateway = gateway): Promise<UsageEvent> {
  return (await eventsOf(actor, 1, target))[0];
}

function send(path: string, body: string | Buffer | object, actor: TestActor, headers: Record<string, string> = {}, target: TestGateway = gateway): Promise<RawResponse> {
  return post(agent, target.url + path, body, { headers: { ...bearer(actor.token), ...headers } });
}

function json(response: RawResponse): any {
  return JSON.parse(response.body.toString('utf8'));
}

/**
 * Sends a body as two pieces split at `offset`. The pauses let the gateway read each piece
 * before the next arrives, because otherwise its socket buffer merges them.
 */
function splitWithPauses(body: Buffer, offset: number): ScriptedChunk[] {
  const [head, tail] = splitBody(body, { splitAt: [offset] });
  return [{ delayMs: 2 }, head, { delayMs: 2 }, tail];
}

/** Returns the number of chunks the gateway's tap received for the last stream that ended. */
function lastTapChunks(): number {
  return tapChunks.records.at(-1)?.chunks ?? 0;
}

function sse(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`;
}

/** Lists the offsets of UTF-8 continuation bytes, where a split cuts a multi-byte character. */
function offsetsInsideCharacters(body: Buffer): number[] {
  const offsets: number[] = [];
  for (let i = 1; i < body.length; i++) {
    if ((body[i] & 0xc0) === 0x80) offsets.push(i);
  }
  return offsets;
}

function assertAnthropicError(response: RawResponse, type: string): void {
  const body = json(response);
  assert.equal(body.type, 'error', 'Anthropic error shape: type');
  assert.equal(body.error?.type, type, 'Anthropic error shape: error.type');
  assert.equal(typeof body.error?.message, 'string', 'Anthropic error shape: error.message');
}

function assertOpenAiError(response: RawResponse, type: string): void {
  const body = json(response);
  assert.deepEqual(Object.keys(body.error ?? {}).sort(), ['code', 'message', 'param', 'type'], 'OpenAI error shape: keys');
  assert.equal(body.error.type, type, 'OpenAI error shape: error.type');
  assert.equal(typeof body.error.message, 'string', 'OpenAI error shape: error.message');
}

async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

test('event line split from its data', async () => {
  const actor = await createActor();
  const body = anthropicStream('Hello there', DEFAULT_ANTHROPIC_USAGE);
  const marker = 'event: content_block_delta\n';
  const at = body.indexOf(marker) + marker.length;
  upstream.enqueue({ headers: SSE_HEADERS, chunks: [body.slice(0, at), { delayMs: 50 }, body.slice(at)] });

  const response = await send('/v1/messages', ANTHROPIC_STREAM_REQUEST, actor);
  const event = await onlyEvent(actor);

  assert.equal(response.status, 200);
  assert.equal(response.body.toString('utf8'), body);
  const received = parseSse(response.body.toString('utf8'));
  assert.deepEqual(received, parseSse(body), 'client events');
  assert.equal(received.filter((item) => item.event === 'content_block_delta').length, 2, 'content_block_delta events');
  assert.ok(lastTapChunks() >= 2, 'the gateway received the stream as one chunk');
  assert.equal(event.inputTokens, DEFAULT_ANTHROPIC_USAGE.input_tokens);
  assert.equal(event.outputTokens, DEFAULT_ANTHROPIC_USAGE.output_tokens);
  assert.equal(event.tokensEstimated, false);
  assert.equal(event.outcome, 'completed');
});

test('UTF-8 character split in metering', async () => {
  // Legacy Text Completions report no usage, so the output count comes from the metered text.
  const text = ' Prix 5€ 中文 fin';
  const body = Buffer.from(anthropicCompletionStream(text), 'utf8');
  const offsets = offsetsInsideCharacters(body);
  assert.equal(offsets.length, 6, 'two inner bytes for each of three characters');
  const actor = await createActor();

  upstream.enqueue({ headers: SSE_HEADERS, chunks: [body] });
  const whole = await send('/v1/complete', COMPLETE_STREAM_REQUEST, actor);
  const [baseline] = await eventsOf(actor, 1);
  assert.ok(whole.body.equals(body), 'unsplit client body');
  assert.equal(baseline.completionChars, text.length, 'completionChars of the unsplit run');
  assert.equal(baseline.tokensEstimated, true);

  for (const offset of offsets) {
    upstream.enqueue({ headers: SSE_HEADERS, chunks: splitWithPauses(body, offset) });
    const response = await send('/v1/complete', COMPLETE_STREAM_REQUEST, actor);
    assert.ok(lastTapChunks() >= 2, `the gateway received the stream split at ${offset} as one chunk`);
    assert.ok(response.body.equals(body), `client body split at ${offset}`);
  }
  const events = await eventsOf(actor, offsets.length + 1);
  for (const event of events) {
    assert.equal(event.completionChars, text.length, `completionChars of ${event.requestId}`);
    assert.equal(event.outputTokens, baseline.outputTokens, `outputTokens of ${event.requestId}`);
  }
});

test('UTF-8 character split in rewritten stream', async () => {
  // Without include_usage the gateway re-encodes the events it forwards. A character that the
  // upstream split must come out whole, not as U+FFFD.
  const text = 'Prix 5€ 中文 fin';
  const body = Buffer.from(openaiChatStream(text, { includeUsage: true }), 'utf8');
  const expected = Buffer.from(openaiChatStream(text, { includeUsage: false }), 'utf8');
  const actor = await createActor();
  const offsets = offsetsInsideCharacters(body);

  for (const offset of offsets) {
    upstream.enqueue({ headers: SSE_HEADERS, chunks: splitWithPauses(body, offset) });
    const response = await send('/v1/chat/completions', OPENAI_BARE_STREAM_REQUEST, actor);
    assert.ok(lastTapChunks() >= 2, `the gateway received the stream split at ${offset} as one chunk`);
    assert.ok(!response.body.toString('utf8').includes('\uFFFD'), `U+FFFD in the client body split at ${offset}`);
    assert.equal(response.body.toString('utf8'), expected.toString('utf8'), `client body split at ${offset}`);
  }
  const events = await eventsOf(actor, offsets.length);
  for (const event of events) {
    assert.equal(event.completionChars, text.length, `completionChars of ${event.requestId}`);
  }
});

test('keep-alive comments and pings forwarded', async () => {
  const actor = await createActor();
  const events = splitSseEvents(anthropicStream('one two three', DEFAULT_ANTHROPIC_USAGE));
  const chunks: string[] = [];
  for (const event of events) {
    chunks.push(event);
    if (event.startsWith('event: content_block_delta')) chunks.push(': keep-alive\n\n', sse('ping', { type: 'ping' }));
  }
  upstream.enqueue({ headers: SSE_HEADERS, chunks });

  const response = await send('/v1/messages', ANTHROPIC_STREAM_REQUEST, actor);
  const event = await onlyEvent(actor);

  assert.equal(response.body.toString('utf8'), chunks.join(''));
  assert.equal(event.inputTokens, DEFAULT_ANTHROPIC_USAGE.input_tokens);
  assert.equal(event.outputTokens, DEFAULT_ANTHROPIC_USAGE.output_tokens);
  assert.equal(event.outcome, 'completed');
});

test('keep-alive comments in rewritten stream', async () => {
  const actor = await createActor();
  const upstreamEvents = splitSseEvents(openaiChatStream('one two three', { includeUsage: true }));
  const clientEvents = splitSseEvents(openaiChatStream('one two three', { includeUsage: false }));
  const comment = ': keep-alive\n\n';
  // The client gets the comment before each event, and the usage chunk is removed, which leaves
  // its comment alone before [DONE].
  const chunks = upstreamEvents.flatMap((event) => [comment, event]);
  const expected = clientEvents.map((event) => comment + event);
  expected.splice(clientEvents.length - 1, 0, comment);
  upstream.enqueue({ headers: SSE_HEADERS, chunks });

  const response = await send('/v1/chat/completions', OPENAI_BARE_STREAM_REQUEST, actor);
  const event = await onlyEvent(actor);

  assert.equal(response.body.toString('utf8'), expected.join(''));
  assert.equal(event.inputTokens, DEFAULT_OPENAI_USAGE.prompt_tokens);
  assert.equal(event.outputTokens, DEFAULT_OPENAI_USAGE.completion_tokens);
});

test('stream request answered with 400 JSON', async () => {
  const cases = [
    {
      path: '/v1/messages',
      request: ANTHROPIC_STREAM_REQUEST,
      error: { type: 'error', error: { type: 'invalid_request_error', message: 'max_tokens: Field required' } },
      check: (response: RawResponse) => assertAnthropicError(response, 'invalid_request_error'),
    },
    {
      path: '/v1/chat/completions',
      request: OPENAI_STREAM_REQUEST,
      error: { error: { message: "Unsupported value: 'stream'", type: 'invalid_request_error', param: 'stream', code: 'unsupported_value' } },
      check: (response: RawResponse) => assertOpenAiError(response, 'invalid_request_error'),
    },
  ];
  for (const { path, request, error, check } of cases) {
    const actor = await createActor();
    upstream.enqueue({ status: 400, body: error });
    const response = await send(path, request, actor);
    const event = await onlyEvent(actor);

    assert.equal(response.status, 400, path);
    assert.match(String(response.headers['content-type']), /^application\/json/, `${path} content-type`);
    check(response);
    assert.deepEqual(json(response), error, `${path} body`);
    assert.equal(event.status, 400, `${path} event status`);
    assert.equal(event.outcome, 'upstream_error', `${path} event outcome`);
  }
});

test('mid-stream error event forwarded', async () => {
  const actor = await createActor();
  const events = splitSseEvents(anthropicStream('Hello there', DEFAULT_ANTHROPIC_USAGE));
  const firstDelta = events.findIndex((event) => event.startsWith('event: content_block_delta'));
  const chunks = [...events.slice(0, firstDelta + 1), sse('error', OVERLOADED_ERROR)];
  upstream.enqueue({ headers: SSE_HEADERS, chunks });

  const response = await send('/v1/messages', ANTHROPIC_STREAM_REQUEST, actor);
  const event = await onlyEvent(actor);

  assert.equal(response.status, 200);
  assert.equal(response.body.toString('utf8'), chunks.join(''));
  assert.ok(!response.body.toString('utf8').includes('message_stop'), 'the gateway invented a message_stop');
  assert.equal(event.outcome, 'upstream_error');
  assert.equal(event.inputTokens, DEFAULT_ANTHROPIC_USAGE.input_tokens);
});

test('upstream reset mid-stream', async () => {
  const actor = await createActor();
  const events = splitSseEvents(openaiChatStream('one two three four five', { includeUsage: true }));
  upstream.enqueue({ headers: SSE_HEADERS, chunks: events, resetAfterChunks: 3 });

  const response = await open(agent, gateway.url + '/v1/chat/completions', OPENAI_STREAM_REQUEST, { headers: bearer(actor.token) });
  const { received, error } = await readUntilFailure(response.body);
  const event = await onlyEvent(actor);

  assert.equal(response.statusCode, 200);
  assert.ok(error !== undefined, 'the client body ended cleanly after an upstream reset');
  assert.equal(received.toString('utf8'), events.slice(0, 3).join(''));
  assert.ok(!received.toString('utf8').includes('[DONE]'), 'the gateway appended [DONE]');
  assert.ok(!received.toString('utf8').includes('finish_reason":"stop'), 'the gateway appended a finish chunk');
  assert.equal(event.outcome, 'upstream_error');
});

test('client credentials stay behind', async () => {
  const actor = await createActor();
  const clientHeaders = {
    authorization: `Bearer ${actor.token}`,
    'x-api-key': actor.token,
    cookie: 'session=abc',
    'anthropic-beta': 'a,b',
    'content-type': 'application/json',
  };
  await post(agent, gateway.url + '/v1/messages', ANTHROPIC_REQUEST, { headers: clientHeaders });
  await post(agent, gateway.url + '/v1/messages', ANTHROPIC_REQUEST, { headers: { ...clientHeaders, 'anthropic-version': '2023-01-01' } });
  await post(agent, gateway.url + '/v1/chat/completions', OPENAI_REQUEST, { headers: clientHeaders });
  await eventsOf(actor, 3);

  assert.equal(upstream.requests.length, 3);
  const [defaulted, versioned, openai] = upstream.requests;
  for (const request of upstream.requests) {
    const raw = request.rawHeaders.join('\n');
    assert.ok(!raw.includes(actor.token), `actor token in the upstream headers of ${request.url}`);
    assert.ok(!request.url.includes(actor.token), `actor token in the upstream URL ${request.url}`);
    assert.ok(!request.body.toString('utf8').includes(actor.token), `actor token in the upstream body of ${request.url}`);
    assert.equal(request.headers.cookie, undefined, `cookie sent to ${request.url}`);
  }
  assert.equal(defaulted.headers['x-api-key'], ANTHROPIC_KEY);
  assert.equal(defaulted.headers.authorization, undefined);
  assert.equal(defaulted.headers['anthropic-beta'], 'a,b');
  assert.equal(defaulted.headers['anthropic-version'], '2023-06-01');
  assert.equal(versioned.headers['anthropic-version'], '2023-01-01');
  assert.equal(openai.headers.authorization, `Bearer ${OPENAI_KEY}`);
  assert.equal(openai.headers['x-api-key'], undefined);
  assert.ok(!gateway.logText().includes(actor.token), 'actor token in the gateway logs');
});

test('masked key in upstream 401 hidden', async () => {
  const cases = [
    {
      path: '/v1/chat/completions',
      request: OPENAI_REQUEST,
      error: { error: { message: 'Incorrect API key provided: sk-up****WXYZ. You can find your API key at https://platform.openai.com/account/api-keys.', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } },
    },
    {
      path: '/v1/messages',
      request: ANTHROPIC_REQUEST,
      error: { type: 'error', error: { type: 'authentication_error', message: 'invalid x-api-key: Incorrect API key provided: sk-up****WXYZ' } },
    },
  ];
  for (const { path, request, error } of cases) {
    const actor = await createActor();
    upstream.enqueue({ status: 401, body: error });
    const response = await send(path, request, actor);
    await onlyEvent(actor);

    assert.equal(response.status, 401, path);
    assert.ok(!response.body.toString('utf8').includes('sk-'), `${path} client body: ${response.body.toString('utf8')}`);
    assert.ok(!JSON.stringify(response.headers).includes('sk-'), `${path} client headers`);
  }
  assert.ok(!gateway.logText().includes('sk-up'), 'a masked provider key reached the logs');
});

test('client disconnect closes upstream', async () => {
  const actor = await createActor();
  const events = splitSseEvents(anthropicStream('one two three four five six', DEFAULT_ANTHROPIC_USAGE));
  const chunks: ScriptedChunk[] = events.flatMap((event) => [event, { delayMs: 100 }]);
  upstream.enqueue({ headers: SSE_HEADERS, chunks });

  const controller = new AbortController();
  const response = await open(agent, gateway.url + '/v1/messages', ANTHROPIC_STREAM_REQUEST, { headers: bearer(actor.token), signal: controller.signal });
  let text = '';
  let abortedAt: number | undefined;
  try {
    for await (const chunk of response.body) {
      text += (chunk as Buffer).toString('utf8');
      if (parseSse(text).some((item) => item.event === 'content_block_delta')) {
        controller.abort();
        abortedAt = performance.now();
      }
    }
  } catch (error) {
    assert.equal((error as Error).name, 'AbortError');
  }
  assert.ok(abortedAt !== undefined, 'the stream ended before its first delta');
  const closedAt = await upstream.waitForClose(upstream.requests[0], 2_000);
  const event = await onlyEvent(actor);

  assert.ok(closedAt - abortedAt <= 100, `the upstream socket closed ${Math.round(closedAt - abortedAt)} ms after the client left`);
  assert.equal(event.outcome, 'client_aborted');
  assert.equal(event.inputTokens, DEFAULT_ANTHROPIC_USAGE.input_tokens);
});

test('concurrent requests over the limit', async () => {
  const actor = await createActor({ chat_completions: { limit: 10, interval: '1h', allowedModels: ['*'] } });
  const routes = [
    { path: '/v1/messages', request: ANTHROPIC_REQUEST, check: (response: RawResponse) => assertAnthropicError(response, 'rate_limit_error') },
    { path: '/v1/chat/completions', request: OPENAI_REQUEST, check: (response: RawResponse) => assertOpenAiError(response, 'rate_limit_error') },
  ];
  const calls = Array.from({ length: 50 }, (_, i) => routes[i % 2]);
  const responses = await Promise.all(calls.map(({ path, request }) => send(path, request, actor)));
  await eventsOf(actor, 50);

  assert.equal(upstream.requests.length, 10, 'requests that reached the upstream');
  assert.equal(responses.filter((response) => response.status === 200).length, 10, '200 responses');
  assert.equal(responses.filter((response) => response.status === 429).length, 40, '429 responses');
  responses.forEach((response, i) => {
    if (response.status !== 429) return;
    assert.match(String(response.headers['retry-after']), /^[1-9]\d*$/, `retry-after of response ${i}`);
    assert.equal(response.headers['x-ratelimit-limit'], '10', `x-ratelimit-limit of response ${i}`);
    assert.equal(response.headers['x-ratelimit-remaining'], '0', `x-ratelimit-remaining of response ${i}`);
    calls[i].check(response);
  });
});

test('malformed JSON bodies rejected', async () => {
  const routes = [
    { path: '/v1/messages', check: (response: RawResponse) => assertAnthropicError(response, 'invalid_request_error') },
    { path: '/v1/complete', check: (response: RawResponse) => assertAnthropicError(response, 'invalid_request_error') },
    { path: '/v1/chat/completions', check: (response: RawResponse) => assertOpenAiError(response, 'invalid_request_error') },
    { path: '/v1/embeddings', check: (response: RawResponse) => assertOpenAiError(response, 'invalid_request_error') },
  ];
  const bodies = ['{"model":', '', '[]'];
  const actor = await createActor();
  for (const { path, check } of routes) {
    for (const body of bodies) {
      const response = await send(path, body, actor);
      assert.equal(response.status, 400, `${path} with ${JSON.stringify(body)}`);
      check(response);
    }
  }
  const events = await eventsOf(actor, routes.length * bodies.length);

  assert.equal(upstream.requests.length, 0, 'requests that reached the upstream');
  assert.ok(events.every((event) => event.outcome === 'rejected'), 'every event is rejected');
});

test('gzip JSON response decoded', async () => {
  const cases = [
    { path: '/v1/messages', request: ANTHROPIC_REQUEST, payload: anthropicMessage('Hello there', DEFAULT_ANTHROPIC_USAGE), input: 10, output: 5 },
    { path: '/v1/chat/completions', request: OPENAI_REQUEST, payload: openaiChatCompletion('Hello there'), input: 9, output: 12 },
  ];
  for (const { path, request, payload, input, output } of cases) {
    const actor = await createActor();
    const plain = Buffer.from(JSON.stringify(payload), 'utf8');
    upstream.enqueue({ headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' }, body: zlib.gzipSync(plain) });
    const response = await send(path, request, actor);
    const event = await onlyEvent(actor);

    assert.equal(response.status, 200, path);
    assert.equal(response.headers['content-encoding'], undefined, `${path} content-encoding`);
    if (response.headers['content-length'] !== undefined) {
      assert.equal(Number(response.headers['content-length']), plain.length, `${path} content-length`);
    }
    assert.ok(response.body.equals(plain), `${path} client body`);
    assert.equal(event.inputTokens, input, `${path} inputTokens`);
    assert.equal(event.outputTokens, output, `${path} outputTokens`);
    assert.equal(event.tokensEstimated, false, `${path} tokensEstimated`);
  }
});

test('upstream 429 becomes 503', async () => {
  const cases = [
    { path: '/v1/messages', request: ANTHROPIC_REQUEST, retryAfter: '7', expected: '7' },
    { path: '/v1/messages', request: ANTHROPIC_REQUEST, retryAfter: undefined, expected: '2' },
    { path: '/v1/chat/completions', request: OPENAI_REQUEST, retryAfter: '11', expected: '11' },
    { path: '/v1/chat/completions', request: OPENAI_REQUEST, retryAfter: undefined, expected: '30' },
  ];
  for (const { path, request, retryAfter, expected } of cases) {
    const actor = await createActor();
    const headers: Record<string, string> = retryAfter === undefined ? {} : { 'retry-after': retryAfter };
    upstream.enqueue({ status: 429, headers, body: { error: { message: 'Rate limit reached', type: 'rate_limit_error' } } });
    const response = await send(path, request, actor);
    const event = await onlyEvent(actor);
    const label = `${path} with retry-after ${retryAfter ?? 'absent'}`;

    assert.equal(response.status, 503, label);
    assert.equal(response.headers['retry-after'], expected, `${label}: client retry-after`);
    if (path === '/v1/messages') assertAnthropicError(response, 'overloaded_error');
    else assertOpenAiError(response, 'server_error');
    assert.equal(event.status, 503, `${label}: event status`);
    assert.equal(event.outcome, 'upstream_error', `${label}: event outcome`);
  }
});

test('upstream 500 and 529 pass through', async () => {
  const cases = [
    { path: '/v1/messages', request: ANTHROPIC_REQUEST, status: 500, error: { type: 'error', error: { type: 'api_error', message: 'Internal server error' } } },
    { path: '/v1/messages', request: ANTHROPIC_REQUEST, status: 529, error: { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } } },
    { path: '/v1/chat/completions', request: OPENAI_REQUEST, status: 500, error: { error: { message: 'The server had an error', type: 'server_error', param: null, code: null } } },
  ];
  for (const { path, request, status, error } of cases) {
    const actor = await createActor();
    upstream.enqueue({ status, body: error });
    const response = await send(path, request, actor);
    const event = await onlyEvent(actor);

    assert.equal(response.status, status, `${path} ${status}`);
    assert.deepEqual(json(response), error, `${path} ${status} body`);
    assert.equal(event.status, status, `${path} ${status} event status`);
    assert.equal(event.outcome, 'upstream_error', `${path} ${status} event outcome`);
  }
});

test('refused connection gives 502', async () => {
  const port = await closedPort();
  const unreachable = await startTestGateway(upstream, {
    LLM_PROXY_ANTHROPIC_BASE_URL: `http://127.0.0.1:${port}`,
    LLM_PROXY_OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1`,
  });
  try {
    const actor = await createActor(DEFAULT_LIMITS, unreachable);
    const anthropic = await send('/v1/messages', ANTHROPIC_REQUEST, actor, {}, unreachable);
    const openai = await send('/v1/chat/completions', OPENAI_REQUEST, actor, {}, unreachable);
    const events = await eventsOf(actor, 2, unreachable);

    assert.equal(anthropic.status, 502);
    assertAnthropicError(anthropic, 'api_error');
    assert.equal(openai.status, 502);
    assertOpenAiError(openai, 'server_error');
    assert.ok(events.every((event) => event.outcome === 'upstream_error'), 'every event is upstream_error');
    assert.ok(!anthropic.body.toString('utf8').includes(String(port)), 'the error names the upstream port');
  } finally {
    await unreachable.close();
  }
});

test('no upstream response gives 504', async () => {
  const actor = await createActor(DEFAULT_LIMITS, strict);
  upstream.enqueue({ noResponse: true });
  const started = performance.now();
  const response = await send('/v1/messages', ANTHROPIC_REQUEST, actor, {}, strict);
  const elapsed = performance.now() - started;
  const event = await onlyEvent(actor, strict);

  assert.equal(response.status, 504);
  assertAnthropicError(response, 'api_error');
  assert.ok(elapsed >= 250, `answered after ${Math.round(elapsed)} ms, before the 300 ms timeout`);
  // undici 7 checks its header and body timeouts with a timer that ticks every 499 ms
  // (lib/util/timers.js), so a 300 ms timeout fires after up to about 1 s.
  assert.ok(elapsed < 2_500, `answered after ${Math.round(elapsed)} ms`);
  assert.equal(event.outcome, 'timeout');
});

test('stalled stream times out', async () => {
  const actor = await createActor(DEFAULT_LIMITS, strict);
  const events = splitSseEvents(anthropicStream('one two three', DEFAULT_ANTHROPIC_USAGE));
  upstream.enqueue({ headers: SSE_HEADERS, chunks: [...events.slice(0, 3), { delayMs: 5_000 }, ...events.slice(3)] });

  const response = await open(agent, strict.url + '/v1/messages', ANTHROPIC_STREAM_REQUEST, { headers: bearer(actor.token) });
  const { received, error } = await readUntilFailure(response.body);
  const event = await onlyEvent(actor, strict);

  assert.equal(response.statusCode, 200);
  assert.ok(error !== undefined, 'the client body ended cleanly after the upstream stalled');
  assert.equal(received.toString('utf8'), events.slice(0, 3).join(''));
  assert.equal(event.outcome, 'timeout');
});

test('oversized body rejected with 413', async () => {
  const actor = await createActor(DEFAULT_LIMITS, strict);
  const request = { ...ANTHROPIC_REQUEST, messages: [{ role: 'user', content: 'x'.repeat(3000) }] };
  const response = await send('/v1/messages', request, actor, {}, strict);
  const event = await onlyEvent(actor, strict);

  assert.equal(response.status, 413);
  assertAnthropicError(response, 'request_too_large');
  assert.equal(upstream.requests.length, 0, 'requests that reached the upstream');
  assert.equal(event.status, 413);
});

test('failed requests give their unit back', async () => {
  const actor = await createActor({ chat_completions: { limit: 2, interval: '1h', allowedModels: ['*'] } });
  const failure = { status: 500, body: { error: { message: 'The server had an error', type: 'server_error', param: null, code: null } } };
  upstream.enqueue(failure, failure);
  const statuses: number[] = [];
  for (let i = 0; i < 4; i++) {
    statuses.push((await send('/v1/chat/completions', OPENAI_REQUEST, actor)).status);
    await eventsOf(actor, i + 1);
  }

  assert.deepEqual(statuses, [500, 500, 200, 200]);
  assert.equal(upstream.requests.length, 4, 'requests that reached the upstream');
});

test('embeddings charge reported tokens', async () => {
  const actor = await createActor({ embeddings: { limit: 10, interval: '1h', allowedModels: ['*'] } });
  upstream.enqueue({
    body: {
      object: 'list',
      data: [{ object: 'embedding', index: 0, embedding: [0.25, -0.5] }],
      model: 'text-embedding-test',
      usage: { prompt_tokens: 12, total_tokens: 12 },
    },
  });
  const first = await send('/v1/embeddings', EMBEDDINGS_REQUEST, actor);
  const [charged] = await eventsOf(actor, 1);
  const second = await send('/v1/embeddings', EMBEDDINGS_REQUEST, actor);
  await eventsOf(actor, 2);

  assert.equal(first.status, 200);
  assert.equal(charged.inputTokens, 12);
  assert.equal(second.status, 429);
  assert.equal(second.headers['x-ratelimit-limit'], '10');
  assert.equal(second.headers['x-ratelimit-remaining'], '0');
  assertOpenAiError(second, 'rate_limit_error');
  assert.equal(upstream.requests.length, 1, 'requests that reached the upstream');
});

test('unknown feature header rejected', async () => {
  const actor = await createActor();
  const response = await send('/v1/messages', ANTHROPIC_REQUEST, actor, { 'x-sourcegraph-feature': 'bogus' });
  const event = await onlyEvent(actor);

  assert.equal(response.status, 400);
  assertAnthropicError(response, 'invalid_request_error');
  assert.equal(json(response).error.code, 'unknown_feature');
  assert.equal(upstream.requests.length, 0, 'requests that reached the upstream');
  assert.equal(event.outcome, 'rejected');
});

test('feature header sets event feature', async () => {
  const actor = await createActor();
  const response = await send('/v1/messages', ANTHROPIC_REQUEST, actor, { 'x-sourcegraph-feature': 'code_completions' });
  const event = await onlyEvent(actor);

  assert.equal(response.status, 200);
  assert.equal(event.feature, 'code_completions');
});

test('disabled provider names its key', async () => {
  const partial = await startTestGateway(upstream, { LLM_PROXY_OPENAI_API_KEY: '' });
  try {
    const actor = await createActor(DEFAULT_LIMITS, partial);
    const response = await send('/v1/chat/completions', OPENAI_REQUEST, actor, {}, partial);
    const event = await onlyEvent(actor, partial);

    assert.equal(response.status, 503);
    assertOpenAiError(response, 'server_error');
    assert.match(json(response).error.message, /LLM_PROXY_OPENAI_API_KEY/);
    assert.equal(upstream.requests.length, 0, 'requests that reached the upstream');
    assert.equal(event.status, 503);
  } finally {
    await partial.close();
  }
});

test('denied model rejected', async () => {
  const actor = await createActor({ chat_completions: { limit: 100, interval: '1h', allowedModels: ['claude-a'] } });
  const denied = await send('/v1/messages', { ...ANTHROPIC_REQUEST, model: 'claude-b' }, actor);
  const allowed = await send('/v1/messages', { ...ANTHROPIC_REQUEST, model: 'claude-a' }, actor);
  await eventsOf(actor, 2);

  assert.equal(denied.status, 400);
  assertAnthropicError(denied, 'invalid_request_error');
  const message: string = json(denied).error.message;
  assert.match(message, /claude-b/);
  assert.doesNotMatch(message, /claude-a/);
  assert.equal(allowed.status, 200);
  assert.equal(upstream.requests.length, 1, 'requests that reached the upstream');
  assert.equal(upstream.requests[0].json?.model, 'claude-a');
});

test('rejected token writes no event', async () => {
  await settle(50);
  const before = (await gateway.usageEvents()).length;
  const unknown = await post(agent, gateway.url + '/v1/messages', ANTHROPIC_REQUEST, { headers: bearer(`llmp_${'A'.repeat(43)}`) });
  const missing = await post(agent, gateway.url + '/v1/chat/completions', OPENAI_REQUEST, { headers: { 'content-type': 'application/json' } });
  await settle(100);
  const afterwards = (await gateway.usageEvents()).length;

  assert.equal(unknown.status, 401);
  assertAnthropicError(unknown, 'authentication_error');
  assert.equal(missing.status, 401);
  assertOpenAiError(missing, 'authentication_error');
  assert.equal(afterwards, before, 'usage events written for unauthenticated requests');
  assert.equal(upstream.requests.length, 0, 'requests that reached the upstream');
});

test('one usage event per request', async () => {
  await settle(100);
  const counts = new Map<string, number>();
  for (const event of await gateway.usageEvents()) counts.set(event.actorId, (counts.get(event.actorId) ?? 0) + 1);
  assert.deepEqual(Object.fromEntries(counts), Object.fromEntries(expectedEvents));
});
