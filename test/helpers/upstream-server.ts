/**
 * Scriptable HTTP server on 127.0.0.1 that plays the Anthropic and OpenAI APIs in tests.
 *
 * Each request takes the next scripted response from a FIFO queue (`enqueue`, `replay`). When the
 * queue is empty, the default handler builds the response. It is `generateResponse` unless
 * `setDefault` replaced it. `generateResponse` builds small valid provider responses whose bytes the exported
 * builders (`anthropicStream`, `openaiChatStream`, ...) reproduce exactly.
 *
 * All timestamps (`receivedAt`, `closedAt`, `finishedAt`) are `performance.now()` values in ms.
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FixtureExchange } from './fixtures.ts';

/** JSON object built by the response builders. */
export type JsonObject = Record<string, any>;

export type ScriptedChunk = string | Buffer | { delayMs: number };

export interface ScriptedResponse {
  /** HTTP status code, 200 by default. */
  status?: number;
  headers?: Record<string, string | string[]>;
  /**
   * Body written chunk by chunk with one `write()` per chunk, using chunked transfer encoding
   * unless `headers` sets Content-Length. A `{ delayMs }` entry sleeps between writes.
   * Headers are flushed before the first chunk.
   */
  chunks?: ScriptedChunk[];
  /**
   * Body written in one piece with a computed Content-Length. Objects are JSON-encoded and get
   * `content-type: application/json` unless `headers` sets a content type.
   */
  body?: string | Buffer | object;
  /** Time in ms to wait before writing the status line and headers. */
  delayBeforeHeadersMs?: number;
  /**
   * Destroys the socket after this many chunks of `chunks` have been flushed, so the client sees
   * the connection close before the end of the body. 0 closes it right after the headers.
   */
  resetAfterChunks?: number;
  /** With `resetAfterChunks` or `resetImmediately`, sends a TCP RST (`socket.resetAndDestroy()`) instead of a FIN. */
  resetWithRst?: boolean;
  /** Sends no response. The socket stays open until the client or `close()` closes it. */
  noResponse?: boolean;
  /** Destroys the socket once the request body has been read, before any response bytes. */
  resetImmediately?: boolean;
}

export type ScriptedHandler = (req: RecordedRequest) => ScriptedResponse;

export interface RecordedRequest {
  method: string;
  /** Request target as sent, path and query, e.g. `/v1/messages?beta=true`. */
  url: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
  /** Parsed body, or undefined when it is empty or not JSON. */
  json: any;
  /** False when the client closed the connection before sending the whole body. */
  bodyComplete: boolean;
  /** performance.now() when the request headers arrived. */
  receivedAt: number;
  /**
   * performance.now() when the request's socket closed. With keep-alive, a socket that served a
   * complete response may close much later, or only at `close()`.
   */
  closedAt?: number;
  /** performance.now() when the whole response had been handed to the socket. Unset if it was cut short. */
  finishedAt?: number;
}

export interface ReplayOptions {
  /** Chunk sizes in bytes. The last size repeats until the body ends. */
  chunkSizes?: number[];
  /** Ascending byte offsets where the body is split. */
  splitAt?: number[];
  /** Time in ms to sleep between chunks. */
  delayBetweenChunksMs?: number;
  resetAfterChunks?: number;
}

type QueueEntry = ScriptedResponse | ScriptedHandler;

const DEFAULT_WAIT_TIMEOUT_MS = 5_000;

export class UpstreamServer {
  /** Base URL without a trailing slash, e.g. `http://127.0.0.1:40123`. */
  readonly url: string;
  /** Requests whose body has been read (or cut short), in that order. */
  readonly requests: RecordedRequest[] = [];
  /** Maximum number of requests in flight at the same time since start or the last `reset()`. */
  maxInFlight = 0;

  readonly #server: http.Server;
  readonly #queue: QueueEntry[] = [];
  readonly #sockets = new Set<Socket>();
  /** Requests on each socket that have no closedAt yet. */
  readonly #openRequests = new Map<Socket, RecordedRequest[]>();
  readonly #aborts = new Set<AbortController>();
  readonly #listeners = new Set<() => void>();
  #defaultHandler: ScriptedHandler = generateResponse;
  #inFlight = 0;
  #closed = false;

  private constructor(server: http.Server, url: string) {
    this.#server = server;
    this.url = url;
  }

