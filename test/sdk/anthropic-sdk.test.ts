/**
 * The official `@anthropic-ai/sdk` (1.x) as a client of the gateway, against a scripted upstream
 * on 127.0.0.1. Checks that messages, streams and errors reach SDK callers in the form the SDK
 * parses, and that the gateway meters what the upstream reported.
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import Anthropic, { type APIError } from '@anthropic-ai/sdk';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import {
  DEFAULT_ANTHROPIC_USAGE,
  DEFAULT_TEXT,
  UpstreamServer,
  anthropicStream,
  splitSseEvents,
  sseResponse,
  textDeltas,
} from '../helpers/upstream-server.ts';
import { collect, rejection } from './expect.ts';

const MODEL = 'claude-test';
const REQUEST_ID = /^req_[0-9a-f]{32}$/;
const MESSAGES: Anthropic.MessageParam[] = [{ role: 'user', content: 'Say hello' }];
const REQUEST = { model: MODEL, max_tokens: 64, messages: MESSAGES };
const TOOL_USAGE = { input_tokens: 42, output_tokens: 19 };

let upstream: UpstreamServer;
let gw: TestGateway;

function client(apiKey: string): Anthropic {
  return new Anthropic({ baseURL: gw.url, apiKey, maxRetries: 0, timeout: 10_000 });
}

async function newClient(limits?: Record<string, unknown>): Promise<{ anthropic: Anthropic; actorId: string }> {
  const actor = await gw.createActor(limits);
  return { anthropic: client(actor.token), actorId: actor.id };
}

/** Returns the gateway's stable error code, which it sends as `error.code` in Anthropic's error body. */
function gatewayCode(error: APIError): unknown {
  return (error.error as { error?: { code?: unknown } } | undefined)?.error?.code;
}

function sse(event: string, data: object): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

function messageStart(usage: { input_tokens: number }): string {
  return sse('message_start', {
    type: 'message_start',
    message: {
      id: 'msg_sdk_test_0001',
      type: 'message',
      role: 'assistant',
      model: MODEL,
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage: { input_tokens: usage.input_tokens, cache_creation_input_tokens: 0, cache_read_input_tokens: 0, output_tokens: 1 },
    },
  });
}

