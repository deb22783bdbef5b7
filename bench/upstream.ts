/**
 * Fast stand-in for the OpenAI and Anthropic APIs, run as its own process by the benchmarks.
 *
 * Usage: node --import tsx bench/upstream.ts --port PORT
 *
 * Serves `POST /v1/chat/completions` (OpenAI) and `POST /v1/messages` (Anthropic). The request's
 * `model` selects the response, so that every proxy in front passes the choice through unchanged:
 *
 * - any other model: a small JSON completion, or with `"stream": true` a stream of 8 events sent
 *   at once;
 * - `bench-sse-<events>-<ms>`: a stream of `<events>` content events, one every `<ms>`
 *   milliseconds, the first one right after the headers;
 * - `bench-hold-<ms>`: a stream with one content event every `<ms>` milliseconds until the client
 *   goes away, or for at most HOLD_MAX_MS.
 *
 * Each content event carries the upstream's `performance.now()` at the moment of writing as
 * `@<ms>` in its text, so a client can tell the delay each hop added to each event. OpenAI streams
 * honour `stream_options.include_usage` the way OpenAI does: every chunk gets `"usage":null` and
 * one extra chunk with empty `choices` carries the usage. Requests without `Authorization` or
 * `x-api-key` get a 401, so a proxy that drops credentials fails loudly.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

/** Maximum time a `bench-hold-*` stream stays open, so that no stream outlives a stuck client. */
const HOLD_MAX_MS = 120_000;
const DEFAULT_STREAM_EVENTS = 8;
const PROMPT_TOKENS = 212;
const COMPLETION_TOKENS = 48;

const OPENAI_JSON = Buffer.from(
  JSON.stringify({
    id: 'chatcmpl-bench000000000000000000000001',
    object: 'chat.completion',
    created: 1_700_000_000,
    model: 'gpt-4o-mini-2024-07-18',
    choices: [
      {
        index: 0,
        message: {
          role: 'assistant',
          content: 'A load balancer spreads incoming requests over several servers, so no single server is overwhelmed and the service stays up when one of them fails.',
          refusal: null,
        },
        logprobs: null,
        finish_reason: 'stop',
      },
    ],
    usage: { prompt_tokens: PROMPT_TOKENS, completion_tokens: COMPLETION_TOKENS, total_tokens: PROMPT_TOKENS + COMPLETION_TOKENS },
    system_fingerprint: 'fp_bench',
  }),
);

const ANTHROPIC_JSON = Buffer.from(
  JSON.stringify({
    id: 'msg_bench0000000000000000001',
    type: 'message',
    role: 'assistant',
    model: 'claude-sonnet-4-20250514',
    content: [{ type: 'text', text: 'A load balancer spreads incoming requests over several servers, so no single server is overwhelmed and the service stays up when one of them fails.' }],
    stop_reason: 'end_turn',
    stop_sequence: null,
    usage: { input_tokens: PROMPT_TOKENS, output_tokens: COMPLETION_TOKENS },
  }),
);

type Api = 'openai' | 'anthropic';

interface StreamPlan {
  /** Content events to send; Infinity for a held stream. */
  events: number;
  intervalMs: number;
}

interface StreamWriter {
  start(res: ServerResponse): void;
  content(res: ServerResponse, index: number): void;
  finish(res: ServerResponse, sent: number): void;
}

const MODEL_PATTERN = /"model"\s*:\s*"([^"]*)"/;
const STREAM_PATTERN = /"stream"\s*:\s*true/;
const INCLUDE_USAGE_PATTERN = /"include_usage"\s*:\s*true/;

function stamp(index: number): string {
  return ` w${index}@${performance.now().toFixed(3)}`;
}

function openAiWriter(includeUsage: boolean): StreamWriter {
  const usageField = includeUsage ? ',"usage":null' : '';
  const head = '{"id":"chatcmpl-bench000000000000000000000002","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_bench","choices":';
  const send = (res: ServerResponse, choices: string, usage = usageField) => res.write(`data: ${head}${choices}${usage}}\n\n`);
  return {
    start(res) {
      send(res, '[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]');
    },
    content(res, index) {
      send(res, `[{"index":0,"delta":{"content":${JSON.stringify(stamp(index))}},"logprobs":null,"finish_reason":null}]`);
    },
    finish(res, sent) {
      send(res, '[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]');
      if (includeUsage) {
        send(res, '[]', `,"usage":{"prompt_tokens":${PROMPT_TOKENS},"completion_tokens":${sent},"total_tokens":${PROMPT_TOKENS + sent}}`);
      }
      res.end('data: [DONE]\n\n');
    },
  };
}