  /** Starts a server on 127.0.0.1 with an OS-assigned port. */
  static async start(): Promise<UpstreamServer> {
    const server = http.createServer({ noDelay: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    const address = server.address();
    if (address === null || typeof address === 'string') {
      throw new Error(`Upstream server has no TCP address: ${String(address)}`);
    }

    const upstream = new UpstreamServer(server, `http://127.0.0.1:${address.port}`);
    server.on('connection', (socket) => upstream.#trackSocket(socket));
    server.on('request', (req, res) => upstream.#handle(req, res));
    return upstream;
  }

  /** Queues responses for the next requests, in arrival order. A function is called with the recorded request. */
  enqueue(...responses: QueueEntry[]): void {
    this.#queue.push(...responses);
  }

  /** Sets the handler used when the queue is empty. */
  setDefault(handler: ScriptedHandler): void {
    this.#defaultHandler = handler;
  }

  /** Queues the recorded response of a fixture. See `replayResponse`. */
  replay(ex: FixtureExchange, options: ReplayOptions = {}): void {
    this.enqueue(replayResponse(ex, options));
  }

  /** Number of scripted responses still queued. */
  queued(): number {
    return this.#queue.length;
  }

  /** Number of requests whose response has not yet finished or been closed. */
  inFlight(): number {
    return this.#inFlight;
  }

  get lastRequest(): RecordedRequest | undefined {
    return this.requests.at(-1);
  }

  /** Resolves once at least `n` requests have been recorded. Rejects after `timeoutMs`. */
  waitForRequests(n: number, timeoutMs = DEFAULT_WAIT_TIMEOUT_MS): Promise<void> {
    return this.#waitFor(
      () => this.requests.length >= n,
      timeoutMs,
      () => `Timed out after ${timeoutMs} ms waiting for ${n} upstream requests, received ${this.requests.length}`,
    ).then(() => undefined);
  }

  /** Resolves with `req.closedAt` once the request's socket has closed. Rejects after `timeoutMs`. */
  waitForClose(req: RecordedRequest, timeoutMs = DEFAULT_WAIT_TIMEOUT_MS): Promise<number> {
    return this.#waitFor(
      () => req.closedAt !== undefined,
      timeoutMs,
      () => `Timed out after ${timeoutMs} ms waiting for the socket of ${req.method} ${req.url} to close`,
    ).then(() => req.closedAt as number);
  }

  /** Clears the queue, the recorded requests and maxInFlight. The default handler is kept. */
  reset(): void {
    this.#queue.length = 0;
    this.requests.length = 0;
    this.maxInFlight = this.#inFlight;
  }

  /** Stops listening, cancels pending delays and destroys every open connection. */
  async close(): Promise<void> {
    if (this.#closed) {
      return;
    }
    this.#closed = true;
    for (const controller of this.#aborts) {
      controller.abort();
    }
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    for (const socket of this.#sockets) {
      socket.destroy();
    }
    await closed;
  }

  #trackSocket(socket: Socket): void {
    this.#sockets.add(socket);
    this.#openRequests.set(socket, []);
    socket.on('close', () => {
      const now = performance.now();
      for (const record of this.#openRequests.get(socket) ?? []) {
        record.closedAt = now;
      }
      this.#sockets.delete(socket);
      this.#openRequests.delete(socket);
      this.#notify();
    });
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const record: RecordedRequest = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      body: Buffer.alloc(0),
      json: undefined,
      bodyComplete: false,
      receivedAt: performance.now(),
    };
    this.#openRequests.get(req.socket)?.push(record);

    this.#inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.#inFlight);
    const abort = new AbortController();
    this.#aborts.add(abort);
    res.on('finish', () => {
      record.finishedAt = performance.now();
    });
    res.on('close', () => {
      this.#inFlight--;
      abort.abort();
      this.#aborts.delete(abort);
      this.#notify();
    });

    // Take the queue entry at arrival so that concurrent requests get responses in arrival order.
    const entry = this.#queue.shift() ?? this.#defaultHandler;
    const parts: Buffer[] = [];
    let recorded = false;
    const recordBody = (complete: boolean): void => {
      if (recorded) {
        return;
      }
      recorded = true;
      record.body = Buffer.concat(parts);
      record.bodyComplete = complete;
      record.json = parseJsonOrUndefined(record.body);
      this.requests.push(record);
      this.#notify();
    };

    req.on('data', (chunk: Buffer) => parts.push(chunk));
    req.on('error', () => recordBody(false));
    req.on('close', () => recordBody(req.complete));
    req.on('end', () => {
      recordBody(true);
      void this.#runScript(req, res, entry, record, abort.signal);
    });
  }