/** Builds a tool_use block stream as Anthropic sends it: the block with empty input, then the JSON in pieces. */
function toolUseStream(): string {
  const inputDelta = (partial: string) =>
    sse('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'input_json_delta', partial_json: partial } });
  return [
    messageStart(TOOL_USAGE),
    sse('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'tool_use', id: 'toolu_weather_1', name: 'get_weather', input: {} } }),
    inputDelta(''),
    inputDelta('{"city":'),
    inputDelta(' "Paris"}'),
    sse('content_block_stop', { type: 'content_block_stop', index: 0 }),
    sse('message_delta', { type: 'message_delta', delta: { stop_reason: 'tool_use', stop_sequence: null }, usage: { output_tokens: TOOL_USAGE.output_tokens } }),
    sse('message_stop', { type: 'message_stop' }),
  ].join('');
}

/** Builds the default text stream with a keep-alive comment and an extra ping after every text delta. */
function streamWithKeepAlives(): string[] {
  const pieces: string[] = [];
  for (const event of splitSseEvents(anthropicStream(DEFAULT_TEXT))) {
    pieces.push(event);
    if (event.startsWith('event: content_block_delta')) pieces.push(': keep-alive\n\n', sse('ping', { type: 'ping' }));
  }
  return pieces;
}

/** Builds a text stream that fails after its first delta with an `overloaded_error` event. */
function streamWithErrorEvent(): string {
  return [
    messageStart(DEFAULT_ANTHROPIC_USAGE),
    sse('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }),
    sse('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Hello!' } }),
    sse('error', { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }),
  ].join('');
}

describe('Anthropic SDK', { timeout: 60_000 }, () => {
  before(async () => {
    upstream = await UpstreamServer.start();
    gw = await startTestGateway(upstream, { LLM_PROXY_ANTHROPIC_ALLOWED_MODELS: MODEL });
  });

  after(async () => {
    await gw?.close();
    await upstream?.close();
  });

  beforeEach(() => upstream.reset());

  test('message create', async () => {
    const { anthropic, actorId } = await newClient();

    const message = await anthropic.messages.create(REQUEST);

    assert.equal(message.content[0].type, 'text');
    assert.ok(message.content[0].type === 'text');
    assert.equal(message.content[0].text, DEFAULT_TEXT);
    assert.equal(message.usage.input_tokens, DEFAULT_ANTHROPIC_USAGE.input_tokens);
    assert.equal(message.usage.output_tokens, DEFAULT_ANTHROPIC_USAGE.output_tokens);
    assert.match(message._request_id ?? '', REQUEST_ID);
    const [event] = await gw.waitForEvents(actorId, 1);
    assert.equal(event.requestId, message._request_id);
    assert.equal(event.inputTokens, DEFAULT_ANTHROPIC_USAGE.input_tokens);
    assert.equal(event.outputTokens, DEFAULT_ANTHROPIC_USAGE.output_tokens);
  });

  test('message stream final message', async () => {
    const { anthropic, actorId } = await newClient();

    const message = await anthropic.messages.stream(REQUEST).finalMessage();

    assert.ok(message.content[0].type === 'text');
    assert.equal(message.content[0].text, DEFAULT_TEXT);
    assert.equal(message.stop_reason, 'end_turn');
    assert.equal(message.usage.input_tokens, DEFAULT_ANTHROPIC_USAGE.input_tokens);
    assert.equal(message.usage.output_tokens, DEFAULT_ANTHROPIC_USAGE.output_tokens);
    const [event] = await gw.waitForEvents(actorId, 1);
    assert.equal(event.outcome, 'completed');
    assert.equal(event.inputTokens, DEFAULT_ANTHROPIC_USAGE.input_tokens);
    assert.equal(event.outputTokens, DEFAULT_ANTHROPIC_USAGE.output_tokens);
    assert.equal(event.tokensEstimated, false);
  });

  test('raw stream events', async () => {
    const { anthropic } = await newClient();

    const stream = await anthropic.messages.create({ ...REQUEST, stream: true });
    const events = await collect(stream);

    let text = '';
    for (const event of events) {
      if (event.type === 'content_block_delta' && event.delta.type === 'text_delta') text += event.delta.text;
    }
    assert.equal(text, DEFAULT_TEXT);
    // The SDK drops `ping` events, so the stream shows only message and content events.
    assert.deepEqual(
      events.map((event) => event.type),
      ['message_start', 'content_block_start', ...textDeltas(DEFAULT_TEXT).map(() => 'content_block_delta'), 'content_block_stop', 'message_delta', 'message_stop'],
    );
  });

  test('tool use stream', async () => {
    const { anthropic, actorId } = await newClient();
    upstream.enqueue(sseResponse(toolUseStream()));
    const tools: Anthropic.Tool[] = [
      { name: 'get_weather', description: 'Current weather in a city', input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } },
    ];

    const message = await anthropic.messages.stream({ ...REQUEST, tools }).finalMessage();

    assert.equal(message.stop_reason, 'tool_use');
    assert.equal(message.content.length, 1);
    const block = message.content[0];
    assert.equal(block.type, 'tool_use');
    assert.ok(block.type === 'tool_use');
    assert.equal(block.id, 'toolu_weather_1');
    assert.equal(block.name, 'get_weather');
    assert.deepEqual(block.input, { city: 'Paris' });
    assert.equal(message.usage.output_tokens, TOOL_USAGE.output_tokens);
    const [event] = await gw.waitForEvents(actorId, 1);
    assert.equal(event.inputTokens, TOOL_USAGE.input_tokens);
    assert.equal(event.outputTokens, TOOL_USAGE.output_tokens);
  });

  test('stream with keep-alives and pings', async () => {
    const { anthropic, actorId } = await newClient();
    upstream.enqueue({ headers: { 'content-type': 'text/event-stream' }, chunks: streamWithKeepAlives() });

    const message = await anthropic.messages.stream(REQUEST).finalMessage();

    assert.ok(message.content[0].type === 'text');
    assert.equal(message.content[0].text, DEFAULT_TEXT);
    const [event] = await gw.waitForEvents(actorId, 1);
    assert.equal(event.outcome, 'completed');
    assert.equal(event.outputTokens, DEFAULT_ANTHROPIC_USAGE.output_tokens);
  });

  test('client abort cancels upstream', async () => {
    const { anthropic, actorId } = await newClient();
    const events = splitSseEvents(anthropicStream(DEFAULT_TEXT));
    // The upstream sends the first text delta, then stalls for 30 s, so only the abort can end the request.
    upstream.enqueue({ headers: { 'content-type': 'text/event-stream' }, chunks: [...events.slice(0, 4), { delayMs: 30_000 }, ...events.slice(4)] });

    const stream = anthropic.messages.stream(REQUEST);
    const firstText = await new Promise<string>((resolve) => stream.once('text', resolve));
    stream.abort();
    await assert.rejects(stream.finalMessage(), Anthropic.APIUserAbortError);

    assert.equal(firstText, 'Hello!');
    await upstream.waitForRequests(1);
    await upstream.waitForClose(upstream.requests[0]);
    const [event] = await gw.waitForEvents(actorId, 1);
    assert.equal(event.outcome, 'client_aborted');
    assert.equal(event.tokensEstimated, true);
  });

  test('authToken option', async () => {
    const actor = await gw.createActor();
    const sentAuthorization: (string | null)[] = [];
    const anthropic = new Anthropic({
      baseURL: gw.url,
      authToken: actor.token,
      maxRetries: 0,
      timeout: 10_000,
      fetch: async (url, init) => {
        sentAuthorization.push(new Headers(init?.headers).get('authorization'));
        return fetch(url, init);
      },
    });

    const message = await anthropic.messages.create(REQUEST);

    assert.equal(message.usage.output_tokens, DEFAULT_ANTHROPIC_USAGE.output_tokens);
    assert.deepEqual(sentAuthorization, [`Bearer ${actor.token}`]);
    const [event] = await gw.waitForEvents(actor.id, 1);
    assert.equal(event.actorId, actor.id);
  });

  test('unknown token', async () => {
    const anthropic = client(`llmp_${'A'.repeat(43)}`);

    const error = await rejection(anthropic.messages.create(REQUEST), Anthropic.AuthenticationError);

    assert.equal(error.status, 401);
    assert.equal(error.type, 'authentication_error');
    assert.equal(gatewayCode(error), 'invalid_token');
    assert.match(error.apiMessage ?? '', /not known to this gateway/);
    assert.match(error.requestID ?? '', REQUEST_ID);
  });

  test('disabled actor', async () => {
    const { anthropic, actorId } = await newClient();
    const patch = await fetch(`${gw.url}/-/admin/actors/${actorId}`, { method: 'PATCH', headers: gw.adminHeaders, body: JSON.stringify({ enabled: false }) });
    assert.equal(patch.status, 200);

    const error = await rejection(anthropic.messages.create(REQUEST), Anthropic.PermissionDeniedError);

    assert.equal(error.status, 403);
    assert.equal(error.type, 'permission_error');
    assert.equal(gatewayCode(error), 'actor_disabled');
    assert.ok(error.message.includes(actorId), error.message);
    assert.match(error.requestID ?? '', REQUEST_ID);
  });

  test('denied model', async () => {
    const { anthropic } = await newClient();

    const error = await rejection(anthropic.messages.create({ ...REQUEST, model: 'claude-denied' }), Anthropic.BadRequestError);

    assert.equal(error.status, 400);
    assert.equal(error.type, 'invalid_request_error');
    assert.equal(gatewayCode(error), 'model_not_allowed');
    assert.match(error.message, /"claude-denied"/);
    assert.match(error.requestID ?? '', REQUEST_ID);
    assert.equal(upstream.requests.length, 0);
  });

  test('unknown path', async () => {
    const { anthropic } = await newClient();

    const error = await rejection(anthropic.get('/v1/nope'), Anthropic.NotFoundError);

    assert.equal(error.status, 404);
    assert.equal(error.type, 'not_found_error');
    assert.equal(gatewayCode(error), 'not_found');
    assert.match(error.message, /\/v1\/nope/);
    assert.match(error.requestID ?? '', REQUEST_ID);
  });

  test('count tokens not served', async () => {
    const { anthropic } = await newClient();

    // The gateway has no /v1/messages/count_tokens route, so the SDK method fails with 404.
    const error = await rejection(anthropic.messages.countTokens({ model: MODEL, messages: MESSAGES }), Anthropic.NotFoundError);

    assert.equal(error.status, 404);
    assert.match(error.message, /\/v1\/messages\/count_tokens/);
    assert.equal(upstream.requests.length, 0);
  });

  test('rate limit exceeded', async () => {
    const { anthropic } = await newClient({ chat_completions: { limit: 1, interval: '1h', allowedModels: ['*'] } });
    await anthropic.messages.create(REQUEST);

    const error = await rejection(anthropic.messages.create(REQUEST), Anthropic.RateLimitError);

    assert.equal(error.status, 429);
    assert.equal(error.type, 'rate_limit_error');
    assert.equal(gatewayCode(error), 'rate_limited');
    assert.match(error.headers.get('retry-after') ?? '', /^[1-9]\d*$/);
    assert.match(error.requestID ?? '', REQUEST_ID);
  });

  test('upstream 429 becomes 503', async () => {
    const { anthropic } = await newClient();
    upstream.enqueue({
      status: 429,
      headers: { 'retry-after': '11' },
      body: { type: 'error', error: { type: 'rate_limit_error', message: 'Number of request tokens has exceeded your per-minute rate limit' } },
    });

    const error = await rejection(anthropic.messages.create(REQUEST), Anthropic.InternalServerError);

    assert.equal(error.status, 503);
    assert.ok(error instanceof Anthropic.ServiceUnavailableError);
    assert.equal(error.type, 'overloaded_error');
    assert.equal(gatewayCode(error), 'upstream_rate_limited');
    assert.match(error.message, /retry after 11 seconds/);
    assert.equal(error.headers.get('retry-after'), '11');
    assert.match(error.requestID ?? '', REQUEST_ID);
  });

  test('upstream overload relayed', async () => {
    const { anthropic } = await newClient();
    upstream.enqueue({
      status: 529,
      headers: { 'request-id': 'req_upstream_0001' },
      body: { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } },
    });

    const error = await rejection(anthropic.messages.create(REQUEST), Anthropic.OverloadedError);

    assert.equal(error.status, 529);
    assert.equal(error.type, 'overloaded_error');
    assert.equal(error.apiMessage, 'Overloaded');
    assert.match(error.requestID ?? '', REQUEST_ID);
    assert.equal(error.headers.get('upstream-request-id'), 'req_upstream_0001');
  });

  test('error event mid-stream', async () => {
    const { anthropic, actorId } = await newClient();
    upstream.enqueue(sseResponse(streamWithErrorEvent()));

    // SDK 1.x raises a plain APIError without a status for an `error` event, whatever its type.
    const error = await rejection(anthropic.messages.stream(REQUEST).finalMessage(), Anthropic.APIError);

    assert.equal(error.status, undefined);
    assert.equal(error instanceof Anthropic.InternalServerError, false);
    assert.equal(error.type, 'overloaded_error');
    assert.match(error.message, /Overloaded/);
    const [event] = await gw.waitForEvents(actorId, 1);
    assert.equal(event.outcome, 'upstream_error');
  });
});
