/**
 * The official `openai` SDK (v6) as a client of the gateway, against a scripted upstream on
 * 127.0.0.1. Checks that responses, streams and errors reach SDK callers in the form the SDK
 * parses, and that the gateway meters what the upstream reported.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { after, before, beforeEach, describe, test } from 'node:test';
import OpenAI from 'openai';
import { OPENAI_KEY, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import {
  DEFAULT_CREATED,
  DEFAULT_OPENAI_USAGE,
  DEFAULT_TEXT,
  UpstreamServer,
  embeddingVector,
  encodeEmbeddingBase64,
  openaiChatStream,
  splitBody,
  splitSseEvents,
  sseResponse,
} from '../helpers/upstream-server.ts';
import { collect, rejection } from './expect.ts';

const CHAT_MODEL = 'gpt-a';
const EMBEDDING_MODEL = 'text-embedding-a';
const ALLOWED_MODELS = ['gpt-a', 'gpt-b', EMBEDDING_MODEL];
const REQUEST_ID = /^req_[0-9a-f]{32}$/;
const MESSAGES: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Say hello' }];
const TOOL_USAGE = { prompt_tokens: 31, completion_tokens: 17, total_tokens: 48 };

let upstream: UpstreamServer;
let gw: TestGateway;

function client(apiKey: string, baseURL = gw.url): OpenAI {
  return new OpenAI({ baseURL: `${baseURL}/v1`, apiKey, maxRetries: 0, timeout: 10_000 });
}

async function newClient(limits?: Record<string, unknown>): Promise<{ openai: OpenAI; actorId: string }> {
  const actor = await gw.createActor(limits);
  return { openai: client(actor.token), actorId: actor.id };
}

function sseData(data: unknown): string {
  return `data: ${JSON.stringify(data)}\n\n`;
}

/**
 * Builds a tool call stream as OpenAI sends it with `include_usage`: the call's id and name first,
 * the arguments in two pieces, a finish chunk, then the usage chunk and `[DONE]`.
 */
function toolCallStream(): string {
  const base = { id: 'chatcmpl-tool0001', object: 'chat.completion.chunk', created: DEFAULT_CREATED, model: CHAT_MODEL, system_fingerprint: null };
  const chunk = (delta: object, finishReason: string | null) =>
    sseData({ ...base, choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }], usage: null });
  return [
    chunk({ role: 'assistant', content: null, tool_calls: [{ index: 0, id: 'call_weather_1', type: 'function', function: { name: 'get_weather', arguments: '' } }] }, null),
    chunk({ tool_calls: [{ index: 0, function: { arguments: '{"city":' } }] }, null),
    chunk({ tool_calls: [{ index: 0, function: { arguments: ' "Paris"}' } }] }, null),
    chunk({}, 'tool_calls'),
    sseData({ ...base, choices: [], usage: TOOL_USAGE }),
    'data: [DONE]\n\n',
  ].join('');
}