  async #runScript(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    entry: QueueEntry,
    record: RecordedRequest,
    signal: AbortSignal,
  ): Promise<void> {
    try {
      const scripted = typeof entry === 'function' ? entry(record) : entry;
      await this.#respond(req, res, scripted, signal);
    } catch (error) {
      // A throwing handler or an invalid script gets a 500 response with the error, so that the
      // test sees it in the response instead of as an uncaught exception in the server.
      if (!res.headersSent && !res.destroyed) {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`UpstreamServer script error: ${String(error)}`);
      } else {
        res.destroy();
      }
    }
  }

  async #respond(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    scripted: ScriptedResponse,
    signal: AbortSignal,
  ): Promise<void> {
    const socket = req.socket;
    const destroySocket = (): void => {
      if (scripted.resetWithRst) {
        socket.resetAndDestroy();
      } else {
        socket.destroy();
      }
    };

    if (scripted.resetImmediately) {
      destroySocket();
      return;
    }
    if (scripted.noResponse) {
      return;
    }
    if (scripted.chunks !== undefined && scripted.body !== undefined) {
      throw new Error('ScriptedResponse sets both chunks and body, set only one');
    }
    if (scripted.delayBeforeHeadersMs) {
      if (!(await sleepUnlessAborted(scripted.delayBeforeHeadersMs, signal))) {
        return;
      }
    }

    const status = scripted.status ?? 200;
    const headers: Record<string, string | string[]> = { ...scripted.headers };

    if (scripted.chunks === undefined) {
      const body = encodeBody(scripted.body, headers);
      if (!hasHeader(headers, 'content-length') && !hasHeader(headers, 'transfer-encoding')) {
        headers['content-length'] = String(body.length);
      }
      res.writeHead(status, headers);
      res.end(body);
      return;
    }

    res.writeHead(status, headers);
    res.flushHeaders();
    let written = 0;
    if (scripted.resetAfterChunks === 0) {
      await waitForFlush(res, signal);
      destroySocket();
      return;
    }
    for (const chunk of scripted.chunks) {
      if (signal.aborted) {
        return;
      }
      if (isDelay(chunk)) {
        if (!(await sleepUnlessAborted(chunk.delayMs, signal))) {
          return;
        }
        continue;
      }
      if (chunk.length === 0) {
        // An empty write is a no-op with chunked encoding, so it counts as no chunk.
        continue;
      }
      if (!(await writeChunk(res, chunk, signal))) {
        return;
      }
      written++;
      if (scripted.resetAfterChunks !== undefined && written >= scripted.resetAfterChunks) {
        destroySocket();
        return;
      }
    }
    res.end();
  }

  #waitFor(condition: () => boolean, timeoutMs: number, message: () => string): Promise<void> {
    if (condition()) {
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const listener = (): void => {
        if (condition()) {
          clearTimeout(timer);
          this.#listeners.delete(listener);
          resolve();
        }
      };
      const timer = setTimeout(() => {
        this.#listeners.delete(listener);
        reject(new Error(message()));
      }, timeoutMs);
      this.#listeners.add(listener);
    });
  }

  #notify(): void {
    for (const listener of [...this.#listeners]) {
      listener();
    }
  }
}

/**
 * Builds the scripted response for a recorded fixture. The body bytes are sent unchanged, gzip
 * included, with the recorded headers minus framing headers. Without chunking options the body
 * is one write with a Content-Length. With `chunkSizes` or `splitAt` it is sent in chunks with
 * chunked transfer encoding.
 */
export function replayResponse(ex: FixtureExchange, options: ReplayOptions = {}): ScriptedResponse {
  const headers: Record<string, string[]> = {};
  for (const [name, values] of Object.entries(ex.headers)) {
    headers[name] = [...values];
  }

  const chunked = options.chunkSizes !== undefined || options.splitAt !== undefined;
  if (!chunked && options.delayBetweenChunksMs === undefined && options.resetAfterChunks === undefined) {
    return { status: ex.status, headers, body: Buffer.from(ex.body) };
  }

  const pieces = chunked ? splitBody(ex.body, options) : [Buffer.from(ex.body)];
  const chunks: ScriptedChunk[] = [];
  pieces.forEach((piece, i) => {
    if (i > 0 && options.delayBetweenChunksMs) {
      chunks.push({ delayMs: options.delayBetweenChunksMs });
    }
    chunks.push(piece);
  });
  return { status: ex.status, headers, chunks, resetAfterChunks: options.resetAfterChunks };
}

