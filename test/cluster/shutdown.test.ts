/**
 * Graceful shutdown of a gateway process on SIGTERM: it stops accepting connections at once,
 * lets in-flight streams finish within LLM_PROXY_SHUTDOWN_GRACE, cuts those that run longer,
 * records a usage event for every request and exits with code 0. The replica uses SQLite, so
 * its usage events are read from the database file after the process has exited.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { performance } from 'node:perf_hooks';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { openSqliteStore } from '../../src/storage/sqlite.ts';
import type { UsageEvent } from '../../src/usage/event.ts';
import { anthropicStream, splitSseEvents, UpstreamServer, type ScriptedChunk, type ScriptedResponse } from '../helpers/upstream-server.ts';
import { createActor } from './client.ts';
import { upstreamEnv, useReplicaSet, type ProcessExit, type Replica } from './replicas.ts';

const STREAM_TEXT = 'One two three four five six seven eight.';
const USAGE = { input_tokens: 11, output_tokens: 8 };
const EXPECTED_STREAM = anthropicStream(STREAM_TEXT, USAGE);
const STREAMS = 3;
/** How long after SIGTERM a connection attempt must be refused. */
const REFUSE_WITHIN_MS = 1000;
const CONNECT_RETRY_MS = 20;
const EXIT_TIMEOUT_MS = 15_000;
/** Grace period of the prompt-exit test: long enough to tell an exit after the stream from one at the deadline. */
const SHORT_GRACE_MS = 3000;
/** Once no request is in flight, the process must exit within this time. */
const PROMPT_EXIT_MS = 1000;

/** Builds a response that sends EXPECTED_STREAM one event at a time, `gapMs` apart. */
function pacedStream(gapMs: number): ScriptedResponse {
  const chunks: ScriptedChunk[] = [];
  for (const event of splitSseEvents(EXPECTED_STREAM)) {
    if (chunks.length > 0) chunks.push({ delayMs: gapMs });
    chunks.push(event);
  }
  return { headers: { 'content-type': 'text/event-stream' }, chunks };
}

interface StreamRead {
  text: string;
  /** The error that ended the body early, if any. */
  error: unknown;
  /** `performance.now()` when the body ended or failed. */
  endedAt: number;
}

