import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { after, before, beforeEach, describe, test } from 'node:test';
import zlib from 'node:zlib';
import { Agent, request } from 'undici';
import type { Dispatcher } from 'undici';

import {
  FIXTURES_DIR_ENV,
  decodedBody,
  fixture,
  fixturesDir,
  fixtureUsage,
  loadFixtures,
} from './fixtures.ts';
import {
  DEFAULT_TEXT,
  UpstreamServer,
  anthropicCompletionStream,
  anthropicMessage,
  anthropicStream,
  embeddingVector,
  openaiChatCompletion,
  openaiChatStream,
  openaiCompletionStream,
  splitBody,
} from './upstream-server.ts';

// A dedicated agent, closed in after(), so that no client connection outlives the tests.
const agent = new Agent({ keepAliveTimeout: 1_000 });

async function post(
  server: UpstreamServer,
  path: string,
  json: unknown,
  extra: Omit<Partial<Dispatcher.RequestOptions>, 'origin' | 'path'> & { dispatcher?: Dispatcher } = {},
): Promise<Dispatcher.ResponseData> {
  return request(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(json),
    dispatcher: agent,
    ...extra,
  });
}

async function readAll(response: Dispatcher.ResponseData): Promise<Buffer> {
  return Buffer.from(await response.body.arrayBuffer());
}

function sseDataEvents(text: string): any[] {
  return text
    .split('\n\n')
    .filter((block) => block.startsWith('data: ') && block !== 'data: [DONE]')
    .map((block) => JSON.parse(block.slice('data: '.length)));
}

function restoreEnv(previous: string | undefined): void {
  if (previous === undefined) {
    delete process.env[FIXTURES_DIR_ENV];
  } else {
    process.env[FIXTURES_DIR_ENV] = previous;
  }
}

after(async () => {
  await agent.close();
});