/** Returns a loopback port that nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error(`expected a TCP address, got ${String(address)}`);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return address.port;
}

describe('OpenAI SDK', { timeout: 60_000 }, () => {
  before(async () => {
    upstream = await UpstreamServer.start();
    gw = await startTestGateway(upstream, { LLM_PROXY_OPENAI_ALLOWED_MODELS: ALLOWED_MODELS.join(',') });
  });

  after(async () => {
    await gw?.close();
    await upstream?.close();
  });

  beforeEach(() => upstream.reset());

  test('chat completion', async () => {
    const { openai, actorId } = await newClient();

    const { data, request_id } = await openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES }).withResponse();

    assert.equal(data.choices[0].message.content, DEFAULT_TEXT);
    assert.equal(data.model, CHAT_MODEL);
    assert.deepEqual(data.usage, DEFAULT_OPENAI_USAGE);
    assert.match(request_id ?? '', REQUEST_ID);
    const [event] = await gw.waitForEvents(actorId, 1);
    assert.equal(event.requestId, request_id);
    assert.equal(event.inputTokens, DEFAULT_OPENAI_USAGE.prompt_tokens);
    assert.equal(event.outputTokens, DEFAULT_OPENAI_USAGE.completion_tokens);
  });

  test('chat stream hides injected usage', async () => {
    const { openai, actorId } = await newClient();

    const stream = await openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES, stream: true });
    const chunks = await collect(stream);

    assert.equal(chunks.map((chunk) => chunk.choices[0]?.delta.content ?? '').join(''), DEFAULT_TEXT);
    assert.deepEqual(chunks.filter((chunk) => Object.hasOwn(chunk, 'usage')), []);
    assert.deepEqual(chunks.filter((chunk) => chunk.choices.length === 0), []);
    assert.equal(chunks.at(-1)?.choices[0].finish_reason, 'stop');
    assert.deepEqual(upstream.lastRequest?.json.stream_options, { include_usage: true });
    const [event] = await gw.waitForEvents(actorId, 1);
    assert.equal(event.outcome, 'completed');
    assert.equal(event.inputTokens, DEFAULT_OPENAI_USAGE.prompt_tokens);
    assert.equal(event.outputTokens, DEFAULT_OPENAI_USAGE.completion_tokens);
    assert.equal(event.tokensEstimated, false);
  });

  test('chat stream split mid-character', async () => {
    const { openai } = await newClient();
    const text = 'Grüße aus Köln 👋 你好世界';
    const body = Buffer.from(openaiChatStream(text, { model: CHAT_MODEL, includeUsage: true }));
    upstream.enqueue({ headers: { 'content-type': 'text/event-stream' }, chunks: splitBody(body, { chunkSizes: [7] }) });

    const stream = await openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES, stream: true });
    const chunks = await collect(stream);

    assert.equal(chunks.map((chunk) => chunk.choices[0]?.delta.content ?? '').join(''), text);
    assert.deepEqual(chunks.filter((chunk) => Object.hasOwn(chunk, 'usage')), []);
  });

  test('chat stream with include_usage', async () => {
    const { openai } = await newClient();

    const stream = await openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES, stream: true, stream_options: { include_usage: true } });
    const chunks = await collect(stream);

    const last = chunks.at(-1);
    assert.deepEqual(last?.choices, []);
    assert.deepEqual(last?.usage, DEFAULT_OPENAI_USAGE);
    assert.equal(chunks.map((chunk) => chunk.choices[0]?.delta.content ?? '').join(''), DEFAULT_TEXT);
  });

  test('chat stream with tool call', async () => {
    const { openai, actorId } = await newClient();
    upstream.enqueue(sseResponse(toolCallStream()));
    const tools: OpenAI.Chat.ChatCompletionTool[] = [
      {
        type: 'function',
        function: { name: 'get_weather', description: 'Current weather in a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } },
      },
    ];

    const completion = await openai.chat.completions.stream({ model: CHAT_MODEL, messages: MESSAGES, tools }).finalChatCompletion();

    const choice = completion.choices[0];
    assert.equal(choice.finish_reason, 'tool_calls');
    assert.equal(choice.message.tool_calls?.length, 1);
    const call = choice.message.tool_calls?.[0];
    assert.equal(call?.id, 'call_weather_1');
    assert.equal(call?.type, 'function');
    assert.ok(call?.type === 'function');
    assert.equal(call.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.function.arguments), { city: 'Paris' });
    const [event] = await gw.waitForEvents(actorId, 1);
    assert.equal(event.inputTokens, TOOL_USAGE.prompt_tokens);
    assert.equal(event.outputTokens, TOOL_USAGE.completion_tokens);
    assert.equal(event.tokensEstimated, false);
  });

  test('embeddings as floats', async () => {
    const { openai, actorId } = await newClient();

    const result = await openai.embeddings.create({ model: EMBEDDING_MODEL, input: ['alpha beta', 'gamma'], encoding_format: 'float' });

    assert.equal(upstream.lastRequest?.json.encoding_format, 'float');
    assert.deepEqual(result.data[0].embedding, embeddingVector(0));
    assert.deepEqual(result.data[1].embedding, embeddingVector(1));
    assert.equal(result.usage.prompt_tokens, 3);
    const [event] = await gw.waitForEvents(actorId, 1);
    assert.equal(event.feature, 'embeddings');
    assert.equal(event.inputTokens, 3);
    assert.equal(event.tokensEstimated, false);
  });

  test('embeddings as base64', async () => {
    const { openai } = await newClient();

    const result = await openai.embeddings.create({ model: EMBEDDING_MODEL, input: 'alpha', encoding_format: 'base64' });

    assert.equal(upstream.lastRequest?.json.encoding_format, 'base64');
    assert.equal(result.data[0].embedding, encodeEmbeddingBase64(embeddingVector(0)) as unknown);
  });

  test('embeddings decoded by SDK', async () => {
    const { openai } = await newClient();

    // Without encoding_format the SDK requests base64 and decodes the floats itself.
    const result = await openai.embeddings.create({ model: EMBEDDING_MODEL, input: 'alpha' });

    assert.equal(upstream.lastRequest?.json.encoding_format, 'base64');
    assert.deepEqual(result.data[0].embedding, embeddingVector(0));
  });

  test('models list', async () => {
    const { openai } = await newClient();

    const page = await openai.models.list();

    assert.deepEqual(
      page.data.map((model) => model.id),
      ALLOWED_MODELS.toSorted(),
    );
    assert.deepEqual(
      page.data.map((model) => model.owned_by),
      ['openai', 'openai', 'openai'],
    );
  });

  test('unknown token', async () => {
    const openai = client(`llmp_${'A'.repeat(43)}`);

    const error = await rejection(openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES }), OpenAI.AuthenticationError);

    assert.equal(error.status, 401);
    assert.equal(error.code, 'invalid_token');
    assert.match(error.message, /not known to this gateway/);
    assert.match(error.requestID ?? '', REQUEST_ID);
    assert.equal(error.headers.get('x-request-id'), error.requestID);
  });

  test('disabled actor', async () => {
    const { openai, actorId } = await newClient();
    const patch = await fetch(`${gw.url}/-/admin/actors/${actorId}`, { method: 'PATCH', headers: gw.adminHeaders, body: JSON.stringify({ enabled: false }) });
    assert.equal(patch.status, 200);

    const error = await rejection(openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES }), OpenAI.PermissionDeniedError);

    assert.equal(error.status, 403);
    assert.equal(error.code, 'actor_disabled');
    assert.ok(error.message.includes(actorId), error.message);
    assert.match(error.requestID ?? '', REQUEST_ID);
  });

  test('denied model', async () => {
    const { openai } = await newClient();

    const error = await rejection(openai.chat.completions.create({ model: 'gpt-c', messages: MESSAGES }), OpenAI.BadRequestError);

    assert.equal(error.status, 400);
    assert.equal(error.code, 'model_not_allowed');
    assert.equal(error.param, 'model');
    assert.match(error.message, /"gpt-c"/);
    assert.match(error.requestID ?? '', REQUEST_ID);
    assert.equal(upstream.requests.length, 0);
  });

  test('unknown path', async () => {
    const { openai } = await newClient();

    const error = await rejection(openai.get('/nope'), OpenAI.NotFoundError);

    assert.equal(error.status, 404);
    assert.equal(error.code, 'not_found');
    assert.match(error.message, /\/v1\/nope/);
    assert.match(error.requestID ?? '', REQUEST_ID);
  });

  test('rate limit exceeded', async () => {
    const { openai } = await newClient({ chat_completions: { limit: 1, interval: '1h', allowedModels: ['*'] } });
    await openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES });

    const error = await rejection(openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES }), OpenAI.RateLimitError);

    assert.equal(error.status, 429);
    assert.equal(error.code, 'rate_limited');
    assert.match(error.message, /retry after \d+ seconds/);
    assert.match(error.headers.get('retry-after') ?? '', /^[1-9]\d*$/);
    assert.equal(error.headers.get('x-ratelimit-remaining'), '0');
    assert.match(error.requestID ?? '', REQUEST_ID);
  });

  test('upstream 429 becomes 503', async () => {
    const { openai } = await newClient();
    upstream.enqueue({
      status: 429,
      headers: { 'retry-after': '7' },
      body: { error: { message: 'Rate limit reached for requests', type: 'requests', param: null, code: 'rate_limit_exceeded' } },
    });

    const error = await rejection(openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES }), OpenAI.InternalServerError);

    assert.equal(error.status, 503);
    assert.equal(error.code, 'upstream_rate_limited');
    assert.match(error.message, /retry after 7 seconds/);
    assert.equal(error.headers.get('retry-after'), '7');
    assert.match(error.requestID ?? '', REQUEST_ID);
  });

  test('upstream error relayed', async () => {
    const { openai } = await newClient();
    upstream.enqueue({
      status: 400,
      headers: { 'x-request-id': 'req_upstream_0001' },
      body: { error: { message: "Invalid value for 'temperature'", type: 'invalid_request_error', param: 'temperature', code: 'invalid_value' } },
    });

    const error = await rejection(openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES }), OpenAI.BadRequestError);

    assert.equal(error.status, 400);
    assert.equal(error.code, 'invalid_value');
    assert.equal(error.param, 'temperature');
    assert.match(error.message, /Invalid value for 'temperature'/);
    assert.match(error.requestID ?? '', REQUEST_ID);
    assert.equal(error.headers.get('upstream-request-id'), 'req_upstream_0001');
  });

  test('upstream key redacted', async () => {
    const { openai } = await newClient();
    upstream.enqueue({
      status: 401,
      body: { error: { message: `Incorrect API key provided: ${OPENAI_KEY}.`, type: 'invalid_request_error', param: null, code: 'invalid_api_key' } },
    });

    const error = await rejection(openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES }), OpenAI.APIError);

    assert.equal(error.status, 401);
    assert.match(error.message, /Incorrect API key provided/);
    assert.equal(error.message.includes(OPENAI_KEY), false);
    assert.equal(JSON.stringify(error.error).includes(OPENAI_KEY), false);
  });

  test('unreachable upstream is 502', async () => {
    const port = await closedPort();
    const unreachable = await startTestGateway(undefined, {
      LLM_PROXY_OPENAI_API_KEY: OPENAI_KEY,
      LLM_PROXY_OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1`,
    });
    try {
      const actor = await unreachable.createActor();
      const openai = client(actor.token, unreachable.url);

      const error = await rejection(openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES }), OpenAI.InternalServerError);

      assert.equal(error.status, 502);
      assert.equal(error.code, 'upstream_unreachable');
      assert.match(error.message, /could not be reached/);
      assert.match(error.requestID ?? '', REQUEST_ID);
    } finally {
      await unreachable.close();
    }
  });

  test('error chunk mid-stream throws', async () => {
    const { openai, actorId } = await newClient();
    const events = splitSseEvents(openaiChatStream(DEFAULT_TEXT, { model: CHAT_MODEL, includeUsage: true }));
    const failure = sseData({ error: { message: 'The server had an error while processing your request.', type: 'server_error', param: null, code: null } });
    upstream.enqueue({ headers: { 'content-type': 'text/event-stream' }, chunks: [...events.slice(0, 3), failure] });

    const stream = await openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES, stream: true });
    const error = await rejection(collect(stream), OpenAI.APIError);

    assert.equal(error.status, undefined);
    assert.equal(error.type, 'server_error');
    assert.match(error.message, /The server had an error/);
    const [event] = await gw.waitForEvents(actorId, 1);
    assert.equal(event.outcome, 'upstream_error');
  });

  test('stream reset mid-way throws', async () => {
    const { openai, actorId } = await newClient();
    upstream.enqueue({ ...sseResponse(openaiChatStream(DEFAULT_TEXT, { model: CHAT_MODEL, includeUsage: true })), resetAfterChunks: 3 });

    const stream = await openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES, stream: true });
    let text = '';
    const consume = async () => {
      for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    };

    // The SDK does not wrap a broken body: Node's fetch raises its own TypeError.
    await assert.rejects(consume(), { name: 'TypeError', message: 'terminated' });
    assert.ok(DEFAULT_TEXT.startsWith(text), `received text ${JSON.stringify(text)}`);
    assert.notEqual(text, DEFAULT_TEXT);
    const [event] = await gw.waitForEvents(actorId, 1);
    assert.equal(event.outcome, 'upstream_error');
  });

  test('stream reset refunds quota', async () => {
    const { openai, actorId } = await newClient({ chat_completions: { limit: 1, interval: '1h', allowedModels: ['*'] } });
    upstream.enqueue({ ...sseResponse(openaiChatStream(DEFAULT_TEXT, { model: CHAT_MODEL, includeUsage: true })), resetAfterChunks: 3 });
    const stream = await openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES, stream: true });
    await assert.rejects(collect(stream));
    await gw.waitForEvents(actorId, 1);

    // The broken stream's unit is given back, so the single-request quota admits one more.
    const completion = await openai.chat.completions.create({ model: CHAT_MODEL, messages: MESSAGES });

    assert.equal(completion.choices[0].message.content, DEFAULT_TEXT);
  });
});
