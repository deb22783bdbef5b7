/**
 * Streams split at every byte offset on their way from the upstream. TCP may cut a stream
 * anywhere: inside an event, a line, a `\r\n` pair or a UTF-8 character. Every split must give
 * the client the same bytes, and the usage event the same counts, as the unsplit stream.
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';
import { anthropicMessages } from '../../src/providers/anthropic/messages.ts';
import { openaiChat } from '../../src/providers/openai/routes.ts';
import type { UsageEvent } from '../../src/usage/event.ts';
import { decodedBody, fixture, fixtureUsage, type FixtureExchange, type FixtureProvider } from '../helpers/fixtures.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import {
  DEFAULT_OPENAI_USAGE,
  DEFAULT_TEXT,
  UpstreamServer,
  generateResponse,
  openaiChatStream,
  splitBody,
  type RecordedRequest,
  type ScriptedChunk,
} from '../helpers/upstream-server.ts';
import { REQUEST_TIMEOUT_MS, bearer, createAgent, post, type RawResponse } from './client.ts';
import { TapChunkCounter } from './tap-chunks.ts';

/** Maximum requests in flight at once. */
const LANES = 8;
/** Wait after the headers, in ms, so that the gateway reads the body before the first piece arrives. */
const LEAD_MS = 2;
/**
 * Pause between the two pieces of a split, in ms. Without a pause the upstream writes every piece
 * before the gateway reads its socket, and the gateway receives the pieces merged into one chunk.
 */
const PAUSE_MS = 2;
/** Pause between the pieces of the 1-byte run, in ms, kept short because it has one pause per byte. */
const BYTE_PAUSE_MS = 1;
/**
 * Time limit per byte of the 1-byte run, in ms. Each pause takes a turn of the event loop, which
 * lasts several ms on a loaded machine.
 */
const BYTE_TIMEOUT_MS = 10;
/** Share of the 1-byte run's bytes that must reach the gateway as chunks of their own. */
const MIN_SEPARATE_BYTES = 0.9;
/** Rounds that re-send the splits the gateway received merged, before the test gives up. */
const MAX_ROUNDS = 10;
const LIMITS = { chat_completions: { limit: 1_000_000, interval: '1h', allowedModels: ['*'] } };
/** Event fields that must not depend on how the stream was split. */
const USAGE_FIELDS = [
  'status',
  'outcome',
  'upstreamModel',
  'inputTokens',
  'outputTokens',
  'cacheCreationInputTokens',
  'cacheReadInputTokens',
  'reasoningTokens',
  'tokensEstimated',
  'completionChars',
] as const;

/** One stream to split: what the client sends, what the upstream returns, what the client must get. */
interface StreamCase {
  provider: FixtureProvider;
  path: string;
  request: Record<string, any>;
  upstreamResponse(req: RecordedRequest): { headers: Record<string, string | string[]>; body: Buffer };
  expected: Buffer;
}

const agent = createAgent();
const tapChunks = new TapChunkCounter([anthropicMessages, openaiChat]);
let upstream: UpstreamServer;
let gateway: TestGateway;
let active: StreamCase | undefined;

before(async () => {
  upstream = await UpstreamServer.start();
  gateway = await startTestGateway(upstream);
  upstream.setDefault((req) => {
    if (active === undefined) throw new Error('an upstream request arrived while no stream case was running');
    const { headers, body } = active.upstreamResponse(req);
    return { status: 200, headers, chunks: splitChunks(body, splitOf(req.json)) };
  });
});

after(async () => {
  tapChunks.restore();
  await agent.close();
  await gateway?.close();
  await upstream?.close();
});

beforeEach(() => {
  upstream.reset();
});

/**
 * Adds the split name to a request body, in a field the provider accepts and the gateway passes
 * on, so that the upstream and the tap counter can tell concurrent runs apart.
 */
function tagRequest(provider: FixtureProvider, request: Record<string, any>, split: string): Record<string, any> {
  const tag = `split-${split}`;
  return provider === 'anthropic' ? { ...request, metadata: { user_id: tag } } : { ...request, user: tag };
}

function splitOf(json: any): string {
  const tag = json?.metadata?.user_id ?? json?.user;
  if (typeof tag !== 'string' || !tag.startsWith('split-')) {
    throw new Error(`the request carries no split tag in metadata.user_id or user: ${JSON.stringify(json)?.slice(0, 200)}`);
  }
  return tag.slice('split-'.length);
}

/**
 * Cuts the body for one run: `whole` is one chunk, `bytes` one chunk per byte, and a number `k`
 * the chunks [0,k) and [k,end).
 */
function splitChunks(body: Buffer, split: string): ScriptedChunk[] {
  if (split === 'whole') return [body];
  const bytes = split === 'bytes';
  const pieces = bytes ? splitBody(body, { chunkSizes: [1] }) : splitBody(body, { splitAt: [Number(split)] });
  const pause = { delayMs: bytes ? BYTE_PAUSE_MS : PAUSE_MS };
  return [{ delayMs: LEAD_MS }, ...pieces.flatMap((piece, i) => (i === 0 ? [piece] : [pause, piece]))];
}