describe('fixtures', () => {
  test('loads exchanges from both providers', () => {
    const all = loadFixtures();
    assert.ok(all.length > 60, `expected more than 60 exchanges, got ${all.length}`);
    assert.ok(all.some((ex) => ex.provider === 'anthropic'));
    assert.ok(all.some((ex) => ex.provider === 'openai'));

    const names = all.map((ex) => ex.name);
    assert.deepEqual(names, [...names].sort(), 'exchanges are sorted by name');
    assert.equal(new Set(names).size, names.length, 'names are unique');
  });

  test('gzip bodies stay compressed', () => {
    const gzipped = loadFixtures().filter((ex) => ex.contentEncoding === 'gzip');
    assert.ok(gzipped.length >= 5, `expected several gzip exchanges, got ${gzipped.length}`);
    for (const ex of gzipped) {
      assert.ok(Buffer.isBuffer(ex.body), `${ex.name} body is a Buffer`);
      assert.equal(ex.body[0], 0x1f, `${ex.name} first byte`);
      assert.equal(ex.body[1], 0x8b, `${ex.name} second byte`);
      assert.doesNotThrow(() => zlib.gunzipSync(ex.body), `${ex.name} decompresses`);
    }
  });

  test('framing headers are removed', () => {
    for (const ex of loadFixtures()) {
      const lowerNames = Object.keys(ex.headers).map((name) => name.toLowerCase());
      assert.ok(!lowerNames.includes('content-length'), `${ex.name} has no Content-Length`);
      assert.ok(!lowerNames.includes('transfer-encoding'), `${ex.name} has no Transfer-Encoding`);
      assert.ok(!lowerNames.includes('connection'), `${ex.name} has no Connection`);
    }
  });

  test('exchange fields of a known stream', () => {
    const ex = fixture('test_stream_events_text.yaml#0');
    assert.equal(ex.provider, 'anthropic');
    assert.equal(ex.file, 'anthropic/test_stream_events_text.yaml');
    assert.equal(ex.index, 0);
    assert.equal(ex.method, 'POST');
    assert.equal(ex.path, '/v1/messages');
    assert.equal(ex.stream, true);
    assert.equal(ex.status, 200);
    assert.equal(ex.requestJson.model, 'claude-haiku-4-5-20251001');
    assert.equal(ex.contentEncoding, undefined);
    assert.ok(ex.body.toString('utf8').startsWith('event: message_start\n'));
  });

  test('OpenAI exchanges keep recorded bytes', () => {
    const ex = fixture('chat-streaming.yaml#0');
    assert.equal(ex.path, '/v1/chat/completions');
    assert.equal(ex.stream, true);
    // go-vcr records the body length, which must match the parsed YAML block exactly.
    assert.equal(ex.body.length, 14452);
    assert.ok(ex.body.toString('utf8').endsWith('data: [DONE]\n\n'));

    const embeddings = fixture('embeddings-basic.yaml#0');
    assert.equal(embeddings.path, '/v1/embeddings');
    assert.equal(embeddings.stream, false);
  });

  test('returned exchanges are copies', () => {
    const first = fixture('chat-basic.yaml#0');
    first.body.fill(0);
    first.headers['X-Test'] = ['changed'];
    const second = fixture('chat-basic.yaml#0');
    assert.notEqual(second.body[0], 0);
    assert.equal(second.headers['X-Test'], undefined);
  });

  test('env var overrides the directory', () => {
    const defaultCount = loadFixtures().length;
    const previous = process.env[FIXTURES_DIR_ENV];
    process.env[FIXTURES_DIR_ENV] = fixturesDir();
    try {
      assert.equal(loadFixtures().length, defaultCount);
    } finally {
      restoreEnv(previous);
    }
  });

  test('missing directory names path and env var', () => {
    const previous = process.env[FIXTURES_DIR_ENV];
    process.env[FIXTURES_DIR_ENV] = '/nonexistent/llm-proxy-fixtures';
    try {
      assert.throws(() => loadFixtures(), (error: Error) => {
        assert.match(error.message, /\/nonexistent\/llm-proxy-fixtures/);
        assert.match(error.message, new RegExp(FIXTURES_DIR_ENV));
        return true;
      });
    } finally {
      restoreEnv(previous);
    }
  });
});