/**
 * Splits a body by `chunkSizes` (the last size repeats) or at the `splitAt` byte offsets.
 * Returns no empty pieces. Throws on sizes that are not positive integers or offsets that are out
 * of range or not ascending.
 */
export function splitBody(body: Buffer, options: Pick<ReplayOptions, 'chunkSizes' | 'splitAt'>): Buffer[] {
  const { chunkSizes, splitAt } = options;
  if (chunkSizes !== undefined && splitAt !== undefined) {
    throw new Error('splitBody: set either chunkSizes or splitAt, not both');
  }

  const offsets: number[] = [];
  if (chunkSizes !== undefined) {
    if (chunkSizes.length === 0 || chunkSizes.some((size) => !Number.isInteger(size) || size <= 0)) {
      throw new Error(`splitBody: chunkSizes must be positive integers, got ${JSON.stringify(chunkSizes)}`);
    }
    let offset = 0;
    for (let i = 0; offset < body.length; i++) {
      offset += chunkSizes[Math.min(i, chunkSizes.length - 1)];
      offsets.push(Math.min(offset, body.length));
    }
  } else if (splitAt !== undefined) {
    let previous = 0;
    for (const offset of splitAt) {
      if (!Number.isInteger(offset) || offset < previous || offset > body.length) {
        throw new Error(
          `splitBody: splitAt must be ascending integers within 0..${body.length}, got ${JSON.stringify(splitAt)}`,
        );
      }
      previous = offset;
      offsets.push(offset);
    }
  }
  offsets.push(body.length);

  const pieces: Buffer[] = [];
  let start = 0;
  for (const end of offsets) {
    if (end > start) {
      pieces.push(body.subarray(start, end));
      start = end;
    }
  }
  return pieces;
}

// ---------------------------------------------------------------------------------------------
// Generated provider responses
// ---------------------------------------------------------------------------------------------

export const DEFAULT_TEXT = 'Hello! How can I help you today?';
export const DEFAULT_ANTHROPIC_MODEL = 'claude-test';
export const DEFAULT_OPENAI_MODEL = 'gpt-test';
/** Fixed `created` timestamp of generated OpenAI objects, so that their bytes are reproducible. */
export const DEFAULT_CREATED = 1_700_000_000;
export const DEFAULT_EMBEDDING_DIMENSIONS = 8;

export interface AnthropicUsage {
  input_tokens: number;
  output_tokens: number;
  cache_creation_input_tokens?: number;
  cache_read_input_tokens?: number;
}

export interface OpenAIUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export const DEFAULT_ANTHROPIC_USAGE: AnthropicUsage = { input_tokens: 10, output_tokens: 5 };
export const DEFAULT_OPENAI_USAGE: OpenAIUsage = { prompt_tokens: 9, completion_tokens: 12, total_tokens: 21 };

export interface GeneratedOptions {
  model?: string;
  id?: string;
}

export interface OpenAIGeneratedOptions extends GeneratedOptions {
  created?: number;
  usage?: OpenAIUsage;
  /** Adds `"usage":null` to every chunk and a final usage chunk, as `stream_options.include_usage` does. */
  includeUsage?: boolean;
}

const SSE_HEADERS = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' };

/**
 * Builds the default response for a request: a small valid Anthropic or OpenAI response chosen
 * by the path suffix, with SSE when the JSON body has `"stream": true`. Unknown routes get 404.
 * Streams are written one SSE event per chunk.
 */