/** Returns true when the gateway received the run's pieces apart, so the run tested its split. */
function receivedApart(split: string, chunks: number, upstreamLength: number): boolean {
  if (split === 'bytes') return chunks >= upstreamLength * MIN_SEPARATE_BYTES;
  return chunks >= 2;
}

function replayCase(ex: FixtureExchange, request = ex.requestJson, expected = decodedBody(ex)): StreamCase {
  assert.equal(ex.contentEncoding, undefined, `${ex.name} is compressed, so its splits would cut gzip bytes, not events`);
  return {
    provider: ex.provider,
    path: ex.path,
    request,
    upstreamResponse: () => ({ headers: ex.headers, body: ex.body }),
    expected,
  };
}

function send(actorToken: string, streamCase: StreamCase, split: string, upstreamLength = 0): Promise<RawResponse> {
  const body = tagRequest(streamCase.provider, streamCase.request, split);
  const timeoutMs = split === 'bytes' ? REQUEST_TIMEOUT_MS + upstreamLength * BYTE_TIMEOUT_MS : REQUEST_TIMEOUT_MS;
  return post(agent, gateway.url + streamCase.path, body, { headers: bearer(actorToken), timeoutMs });
}

function usageOf(event: UsageEvent): Record<string, unknown> {
  return Object.fromEntries(USAGE_FIELDS.map((field) => [field, event[field]]));
}

/** Runs `task` for every item, at most LANES at a time. */
async function inLanes<T>(items: T[], task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const item = items[next++];
      await task(item);
    }
  };
  await Promise.all(Array.from({ length: LANES }, lane));
}

interface SplitResult {
  baseline: UsageEvent;
  /** Splits that never reached the gateway apart within MAX_ROUNDS, so they stayed untested. */
  mergedSplits: string[];
  /** Splits whose client bytes differed from the expected stream in some run. */
  bodyMismatches: string[];
  /** Splits whose usage event differed from the unsplit run's in some run. */
  usageMismatches: string[];
  /** Runs that got no usage event. */
  missingEvents: string[];
  eventCount: number;
  runCount: number;
}

/**
 * Sends the stream unsplit, then in 1-byte chunks and split at every offset 1..length-1, and
 * compares each run with the unsplit one. Splits that reached the gateway merged are sent again.
 */
async function runSplits(streamCase: StreamCase): Promise<SplitResult> {
  const actor = await gateway.createActor(LIMITS, 'split-stream');
  active = streamCase;
  const whole = await send(actor.token, streamCase, 'whole');
  assert.equal(whole.status, 200, `unsplit status, body: ${whole.body.toString('utf8').slice(0, 300)}`);
  assert.ok(whole.body.equals(streamCase.expected), `unsplit client body differs:\n${whole.body.toString('utf8')}`);
  const upstreamLength = streamCase.upstreamResponse(upstream.requests[0]).body.length;

  // The 1-byte run is the slowest, so it starts first and overlaps the others.
  const pending = new Set(['bytes', ...Array.from({ length: upstreamLength - 1 }, (_, i) => String(i + 1))]);
  const runs = new Map<string, string>();
  const bodyMismatches = new Set<string>();
  for (let round = 0; round < MAX_ROUNDS && pending.size > 0; round++) {
    tapChunks.clear();
    await inLanes([...pending], async (split) => {
      const response = await send(actor.token, streamCase, split, upstreamLength);
      runs.set(String(response.headers['request-id']), split);
      if (response.status !== 200 || !response.body.equals(streamCase.expected)) bodyMismatches.add(split);
    });
    for (const record of tapChunks.records) {
      const split = splitOf(JSON.parse(record.requestBody.toString('utf8')));
      if (receivedApart(split, record.chunks, upstreamLength)) pending.delete(split);
    }
  }

  const events = await gateway.waitForEvents(actor.id, runs.size + 1, 30_000);
  const baseline = events.find((event) => event.requestId === whole.headers['request-id']);
  assert.ok(baseline !== undefined, 'no usage event for the unsplit run');
  const expectedUsage = usageOf(baseline);
  const usageMismatches = new Set<string>();
  const seen = new Set<string>();
  for (const event of events) {
    const split = runs.get(event.requestId);
    if (split === undefined) continue;
    seen.add(event.requestId);
    try {
      assert.deepEqual(usageOf(event), expectedUsage);
    } catch {
      usageMismatches.add(`${split}: ${JSON.stringify(usageOf(event))}`);
    }
  }
  active = undefined;
  return {
    baseline,
    mergedSplits: [...pending],
    bodyMismatches: [...bodyMismatches],
    usageMismatches: [...usageMismatches],
    missingEvents: [...runs].filter(([requestId]) => !seen.has(requestId)).map(([, split]) => split),
    eventCount: events.length,
    runCount: runs.size,
  };
}