describe('fixtureUsage', () => {
  const zeroExtras = { cacheCreationInputTokens: 0, cacheReadInputTokens: 0, reasoningTokens: 0 };

  test('Anthropic plain stream', () => {
    assert.deepEqual(fixtureUsage(fixture('test_stream_events_text.yaml#0')), {
      inputTokens: 10,
      outputTokens: 4,
      ...zeroExtras,
    });
  });

  test('Anthropic gzip stream', () => {
    assert.deepEqual(fixtureUsage(fixture('test_tools.yaml#1')), { inputTokens: 678, outputTokens: 82, ...zeroExtras });
  });

  test('Anthropic message_delta overrides input', () => {
    // Server-side web search adds the fetched pages to the input after message_start.
    assert.deepEqual(fixtureUsage(fixture('test_web_search.yaml#0')), { inputTokens: 10423, outputTokens: 341, ...zeroExtras });
  });

  test('Anthropic thinking tokens', () => {
    const usage = fixtureUsage(fixture('test_fixed_version_tool_chain_with_thinking_display_regression.yaml#0'));
    assert.equal(usage?.outputTokens, 92);
    assert.equal(usage?.reasoningTokens, 53);
  });

  test('Anthropic HEAD request has none', () => {
    const head = loadFixtures().find((ex) => ex.method === 'HEAD');
    assert.ok(head, 'test_url_prompt.yaml contains HEAD requests for the image URL');
    assert.equal(fixtureUsage(head), undefined);
  });

  test('OpenAI chat JSON', () => {
    const ex = fixture('chat-basic.yaml#0');
    const usage = JSON.parse(ex.body.toString('utf8')).usage;
    assert.deepEqual(fixtureUsage(ex), {
      inputTokens: usage.prompt_tokens,
      outputTokens: usage.completion_tokens,
      cacheCreationInputTokens: 0,
      cacheReadInputTokens: usage.prompt_tokens_details.cached_tokens,
      reasoningTokens: usage.completion_tokens_details.reasoning_tokens,
    });
  });

  test('OpenAI stream with include_usage', () => {
    assert.deepEqual(fixtureUsage(fixture('chat-streaming-detailed-usage.yaml#0')), {
      inputTokens: 12,
      outputTokens: 100,
      cacheCreationInputTokens: 0,
      cacheReadInputTokens: 0,
      reasoningTokens: 100,
    });
    assert.deepEqual(fixtureUsage(fixture('completion-streaming-usage.yaml#0')), {
      inputTokens: 31,
      outputTokens: 25,
      ...zeroExtras,
    });
  });

  test('OpenAI stream without usage', () => {
    assert.equal(fixtureUsage(fixture('chat-streaming.yaml#0')), undefined);
    assert.equal(fixtureUsage(fixture('completion-streaming.yaml#0')), undefined);
  });

  test('OpenAI embeddings', () => {
    const ex = fixture('embeddings-basic.yaml#0');
    const usage = fixtureUsage(ex);
    assert.equal(usage?.inputTokens, JSON.parse(ex.body.toString('utf8')).usage.prompt_tokens);
    assert.equal(usage?.outputTokens, 0);
  });

  test('error bodies have none', () => {
    for (const name of ['chat-bad-request.yaml#0', 'chat-unknown-model.yaml#0', 'embeddings-bad-request.yaml#0']) {
      assert.equal(fixtureUsage(fixture(name)), undefined, name);
    }
  });

  test('recorded 200 responses parse', () => {
    for (const ex of loadFixtures()) {
      if (ex.status === 200 && ex.method === 'POST') {
        assert.doesNotThrow(() => fixtureUsage(ex), ex.name);
      }
    }
  });
});