export function generateResponse(req: RecordedRequest): ScriptedResponse {
  const pathname = new URL(req.url, 'http://upstream.invalid').pathname.replace(/\/+$/, '');
  const routes: [string, (req: RecordedRequest) => ScriptedResponse][] = [
    ['/v1/messages/count_tokens', generateCountTokens],
    ['/v1/messages', generateAnthropicMessage],
    ['/v1/complete', generateAnthropicCompletion],
    ['/chat/completions', generateOpenAIChat],
    ['/completions', generateOpenAICompletion],
    ['/embeddings', generateOpenAIEmbeddings],
  ];
  const route = routes.find(([suffix]) => pathname.endsWith(suffix));
  if (req.method !== 'POST' || route === undefined) {
    return {
      status: 404,
      body: errorBody('not_found_error', `UpstreamServer has no route for ${req.method} ${pathname}`),
    };
  }
  if (req.json === undefined || typeof req.json !== 'object' || req.json === null) {
    return { status: 400, body: errorBody('invalid_request_error', 'Request body is not a JSON object') };
  }
  return route[1](req);
}

function generateAnthropicMessage(req: RecordedRequest): ScriptedResponse {
  const options = { model: req.json.model ?? DEFAULT_ANTHROPIC_MODEL };
  if (req.json.stream === true) {
    return sseResponse(anthropicStream(DEFAULT_TEXT, DEFAULT_ANTHROPIC_USAGE, options));
  }
  return { headers: { 'content-type': 'application/json' }, body: anthropicMessage(DEFAULT_TEXT, DEFAULT_ANTHROPIC_USAGE, options) };
}

function generateCountTokens(req: RecordedRequest): ScriptedResponse {
  return { body: { input_tokens: countWords(JSON.stringify(req.json.messages ?? '')) } };
}

function generateAnthropicCompletion(req: RecordedRequest): ScriptedResponse {
  const options = { model: req.json.model ?? DEFAULT_ANTHROPIC_MODEL };
  if (req.json.stream === true) {
    return sseResponse(anthropicCompletionStream(' Hello', options));
  }
  return { body: anthropicCompletion(' Hello', options) };
}

function generateOpenAIChat(req: RecordedRequest): ScriptedResponse {
  const options = { model: req.json.model ?? DEFAULT_OPENAI_MODEL, includeUsage: req.json.stream_options?.include_usage === true };
  if (req.json.stream === true) {
    return sseResponse(openaiChatStream(DEFAULT_TEXT, options));
  }
  return { body: openaiChatCompletion(DEFAULT_TEXT, options) };
}

function generateOpenAICompletion(req: RecordedRequest): ScriptedResponse {
  const options = { model: req.json.model ?? DEFAULT_OPENAI_MODEL, includeUsage: req.json.stream_options?.include_usage === true };
  if (req.json.stream === true) {
    return sseResponse(openaiCompletionStream(DEFAULT_TEXT, options));
  }
  return { body: openaiCompletion(DEFAULT_TEXT, options) };
}

function generateOpenAIEmbeddings(req: RecordedRequest): ScriptedResponse {
  const inputs = embeddingInputs(req.json.input);
  if (inputs === undefined) {
    return {
      status: 400,
      body: errorBody('invalid_request_error', "'input' must be a non-empty string, array of strings, or array of token arrays"),
    };
  }
  const body = openaiEmbeddings(inputs, {
    model: req.json.model ?? 'text-embedding-test',
    dimensions: req.json.dimensions,
    encodingFormat: req.json.encoding_format === 'base64' ? 'base64' : 'float',
  });
  return { body };
}

/** Wraps an SSE body as a response written one event per chunk. */
export function sseResponse(body: string, headers: Record<string, string | string[]> = {}): ScriptedResponse {
  return { headers: { ...SSE_HEADERS, ...headers }, chunks: splitSseEvents(body) };
}

/** Splits an SSE body after each blank line, so that each piece is one whole event. */
export function splitSseEvents(body: string): string[] {
  return body.split(/(?<=\n\n)/).filter((piece) => piece.length > 0);
}

/** Splits text into word-sized deltas that keep their leading whitespace: "Hi there" → ["Hi", " there"]. */
export function textDeltas(text: string): string[] {
  const deltas = text.match(/\s*\S+\s*$|\s*\S+/g) ?? [];
  return deltas.length > 0 ? deltas : [text];
}

function sseEvent(eventName: string | undefined, data: unknown): string {
  const payload = typeof data === 'string' ? data : JSON.stringify(data);
  return eventName === undefined ? `data: ${payload}\n\n` : `event: ${eventName}\ndata: ${payload}\n\n`;
}

