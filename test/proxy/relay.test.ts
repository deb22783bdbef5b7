/**
 * How the gateway relays upstream response bodies: flow control for slow clients, the cap on
 * error bodies, and the response to a provider 429 sent without waiting for its body. A real gateway in
 * front of a scripted upstream, both on 127.0.0.1.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { gzipSync } from 'node:zlib';
import { test } from 'node:test';
import { openaiChatStream, splitSseEvents } from '../helpers/upstream-server.ts';
import { bearer, eventFor, open, post, settle, useProxyTestBed } from './client.ts';

const SSE_HEADERS = { 'content-type': 'text/event-stream; charset=utf-8' };
const OPENAI_STREAM_REQUEST = { model: 'gpt-test', messages: [{ role: 'user', content: 'Hi' }], stream: true, stream_options: { include_usage: true } };
const OPENAI_REQUEST = { model: 'gpt-test', messages: [{ role: 'user', content: 'Hi' }] };

/** SSE comment lines of 64 KiB each, which clients and the usage tap skip. */
const PADDING_EVENT = `: ${'x'.repeat(64 * 1024 - 4)}\n\n`;
/**
 * 64 MiB of padding: far more than the socket buffers between upstream, gateway and client can
 * hold on loopback (a few MiB each), so the upstream can only finish if the gateway reads on.
 */
const PADDING_EVENTS = 1024;
/** The largest error body the gateway relays, in bytes. */
const MAX_ERROR_BODY = 1024 * 1024;

const bed = useProxyTestBed();

test('slow client pauses the upstream', async () => {
  const { agent, gateway, upstream } = bed;
  const actor = await gateway.createActor();
  const tail = splitSseEvents(openaiChatStream('done', { includeUsage: true }));
  upstream.enqueue({ headers: SSE_HEADERS, chunks: [...Array<string>(PADDING_EVENTS).fill(PADDING_EVENT), ...tail] });

  const response = await open(agent, `${gateway.url}/v1/chat/completions`, OPENAI_STREAM_REQUEST, { headers: bearer(actor.token), timeoutMs: 60_000 });
  assert.equal(response.statusCode, 200);
  // The client reads nothing for a while. A gateway that kept reading the upstream would let it
  // finish writing and hold the rest in memory.
  await settle(1_000);
  assert.equal(upstream.lastRequest?.finishedAt, undefined, 'the upstream finished writing while the client read nothing');

  const body = Buffer.from(await response.body.arrayBuffer());
  const expectedLength = PADDING_EVENTS * PADDING_EVENT.length + Buffer.byteLength(tail.join(''));
  assert.equal(body.length, expectedLength, 'bytes the client received');
  assert.ok(body.toString('utf8').endsWith('data: [DONE]\n\n'), 'the stream ends with [DONE]');

  const event = await eventFor(gateway, actor.id, 1, response);
  assert.equal(event.outcome, 'completed');
  assert.equal(event.tokensEstimated, false, 'tokens came from the usage chunk');
});

test('error body cut at 1 MiB', async () => {
  const { agent, gateway, upstream } = bed;
  const actor = await gateway.createActor();
  const message = 'a'.repeat(3 * MAX_ERROR_BODY);
  upstream.enqueue({ status: 500, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ error: { message } }) });

  const response = await post(agent, `${gateway.url}/v1/chat/completions`, OPENAI_REQUEST, { headers: bearer(actor.token) });

  assert.equal(response.status, 500);
  assert.equal(response.body.length, MAX_ERROR_BODY, 'bytes of the relayed error body');
  assert.equal(response.headers['content-length'], String(MAX_ERROR_BODY));
  assert.ok(response.body.toString('utf8').startsWith('{"error":{"message":"aaa'), 'the body starts as the upstream sent it');
  const event = await eventFor(gateway, actor.id, 1, response);
  assert.equal(event.outcome, 'upstream_error');
  assert.equal(event.upstreamStatus, 500);
});

test('gzip error body cut at 1 MiB', async () => {
  const { agent, gateway, upstream } = bed;
  const actor = await gateway.createActor();
  // Compressed, the body is a few KiB; decoded, it is three times the cut.
  const plain = JSON.stringify({ error: { message: 'b'.repeat(3 * MAX_ERROR_BODY) } });
  upstream.enqueue({ status: 500, headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' }, body: gzipSync(plain) });

  const response = await post(agent, `${gateway.url}/v1/chat/completions`, OPENAI_REQUEST, { headers: bearer(actor.token) });

  assert.equal(response.status, 500);
  assert.equal(response.headers['content-encoding'], undefined);
  assert.equal(response.body.length, MAX_ERROR_BODY, 'bytes of the relayed error body');
  assert.ok(response.body.equals(Buffer.from(plain.slice(0, MAX_ERROR_BODY))), 'the body is the start of the decoded upstream body');
});

test('provider 429 relayed before its body ends', async () => {
  const { agent, gateway, upstream } = bed;
  const actor = await gateway.createActor();
  // The body stalls for longer than the request may take.
  upstream.enqueue({ status: 429, headers: { 'content-type': 'application/json', 'retry-after': '7' }, chunks: ['{"error":', { delayMs: 5_000 }, '{}}'] });

  const started = performance.now();
  const response = await post(agent, `${gateway.url}/v1/chat/completions`, OPENAI_REQUEST, { headers: bearer(actor.token), timeoutMs: 3_000 });
  const elapsedMs = performance.now() - started;

  assert.equal(response.status, 503);
  assert.equal(response.headers['retry-after'], '7');
  assert.ok(elapsedMs < 2_000, `the gateway took ${elapsedMs.toFixed(0)} ms to answer`);
  assert.equal(JSON.parse(response.body.toString('utf8')).error.code, 'upstream_rate_limited');
  const event = await eventFor(gateway, actor.id, 1, response);
  assert.equal(event.outcome, 'upstream_error');
  assert.equal(event.upstreamStatus, 429);
});