describe('UpstreamServer', () => {
  let server: UpstreamServer;

  before(async () => {
    server = await UpstreamServer.start();
  });

  after(async () => {
    await server.close();
  });

  beforeEach(() => {
    server.reset();
  });

  test('url is loopback with a port', () => {
    assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  });

  test('records method, url, headers and body', async () => {
    const response = await post(server, '/v1/messages?beta=true', { model: 'claude-x', messages: [] }, {
      headers: { 'content-type': 'application/json', 'x-api-key': 'test-key' },
    });
    await readAll(response);

    assert.equal(server.requests.length, 1);
    const recorded = server.requests[0];
    assert.equal(recorded.method, 'POST');
    assert.equal(recorded.url, '/v1/messages?beta=true');
    assert.equal(recorded.headers['x-api-key'], 'test-key');
    assert.ok(recorded.rawHeaders.includes('x-api-key'));
    assert.deepEqual(recorded.json, { model: 'claude-x', messages: [] });
    assert.equal(recorded.body.toString('utf8'), JSON.stringify({ model: 'claude-x', messages: [] }));
    assert.equal(recorded.bodyComplete, true);
    assert.ok(recorded.finishedAt !== undefined, 'response finished');
    assert.ok(recorded.finishedAt >= recorded.receivedAt, 'finishedAt is after receivedAt');
  });

  test('Anthropic message JSON', async () => {
    const response = await post(server, '/v1/messages', { model: 'claude-x', max_tokens: 10, messages: [] });
    assert.equal(response.statusCode, 200);
    assert.equal(response.headers['content-type'], 'application/json');
    const body = await response.body.json();
    assert.deepEqual(body, anthropicMessage(DEFAULT_TEXT, { input_tokens: 10, output_tokens: 5 }, { model: 'claude-x' }));
  });

  test('Anthropic message stream bytes', async () => {
    const response = await post(server, '/v1/messages', { model: 'claude-x', stream: true, messages: [] });
    assert.equal(response.statusCode, 200);
    assert.equal(response.headers['content-type'], 'text/event-stream; charset=utf-8');
    const text = (await readAll(response)).toString('utf8');
    assert.equal(text, anthropicStream(DEFAULT_TEXT, { input_tokens: 10, output_tokens: 5 }, { model: 'claude-x' }));

    const eventNames = [...text.matchAll(/^event: (\S+)$/gm)].map((match) => match[1]);
    assert.deepEqual(
      [...new Set(eventNames)],
      ['message_start', 'content_block_start', 'ping', 'content_block_delta', 'content_block_stop', 'message_delta', 'message_stop'],
    );
    const deltas = [...text.matchAll(/"text_delta","text":("(?:[^"\\]|\\.)*")/g)].map((match) => JSON.parse(match[1]));
    assert.equal(deltas.join(''), DEFAULT_TEXT);
  });

  test('Anthropic legacy completion', async () => {
    const json = await (await post(server, '/v1/complete', { model: 'claude-2.1', prompt: '\n\nHuman: hi\n\nAssistant:' })).body.json();
    assert.deepEqual(json, {
      type: 'completion',
      id: 'compl_upstream_test_0001',
      completion: ' Hello',
      stop_reason: 'stop_sequence',
      model: 'claude-2.1',
    });

    const stream = await post(server, '/v1/complete', { model: 'claude-2.1', prompt: 'x', stream: true });
    const text = (await readAll(stream)).toString('utf8');
    assert.equal(text, anthropicCompletionStream(' Hello', { model: 'claude-2.1' }));
    assert.ok(text.includes('"stop_reason":"stop_sequence"'));
  });

  test('OpenAI chat JSON with base path', async () => {
    const response = await post(server, '/proxy/base/v1/chat/completions', { model: 'gpt-x', messages: [] });
    const json: any = await response.body.json();
    assert.deepEqual(json, openaiChatCompletion(DEFAULT_TEXT, { model: 'gpt-x' }));
    assert.deepEqual(json.usage, { prompt_tokens: 9, completion_tokens: 12, total_tokens: 21 });
  });

  test('OpenAI chat stream without usage', async () => {
    const response = await post(server, '/v1/chat/completions', { model: 'gpt-x', stream: true, messages: [] });
    const text = (await readAll(response)).toString('utf8');
    assert.equal(text, openaiChatStream(DEFAULT_TEXT, { model: 'gpt-x' }));
    assert.ok(text.endsWith('data: [DONE]\n\n'));
    for (const chunk of sseDataEvents(text)) {
      assert.equal('usage' in chunk, false);
    }
  });

  test('OpenAI chat stream include_usage', async () => {
    const response = await post(server, '/v1/chat/completions', {
      model: 'gpt-x',
      stream: true,
      stream_options: { include_usage: true },
      messages: [],
    });
    const text = (await readAll(response)).toString('utf8');
    assert.equal(text, openaiChatStream(DEFAULT_TEXT, { model: 'gpt-x', includeUsage: true }));

    const chunks = sseDataEvents(text);
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.deepEqual(last.usage, { prompt_tokens: 9, completion_tokens: 12, total_tokens: 21 });
    for (const chunk of chunks.slice(0, -1)) {
      assert.equal(chunk.usage, null);
      assert.equal(chunk.choices.length, 1);
    }
    assert.ok(text.endsWith('data: [DONE]\n\n'));
  });

  test('OpenAI legacy completion stream', async () => {
    const response = await post(server, '/v1/completions', {
      model: 'babbage-002',
      prompt: 'x',
      stream: true,
      stream_options: { include_usage: true },
    });
    const text = (await readAll(response)).toString('utf8');
    assert.equal(text, openaiCompletionStream(DEFAULT_TEXT, { model: 'babbage-002', includeUsage: true }));
    assert.equal(sseDataEvents(text).at(-1).usage.total_tokens, 21);

    const json: any = await (await post(server, '/v1/completions', { model: 'babbage-002', prompt: 'x' })).body.json();
    assert.equal(json.object, 'text_completion');
    assert.equal(json.choices[0].text, DEFAULT_TEXT);
  });

  test('embeddings float batch', async () => {
    const response = await post(server, '/v1/embeddings', { model: 'emb', input: ['one two three', '', 'four'] });
    const json: any = await response.body.json();
    assert.equal(json.object, 'list');
    assert.equal(json.data.length, 3);
    assert.deepEqual(json.data.map((item: any) => item.index), [0, 1, 2]);
    assert.deepEqual(json.data[1].embedding, embeddingVector(1));
    // Token counts are words per input with a minimum of 1: 3 + 1 + 1.
    assert.deepEqual(json.usage, { prompt_tokens: 5, total_tokens: 5 });
  });

  test('embeddings base64 and token input', async () => {
    const response = await post(server, '/v1/embeddings', {
      model: 'emb',
      input: [1, 2, 3, 4],
      encoding_format: 'base64',
      dimensions: 4,
    });
    const json: any = await response.body.json();
    assert.equal(json.data.length, 1);
    const bytes = Buffer.from(json.data[0].embedding, 'base64');
    assert.equal(bytes.length, 16);
    const decoded = Array.from({ length: 4 }, (_, i) => bytes.readFloatLE(i * 4));
    assert.deepEqual(decoded, embeddingVector(0, 4));
    assert.equal(json.usage.prompt_tokens, 4);
  });

  test('embeddings invalid input is 400', async () => {
    const response = await post(server, '/v1/embeddings', { model: 'emb', input: [] });
    assert.equal(response.statusCode, 400);
    await readAll(response);
  });

  test('unknown path is 404 JSON', async () => {
    const response = await post(server, '/v1/unknown', {});
    assert.equal(response.statusCode, 404);
    const json: any = await response.body.json();
    assert.equal(json.error.type, 'not_found_error');
  });

  test('queue is FIFO before the default', async () => {
    server.enqueue({ status: 201, body: 'first' }, (req) => ({ status: 202, body: { echo: req.json.n } }));

    const first = await post(server, '/anything', { n: 1 });
    assert.equal(first.statusCode, 201);
    assert.equal((await readAll(first)).toString(), 'first');

    const second = await post(server, '/anything', { n: 2 });
    assert.equal(second.statusCode, 202);
    assert.equal(second.headers['content-type'], 'application/json');
    assert.deepEqual(await second.body.json(), { echo: 2 });

    const third = await post(server, '/anything', { n: 3 });
    assert.equal(third.statusCode, 404);
    await readAll(third);
    assert.equal(server.queued(), 0);
  });

  test('throwing handler returns 500', async () => {
    server.enqueue(() => {
      throw new Error('handler failed');
    });
    const response = await post(server, '/v1/messages', {});
    assert.equal(response.statusCode, 500);
    assert.match((await readAll(response)).toString(), /handler failed/);
  });

  test('setDefault replaces the generator', async () => {
    const other = await UpstreamServer.start();
    try {
      other.setDefault((req) => ({ status: 418, body: `teapot ${req.url}` }));
      const response = await post(other, '/v1/messages', {});
      assert.equal(response.statusCode, 418);
      assert.equal((await readAll(response)).toString(), 'teapot /v1/messages');
    } finally {
      await other.close();
    }
  });

  test('delayed chunks arrive in separate reads', async () => {
    server.enqueue({
      headers: { 'content-type': 'text/plain' },
      chunks: ['alpha', { delayMs: 150 }, 'beta', { delayMs: 150 }, 'gamma'],
    });
    const response = await post(server, '/chunks', {});
    assert.equal(response.headers['transfer-encoding'], 'chunked');

    const reads: { text: string; at: number }[] = [];
    for await (const chunk of response.body) {
      reads.push({ text: Buffer.from(chunk).toString('utf8'), at: performance.now() });
    }
    assert.deepEqual(reads.map((read) => read.text), ['alpha', 'beta', 'gamma']);
    // The bound is half the scripted delay, because a busy event loop can postpone the first read.
    assert.ok(reads[1].at - reads[0].at >= 75, `second read came ${reads[1].at - reads[0].at} ms after the first`);
    assert.ok(reads[2].at - reads[1].at >= 75, `third read came ${reads[2].at - reads[1].at} ms after the second`);
  });

  test('delayBeforeHeadersMs delays the status line', async () => {
    server.enqueue({ delayBeforeHeadersMs: 120, body: 'late' });
    const start = performance.now();
    const response = await post(server, '/late', {});
    const elapsed = performance.now() - start;
    assert.ok(elapsed >= 100, `headers arrived after ${elapsed} ms`);
    assert.equal((await readAll(response)).toString(), 'late');
  });

  test('resetAfterChunks cuts the body', async () => {
    server.enqueue({ chunks: ['first', { delayMs: 20 }, 'second', 'never'], resetAfterChunks: 2 });
    const response = await post(server, '/reset', {});
    assert.equal(response.statusCode, 200);

    const received: string[] = [];
    await assert.rejects(async () => {
      for await (const chunk of response.body) {
        received.push(Buffer.from(chunk).toString('utf8'));
      }
    });
    assert.equal(received.join(''), 'firstsecond');
    const recorded = server.requests[0];
    await server.waitForClose(recorded, 1_000);
    assert.equal(recorded.finishedAt, undefined);
  });

  test('resetAfterChunks with RST', async () => {
    server.enqueue({ chunks: ['only', { delayMs: 20 }, 'never'], resetAfterChunks: 1, resetWithRst: true });
    const response = await post(server, '/rst', {});
    await assert.rejects(readAll(response));
  });

  test('resetImmediately fails the request', async () => {
    server.enqueue({ resetImmediately: true });
    const freshAgent = new Agent();
    try {
      await assert.rejects(post(server, '/v1/messages', { model: 'x' }, { dispatcher: freshAgent }));
    } finally {
      await freshAgent.close();
    }
    assert.equal(server.requests.length, 1);
    assert.deepEqual(server.requests[0].json, { model: 'x' });
  });

  // These tests allow 500 ms between abort and close. Alone they take under 10 ms, but client and
  // server share one event loop, which parallel test files on a loaded machine can stall.
  test('client abort closes the socket', async () => {
    server.enqueue({ noResponse: true });
    const controller = new AbortController();
    const pending = post(server, '/v1/messages', { stream: true }, { signal: controller.signal });
    await server.waitForRequests(1, 2_000);
    const recorded = server.requests[0];
    assert.equal(recorded.closedAt, undefined);
    assert.equal(server.inFlight(), 1);

    const abortedAt = performance.now();
    controller.abort();
    await assert.rejects(pending);
    const closedAt = await server.waitForClose(recorded, 1_000);
    assert.ok(closedAt - abortedAt < 500, `socket closed ${closedAt - abortedAt} ms after abort`);
    assert.equal(recorded.finishedAt, undefined);
    assert.equal(server.inFlight(), 0);
  });

  test('abort mid-stream stops the writes', async () => {
    server.enqueue({ chunks: ['data: 1\n\n', { delayMs: 2_000 }, 'data: 2\n\n'] });
    const controller = new AbortController();
    const response = await post(server, '/stream', {}, { signal: controller.signal });
    const iterator = response.body[Symbol.asyncIterator]();
    const first = await iterator.next();
    assert.equal(Buffer.from(first.value).toString(), 'data: 1\n\n');

    const abortedAt = performance.now();
    controller.abort();
    const closedAt = await server.waitForClose(server.requests[0], 1_000);
    assert.ok(closedAt - abortedAt < 500, `socket closed ${closedAt - abortedAt} ms after abort`);
    await assert.rejects(iterator.next());
  });

  test('maxInFlight counts concurrent requests', async () => {
    for (let i = 0; i < 3; i++) {
      server.enqueue({ delayBeforeHeadersMs: 100, body: `r${i}` });
    }
    const responses = await Promise.all([0, 1, 2].map((i) => post(server, `/c${i}`, {})));
    const bodies = await Promise.all(responses.map(async (response) => (await readAll(response)).toString()));
    assert.deepEqual([...bodies].sort(), ['r0', 'r1', 'r2']);
    assert.equal(server.maxInFlight, 3);
    assert.equal(server.inFlight(), 0);
  });

  test('waitForRequests times out', async () => {
    await assert.rejects(server.waitForRequests(1, 50), /Timed out after 50 ms waiting for 1 upstream requests, received 0/);
  });

  test('replay sends recorded gzip bytes', async () => {
    const ex = fixture('test_tools.yaml#0');
    server.replay(ex);
    const response = await post(server, '/v1/messages', ex.requestJson);
    assert.equal(response.statusCode, 200);
    assert.equal(response.headers['content-encoding'], 'gzip');
    assert.equal(response.headers['content-length'], String(ex.body.length));
    assert.equal(response.headers['request-id'], 'req_011CZkTfmdQovVWg8SG5f6Lq');
    const body = await readAll(response);
    assert.ok(body.equals(ex.body));
    assert.ok(zlib.gunzipSync(body).equals(decodedBody(ex)));
  });

  test('replay in chunks keeps bytes', async () => {
    const ex = fixture('test_stream_events_text.yaml#0');
    server.replay(ex, { chunkSizes: [7, 1, 50] });
    const response = await post(server, '/v1/messages', ex.requestJson);
    assert.equal(response.headers['transfer-encoding'], 'chunked');
    assert.equal(response.headers['content-length'], undefined);
    assert.ok((await readAll(response)).equals(ex.body));

    server.replay(ex, { splitAt: [10, 11, 500], delayBetweenChunksMs: 5 });
    const split = await post(server, '/v1/messages', ex.requestJson);
    assert.ok((await readAll(split)).equals(ex.body));
  });

  test('replay of error fixture', async () => {
    const ex = fixture('chat-unknown-model.yaml#0');
    server.replay(ex);
    const response = await post(server, '/v1/chat/completions', ex.requestJson);
    assert.equal(response.statusCode, 404);
    assert.ok((await readAll(response)).equals(ex.body));
  });

  test('splitBody chunkSizes and splitAt', () => {
    const body = Buffer.from('abcdefghij');
    assert.deepEqual(splitBody(body, { chunkSizes: [3, 2] }).map(String), ['abc', 'de', 'fg', 'hi', 'j']);
    assert.deepEqual(splitBody(body, { splitAt: [0, 4, 4, 10] }).map(String), ['abcd', 'efghij']);
    assert.throws(() => splitBody(body, { chunkSizes: [0] }), /positive integers/);
    assert.throws(() => splitBody(body, { splitAt: [5, 2] }), /ascending/);
  });

  test('reset clears queue and requests', async () => {
    server.enqueue({ body: 'queued' });
    await readAll(await post(server, '/v1/unknown', {}));
    server.enqueue({ body: 'left over' });
    assert.equal(server.requests.length, 1);

    server.reset();
    assert.equal(server.requests.length, 0);
    assert.equal(server.queued(), 0);
  });
});

describe('UpstreamServer close', () => {
  test('close ends hanging connections', async () => {
    const server = await UpstreamServer.start();
    server.enqueue({ noResponse: true });
    const socket = net.connect(Number(new URL(server.url).port), '127.0.0.1');
    await once(socket, 'connect');
    socket.write('POST /hang HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\n{}');
    await server.waitForRequests(1, 2_000);

    const closed = once(socket, 'close');
    await server.close();
    await closed;
    assert.ok(server.requests[0].closedAt !== undefined);
  });
});