function fullAnthropicUsage(usage: AnthropicUsage): Required<AnthropicUsage> {
  return {
    input_tokens: usage.input_tokens,
    cache_creation_input_tokens: usage.cache_creation_input_tokens ?? 0,
    cache_read_input_tokens: usage.cache_read_input_tokens ?? 0,
    output_tokens: usage.output_tokens,
  };
}

/** Builds a non-streaming Anthropic Messages response. */
export function anthropicMessage(
  text: string = DEFAULT_TEXT,
  usage: AnthropicUsage = DEFAULT_ANTHROPIC_USAGE,
  options: GeneratedOptions = {},
): JsonObject {
  const usageFields = fullAnthropicUsage(usage);
  return {
    id: options.id ?? 'msg_upstream_test_0001',
    type: 'message',
    role: 'assistant',
    model: options.model ?? DEFAULT_ANTHROPIC_MODEL,
    content: [{ type: 'text', text }],
    stop_reason: 'end_turn',
    stop_sequence: null,
    usage: {
      input_tokens: usageFields.input_tokens,
      cache_creation_input_tokens: usageFields.cache_creation_input_tokens,
      cache_read_input_tokens: usageFields.cache_read_input_tokens,
      output_tokens: usageFields.output_tokens,
    },
  };
}

/**
 * Builds an Anthropic Messages SSE body: message_start (input and cache tokens, output_tokens 1),
 * content_block_start, ping, one content_block_delta per word, content_block_stop, message_delta
 * (final output_tokens) and message_stop.
 */
export function anthropicStream(
  text: string = DEFAULT_TEXT,
  usage: AnthropicUsage = DEFAULT_ANTHROPIC_USAGE,
  options: GeneratedOptions = {},
): string {
  const usageFields = fullAnthropicUsage(usage);
  const events = [
    sseEvent('message_start', {
      type: 'message_start',
      message: {
        id: options.id ?? 'msg_upstream_test_0001',
        type: 'message',
        role: 'assistant',
        model: options.model ?? DEFAULT_ANTHROPIC_MODEL,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: {
          input_tokens: usageFields.input_tokens,
          cache_creation_input_tokens: usageFields.cache_creation_input_tokens,
          cache_read_input_tokens: usageFields.cache_read_input_tokens,
          output_tokens: 1,
        },
      },
    }),
    sseEvent('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }),
    sseEvent('ping', { type: 'ping' }),
    ...textDeltas(text).map((delta) =>
      sseEvent('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: delta } }),
    ),
    sseEvent('content_block_stop', { type: 'content_block_stop', index: 0 }),
    sseEvent('message_delta', {
      type: 'message_delta',
      delta: { stop_reason: 'end_turn', stop_sequence: null },
      usage: { output_tokens: usageFields.output_tokens },
    }),
    sseEvent('message_stop', { type: 'message_stop' }),
  ];
  return events.join('');
}

/** Builds a legacy Anthropic Text Completions (`/v1/complete`) response. */
export function anthropicCompletion(completion = ' Hello', options: GeneratedOptions = {}): JsonObject {
  return {
    type: 'completion',
    id: options.id ?? 'compl_upstream_test_0001',
    completion,
    stop_reason: 'stop_sequence',
    model: options.model ?? DEFAULT_ANTHROPIC_MODEL,
  };
}

/** Builds a legacy Anthropic Text Completions SSE body: one `completion` event per word, then a final one with the stop reason. */
export function anthropicCompletionStream(completion = ' Hello', options: GeneratedOptions = {}): string {
  const id = options.id ?? 'compl_upstream_test_0001';
  const model = options.model ?? DEFAULT_ANTHROPIC_MODEL;
  const events = textDeltas(completion).map((delta) =>
    sseEvent('completion', { type: 'completion', id, completion: delta, stop_reason: null, model }),
  );
  events.push(sseEvent('completion', { type: 'completion', id, completion: '', stop_reason: 'stop_sequence', model }));
  return events.join('');
}

/** Builds a non-streaming OpenAI `chat.completion` object. */
export function openaiChatCompletion(text: string = DEFAULT_TEXT, options: OpenAIGeneratedOptions = {}): JsonObject {
  return {
    id: options.id ?? 'chatcmpl-upstreamtest0001',
    object: 'chat.completion',
    created: options.created ?? DEFAULT_CREATED,
    model: options.model ?? DEFAULT_OPENAI_MODEL,
    choices: [
      {
        index: 0,
        message: { role: 'assistant', content: text, refusal: null, annotations: [] },
        logprobs: null,
        finish_reason: 'stop',
      },
    ],
    usage: { ...(options.usage ?? DEFAULT_OPENAI_USAGE) },
    service_tier: 'default',
    system_fingerprint: null,
  };
}

/**
 * Builds an OpenAI Chat Completions SSE body: a role chunk, one content chunk per word, a
 * finish_reason chunk, then with `includeUsage` a usage chunk with empty `choices`, and
 * `data: [DONE]`.
 */
export function openaiChatStream(text: string = DEFAULT_TEXT, options: OpenAIGeneratedOptions = {}): string {
  const base = {
    id: options.id ?? 'chatcmpl-upstreamtest0001',
    object: 'chat.completion.chunk',
    created: options.created ?? DEFAULT_CREATED,
    model: options.model ?? DEFAULT_OPENAI_MODEL,
    service_tier: 'default',
    system_fingerprint: null,
  };
  const usageNull = options.includeUsage ? { usage: null } : {};
  const chunk = (delta: object, finishReason: string | null): string =>
    sseEvent(undefined, { ...base, choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }], ...usageNull });

  const events = [
    chunk({ role: 'assistant', content: '', refusal: null }, null),
    ...textDeltas(text).map((delta) => chunk({ content: delta }, null)),
    chunk({}, 'stop'),
  ];
  if (options.includeUsage) {
    events.push(sseEvent(undefined, { ...base, choices: [], usage: { ...(options.usage ?? DEFAULT_OPENAI_USAGE) } }));
  }
  events.push(sseEvent(undefined, '[DONE]'));
  return events.join('');
}