/** Starts a streaming Messages request and resolves once the response headers have arrived. */
async function openStream(url: string, token: string): Promise<{ status: number; body: Promise<StreamRead> }> {
  const response = await fetch(`${url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': token, 'anthropic-version': '2023-06-01' },
    body: JSON.stringify({ model: 'claude-test', max_tokens: 64, stream: true, messages: [{ role: 'user', content: 'Count to eight.' }] }),
    signal: AbortSignal.timeout(EXIT_TIMEOUT_MS),
  });
  const body = (async (): Promise<StreamRead> => {
    const decoder = new TextDecoder();
    let text = '';
    try {
      for await (const chunk of response.body as AsyncIterable<Uint8Array>) text += decoder.decode(chunk, { stream: true });
      return { text, error: undefined, endedAt: performance.now() };
    } catch (error) {
      return { text, error, endedAt: performance.now() };
    }
  })();
  return { status: response.status, body };
}

/** Opens a TCP connection and returns `connected`, or the error code of the failed attempt. */
function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.setTimeout(1000, () => {
      socket.destroy();
      resolve('timeout');
    });
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

/** Retries a connection every 20 ms until it is refused; returns the time from `since` to the refusal, or undefined. */
async function waitUntilRefused(port: number, since: number): Promise<number | undefined> {
  while (performance.now() - since < REFUSE_WITHIN_MS) {
    if ((await tryConnect(port)) === 'ECONNREFUSED') return performance.now() - since;
    await sleep(CONNECT_RETRY_MS);
  }
  return undefined;
}

async function waitForExit(replica: Replica): Promise<ProcessExit | undefined> {
  return Promise.race([replica.exited, sleep(EXIT_TIMEOUT_MS, undefined, { ref: false })]);
}

/** Reads the usage events of an actor from the SQLite database of an exited replica. */
async function storedEvents(replica: Replica, actorId: string): Promise<UsageEvent[]> {
  const store = openSqliteStore(replica.dataDir);
  try {
    return await store.queryEvents({ actorId, limit: 100 });
  } finally {
    await store.close();
  }
}

describe('graceful shutdown on SIGTERM', () => {
  const replicas = useReplicaSet();

  it('finishes in-flight streams and refuses new connections', async (t) => {
    const upstream = await UpstreamServer.start();
    t.after(() => upstream.close());
    upstream.setDefault(() => pacedStream(200));
    const [replica] = await replicas.start(1, { ...upstreamEnv(upstream), LLM_PROXY_SHUTDOWN_GRACE: '5s' });
    const actor = await createActor(replica.url, { chat_completions: { limit: 100, interval: '1h', allowedModels: ['*'] } });

    const streams = await Promise.all(Array.from({ length: STREAMS }, () => openStream(replica.url, actor.token)));
    for (const stream of streams) assert.equal(stream.status, 200);
    const signalledAt = performance.now();
    replica.kill('SIGTERM');
    const refusedAfterMs = await waitUntilRefused(replica.port, signalledAt);
    const reads = await Promise.all(streams.map((stream) => stream.body));
    const exit = await waitForExit(replica);

    assert.ok(refusedAfterMs !== undefined, `a connection was still accepted ${REFUSE_WITHIN_MS} ms after SIGTERM`);
    for (const read of reads) {
      assert.ok(read.endedAt > signalledAt + refusedAfterMs, 'the stream was still running when connections were refused');
      assert.equal(read.error, undefined);
      assert.equal(read.text, EXPECTED_STREAM);
    }
    assert.deepEqual(exit, { code: 0, signal: null }, `exit within ${EXIT_TIMEOUT_MS} ms`);
    const lastStreamEnd = Math.max(...reads.map((read) => read.endedAt));
    t.diagnostic(`refused connections ${Math.round(refusedAfterMs)} ms after SIGTERM; streams ended ${Math.round(lastStreamEnd - signalledAt)} ms after it; exited ${Math.round(performance.now() - signalledAt)} ms after it`);

    const events = await storedEvents(replica, actor.id);
    assert.equal(events.length, STREAMS);
    for (const event of events) {
      assert.equal(event.outcome, 'completed');
      assert.equal(event.status, 200);
      assert.equal(event.stream, true);
      assert.equal(event.inputTokens, USAGE.input_tokens);
      assert.equal(event.outputTokens, USAGE.output_tokens);
    }
  });

  it('exits once the last stream has ended', async (t) => {
    const upstream = await UpstreamServer.start();
    t.after(() => upstream.close());
    upstream.setDefault(() => pacedStream(100));
    const [replica] = await replicas.start(1, { ...upstreamEnv(upstream), LLM_PROXY_SHUTDOWN_GRACE: `${SHORT_GRACE_MS}ms` });
    const actor = await createActor(replica.url, { chat_completions: { limit: 100, interval: '1h', allowedModels: ['*'] } });

    // fetch keeps the connection open for reuse after the stream, as HTTP/1.1 clients do.
    const stream = await openStream(replica.url, actor.token);
    assert.equal(stream.status, 200);
    const signalledAt = performance.now();
    replica.kill('SIGTERM');
    const read = await stream.body;
    const exit = await waitForExit(replica);
    const exitedAfterStreamMs = performance.now() - read.endedAt;

    assert.equal(read.text, EXPECTED_STREAM);
    assert.deepEqual(exit, { code: 0, signal: null }, `exit within ${EXIT_TIMEOUT_MS} ms`);
    t.diagnostic(`stream ended ${Math.round(read.endedAt - signalledAt)} ms after SIGTERM; the process exited ${Math.round(exitedAfterStreamMs)} ms after the stream`);
    assert.ok(exitedAfterStreamMs < PROMPT_EXIT_MS, `the process exited ${Math.round(exitedAfterStreamMs)} ms after the last stream ended, with a grace period of ${SHORT_GRACE_MS} ms`);
  });

  it('cuts a stream that outlasts the grace period', async (t) => {
    const upstream = await UpstreamServer.start();
    t.after(() => upstream.close());
    // About 6 s in all, far longer than the 1 s grace period.
    upstream.setDefault(() => pacedStream(600));
    const [replica] = await replicas.start(1, { ...upstreamEnv(upstream), LLM_PROXY_SHUTDOWN_GRACE: '1s' });
    const actor = await createActor(replica.url, { chat_completions: { limit: 100, interval: '1h', allowedModels: ['*'] } });

    const stream = await openStream(replica.url, actor.token);
    assert.equal(stream.status, 200);
    const signalledAt = performance.now();
    replica.kill('SIGTERM');
    const read = await stream.body;
    const exit = await waitForExit(replica);

    const cutAfterMs = read.endedAt - signalledAt;
    t.diagnostic(`stream cut ${Math.round(cutAfterMs)} ms after SIGTERM`);
    assert.ok(cutAfterMs >= 900, `the stream ended ${Math.round(cutAfterMs)} ms after SIGTERM, before the 1 s grace period`);
    assert.ok(cutAfterMs < 3000, `the stream ended ${Math.round(cutAfterMs)} ms after SIGTERM, long after the 1 s grace period`);
    assert.notEqual(read.error, undefined, 'the client sees the cut stream fail');
    assert.ok(!read.text.includes('message_stop'), 'the cut stream has no final event');
    assert.deepEqual(exit, { code: 0, signal: null }, `exit within ${EXIT_TIMEOUT_MS} ms`);

    const events = await storedEvents(replica, actor.id);
    assert.equal(events.length, 1, 'usage events of the cut stream');
    assert.ok(['client_aborted', 'upstream_error'].includes(events[0].outcome), `outcome ${events[0].outcome}`);
  });
});