function anthropicWriter(): StreamWriter {
  const event = (res: ServerResponse, name: string, data: string) => res.write(`event: ${name}\ndata: ${data}\n\n`);
  return {
    start(res) {
      event(
        res,
        'message_start',
        `{"type":"message_start","message":{"id":"msg_bench0000000000000000002","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":${PROMPT_TOKENS},"output_tokens":1}}}`,
      );
      event(res, 'content_block_start', '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}');
    },
    content(res, index) {
      event(res, 'content_block_delta', `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":${JSON.stringify(stamp(index))}}}`);
    },
    finish(res, sent) {
      event(res, 'content_block_stop', '{"type":"content_block_stop","index":0}');
      event(res, 'message_delta', `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":${sent}}}`);
      res.end('event: message_stop\ndata: {"type":"message_stop"}\n\n');
    },
  };
}

function planStream(model: string): StreamPlan {
  const paced = /^bench-sse-(\d+)-(\d+)$/.exec(model);
  if (paced !== null) return { events: Number(paced[1]), intervalMs: Number(paced[2]) };
  const held = /^bench-hold-(\d+)$/.exec(model);
  if (held !== null) return { events: Number.POSITIVE_INFINITY, intervalMs: Math.max(1, Number(held[1])) };
  return { events: DEFAULT_STREAM_EVENTS, intervalMs: 0 };
}

/**
 * Sends the content events on a fixed schedule (start + index × interval), so a late timer does
 * not push back every later event.
 */
function sendStream(res: ServerResponse, writer: StreamWriter, plan: StreamPlan): void {
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
  const startedAt = performance.now();
  let index = 0;
  let timer: NodeJS.Timeout | undefined;
  res.on('close', () => clearTimeout(timer));

  writer.start(res);
  if (plan.intervalMs === 0) {
    for (; index < plan.events; index++) writer.content(res, index);
    writer.finish(res, index);
    return;
  }
  const next = () => {
    if (res.destroyed) return;
    writer.content(res, index);
    index++;
    const elapsed = performance.now() - startedAt;
    if (index >= plan.events || elapsed >= HOLD_MAX_MS) {
      writer.finish(res, index);
      return;
    }
    timer = setTimeout(next, Math.max(0, startedAt + index * plan.intervalMs - performance.now()));
  };
  next();
}

function sendJson(res: ServerResponse, status: number, body: Buffer): void {
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': body.length });
  res.end(body);
}

function handle(req: IncomingMessage, res: ServerResponse, body: Buffer): void {
  const path = req.url ?? '/';
  const api: Api | undefined = path.startsWith('/v1/chat/completions') ? 'openai' : path.startsWith('/v1/messages') ? 'anthropic' : undefined;
  if (req.method !== 'POST' || api === undefined) {
    sendJson(res, 404, Buffer.from(JSON.stringify({ error: { message: `no route for ${req.method} ${path}`, type: 'invalid_request_error' } })));
    return;
  }
  const authorization = req.headers.authorization ?? req.headers['x-api-key'];
  if (authorization === undefined || authorization === '') {
    sendJson(res, 401, Buffer.from(JSON.stringify({ error: { message: 'missing API key', type: 'authentication_error' } })));
    return;
  }
  const text = body.toString('latin1');
  if (!STREAM_PATTERN.test(text)) {
    sendJson(res, 200, api === 'openai' ? OPENAI_JSON : ANTHROPIC_JSON);
    return;
  }
  const model = MODEL_PATTERN.exec(text)?.[1] ?? '';
  const writer = api === 'openai' ? openAiWriter(INCLUDE_USAGE_PATTERN.test(text)) : anthropicWriter();
  sendStream(res, writer, planStream(model));
}

const { values } = parseArgs({ options: { port: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' } } });
const port = Number(values.port ?? '0');

const server = createServer({ noDelay: true, keepAliveTimeout: 65_000 }, (req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (chunk: Buffer) => chunks.push(chunk));
  req.on('end', () => handle(req, res, chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)));
});
server.maxHeadersCount = 100;
server.listen(port, values.host, () => {
  const address = server.address();
  process.stdout.write(`listening ${typeof address === 'object' && address !== null ? address.port : port}\n`);
});
process.once('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