/** Builds a legacy OpenAI Completions (`text_completion`) object with one choice. */
export function openaiCompletion(text: string = DEFAULT_TEXT, options: OpenAIGeneratedOptions = {}): JsonObject {
  return {
    id: options.id ?? 'cmpl-upstreamtest0001',
    object: 'text_completion',
    created: options.created ?? DEFAULT_CREATED,
    model: options.model ?? DEFAULT_OPENAI_MODEL,
    choices: [{ text, index: 0, logprobs: null, finish_reason: 'stop' }],
    usage: { ...(options.usage ?? DEFAULT_OPENAI_USAGE) },
  };
}

/**
 * Builds a legacy OpenAI Completions SSE body: one chunk per word (the last has finish_reason
 * "stop"), then with `includeUsage` a usage chunk with empty `choices`, and `data: [DONE]`.
 */
export function openaiCompletionStream(text: string = DEFAULT_TEXT, options: OpenAIGeneratedOptions = {}): string {
  const id = options.id ?? 'cmpl-upstreamtest0001';
  const created = options.created ?? DEFAULT_CREATED;
  const model = options.model ?? DEFAULT_OPENAI_MODEL;
  const usageNull = options.includeUsage ? { usage: null } : {};
  const deltas = textDeltas(text);
  const events = deltas.map((delta, i) =>
    sseEvent(undefined, {
      id,
      object: 'text_completion',
      created,
      choices: [{ text: delta, index: 0, logprobs: null, finish_reason: i === deltas.length - 1 ? 'stop' : null }],
      model,
      ...usageNull,
    }),
  );
  if (options.includeUsage) {
    events.push(
      sseEvent(undefined, { id, object: 'text_completion', created, model, usage: { ...(options.usage ?? DEFAULT_OPENAI_USAGE) }, choices: [] }),
    );
  }
  events.push(sseEvent(undefined, '[DONE]'));
  return events.join('');
}

/** One embeddings input: a string or a list of token ids. */
export type EmbeddingInput = string | number[];

/**
 * Normalizes the `input` of an embeddings request to one entry per vector, or returns undefined
 * when it is invalid. Accepts a string, an array of strings, an array of token ids (one input)
 * and an array of token id arrays.
 */
export function embeddingInputs(input: unknown): EmbeddingInput[] | undefined {
  if (typeof input === 'string') {
    return [input];
  }
  if (!Array.isArray(input) || input.length === 0) {
    return undefined;
  }
  if (input.every((item) => typeof item === 'number')) {
    return [input as number[]];
  }
  const valid = input.every(
    (item) => typeof item === 'string' || (Array.isArray(item) && item.length > 0 && item.every((token) => typeof token === 'number')),
  );
  return valid ? (input as EmbeddingInput[]) : undefined;
}