function assertSplitsMatch(result: SplitResult): void {
  assert.deepEqual(result.mergedSplits, [], 'splits that never reached the gateway apart');
  assert.deepEqual(result.bodyMismatches, [], 'splits whose client bytes differ from the unsplit stream');
  assert.deepEqual(result.missingEvents, [], 'runs without a usage event');
  assert.deepEqual(result.usageMismatches, [], `splits whose usage differs from ${JSON.stringify(usageOf(result.baseline))}`);
  assert.equal(result.eventCount, result.runCount + 1, 'one usage event per request');
}

function assertFixtureUsage(event: UsageEvent, ex: FixtureExchange): void {
  const usage = fixtureUsage(ex);
  assert.ok(usage !== undefined, `${ex.name} reports no usage`);
  assert.equal(event.inputTokens, usage.inputTokens, 'inputTokens');
  assert.equal(event.outputTokens, usage.outputTokens, 'outputTokens');
  assert.equal(event.tokensEstimated, false, 'tokensEstimated');
  assert.equal(event.outcome, 'completed', 'outcome');
}

/**
 * Removes what `include_usage` adds to an OpenAI stream: the `"usage":null` members and the
 * usage-only chunk. The result is what a client that did not request usage receives.
 */
function withoutStreamUsage(body: Buffer): Buffer {
  const events = body.toString('utf8').split(/(?<=\n\n)/);
  const withoutUsageChunk = events.filter((event) => {
    const data = event.startsWith('data: ') ? event.slice('data: '.length).trim() : '';
    if (data === '' || data === '[DONE]') return true;
    const chunk = JSON.parse(data);
    return !(chunk.usage != null && Array.isArray(chunk.choices) && chunk.choices.length === 0);
  });
  return Buffer.from(withoutUsageChunk.join('').replaceAll(',"usage":null', ''), 'utf8');
}

test('Anthropic text stream splits', async () => {
  const ex = fixture('test_stream_events_text.yaml#0');
  const result = await runSplits(replayCase(ex));
  assertFixtureUsage(result.baseline, ex);
  assertSplitsMatch(result);
});

test('Anthropic thinking and tool stream splits', async () => {
  const ex = fixture('test_fixed_version_tool_chain_with_thinking_display_regression.yaml#0');
  const result = await runSplits(replayCase(ex));
  assertFixtureUsage(result.baseline, ex);
  assertSplitsMatch(result);
});

test('OpenAI stream with usage splits', async () => {
  const ex = fixture('chat-streaming-detailed-usage.yaml#0');
  assert.equal(ex.requestJson.stream_options?.include_usage, true, 'the recorded request asks for usage');
  const result = await runSplits(replayCase(ex));
  assertFixtureUsage(result.baseline, ex);
  assert.equal(result.baseline.reasoningTokens, fixtureUsage(ex)?.reasoningTokens, 'reasoningTokens');
  assertSplitsMatch(result);
});

test('OpenAI stream without usage splits', async () => {
  const model = 'gpt-test';
  const expected = Buffer.from(openaiChatStream(DEFAULT_TEXT, { model, includeUsage: false }), 'utf8');
  const streamCase: StreamCase = {
    provider: 'openai',
    path: '/v1/chat/completions',
    request: { model, stream: true, messages: [{ role: 'user', content: 'Hi' }] },
    upstreamResponse: (req) => {
      const generated = generateResponse(req);
      const chunks = (generated.chunks ?? []).filter((chunk): chunk is string => typeof chunk === 'string');
      return { headers: generated.headers ?? {}, body: Buffer.from(chunks.join(''), 'utf8') };
    },
    expected,
  };
  const result = await runSplits(streamCase);
  assert.equal(upstream.requests[0].json?.stream_options?.include_usage, true, 'the gateway did not ask the upstream for usage');
  assert.ok(!expected.includes('"usage"'), 'the expected stream has usage fields');
  assert.equal(result.baseline.inputTokens, DEFAULT_OPENAI_USAGE.prompt_tokens, 'inputTokens');
  assert.equal(result.baseline.outputTokens, DEFAULT_OPENAI_USAGE.completion_tokens, 'outputTokens');
  assert.equal(result.baseline.tokensEstimated, false, 'tokensEstimated');
  assertSplitsMatch(result);
});

test('recorded OpenAI stream usage stripped', async () => {
  // The recording requested usage, but this client does not. So the gateway adds the option
  // and must hide what it adds, wherever the `"usage":null` member sits in each chunk.
  const ex = fixture('chat-streaming-detailed-usage.yaml#0');
  const { stream_options: _options, ...request } = ex.requestJson;
  const expected = withoutStreamUsage(decodedBody(ex));
  assert.ok(!expected.includes('"usage"'), 'the expected stream has usage fields');
  const result = await runSplits(replayCase(ex, request, expected));
  assertFixtureUsage(result.baseline, ex);
  assertSplitsMatch(result);
});