/** Counts whitespace-separated words, at least 1. Used as the token count of generated responses. */
export function countWords(text: string): number {
  return Math.max(1, text.split(/\s+/).filter((word) => word.length > 0).length);
}

/** Token count that generated embeddings report for one input: words of a string, length of a token list, at least 1. */
export function embeddingTokens(input: EmbeddingInput): number {
  return typeof input === 'string' ? countWords(input) : Math.max(1, input.length);
}

/**
 * Deterministic embedding vector for input `index`. The values are multiples of 1/16 in
 * [-0.5, 0.5), which float32 represents exactly, so float and base64 responses decode to the
 * same numbers.
 */
export function embeddingVector(index: number, dimensions: number = DEFAULT_EMBEDDING_DIMENSIONS): number[] {
  return Array.from({ length: dimensions }, (_, j) => ((index * 5 + j * 3) % 16) / 16 - 0.5);
}

/** Encodes a vector as base64 of little-endian float32 values, as `encoding_format: "base64"` does. */
export function encodeEmbeddingBase64(vector: number[]): string {
  const bytes = Buffer.alloc(vector.length * 4);
  vector.forEach((value, i) => bytes.writeFloatLE(value, i * 4));
  return bytes.toString('base64');
}

/** Builds an OpenAI embeddings response with one vector per input. */
export function openaiEmbeddings(
  inputs: EmbeddingInput[],
  options: { model?: string; dimensions?: number; encodingFormat?: 'float' | 'base64' } = {},
): JsonObject {
  const dimensions = Number.isInteger(options.dimensions) && (options.dimensions as number) > 0 ? (options.dimensions as number) : DEFAULT_EMBEDDING_DIMENSIONS;
  const promptTokens = inputs.reduce((sum, input) => sum + embeddingTokens(input), 0);
  return {
    object: 'list',
    data: inputs.map((_, index) => {
      const vector = embeddingVector(index, dimensions);
      return {
        object: 'embedding',
        index,
        embedding: options.encodingFormat === 'base64' ? encodeEmbeddingBase64(vector) : vector,
      };
    }),
    model: options.model ?? 'text-embedding-test',
    usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
  };
}

function errorBody(type: string, message: string): JsonObject {
  return { type: 'error', error: { type, message } };
}

function isDelay(chunk: ScriptedChunk): chunk is { delayMs: number } {
  return typeof chunk === 'object' && !Buffer.isBuffer(chunk);
}

function hasHeader(headers: Record<string, unknown>, headerName: string): boolean {
  return Object.keys(headers).some((key) => key.toLowerCase() === headerName);
}

function encodeBody(body: ScriptedResponse['body'], headers: Record<string, string | string[]>): Buffer {
  if (body === undefined) {
    return Buffer.alloc(0);
  }
  if (typeof body === 'string') {
    return Buffer.from(body, 'utf8');
  }
  if (Buffer.isBuffer(body)) {
    return body;
  }
  if (!hasHeader(headers, 'content-type')) {
    headers['content-type'] = 'application/json';
  }
  return Buffer.from(JSON.stringify(body), 'utf8');
}

function parseJsonOrUndefined(body: Buffer): any {
  if (body.length === 0) {
    return undefined;
  }
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
}

/** Sleeps for `ms`. Returns false, without throwing, when `signal` aborts first. */
async function sleepUnlessAborted(ms: number, signal: AbortSignal): Promise<boolean> {
  try {
    await sleep(ms, undefined, { signal });
    return true;
  } catch {
    return false;
  }
}

/** Writes one chunk and waits until the socket has taken it. Returns false when the response closed first. */
function writeChunk(res: http.ServerResponse, chunk: string | Buffer, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted || res.destroyed) {
    return Promise.resolve(false);
  }
  return new Promise<boolean>((resolve) => {
    const onAbort = (): void => resolve(false);
    signal.addEventListener('abort', onAbort, { once: true });
    res.write(chunk, (error) => {
      signal.removeEventListener('abort', onAbort);
      resolve(!error && !signal.aborted);
    });
  });
}

/** Waits until the headers written by flushHeaders() have reached the socket. */
function waitForFlush(res: http.ServerResponse, signal: AbortSignal): Promise<boolean> {
  return writeChunk(res, '', signal);
}
