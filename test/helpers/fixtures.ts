/**
 * Loader for recorded Anthropic and OpenAI HTTP exchanges, used as upstream fixtures.
 *
 * The fixtures directory contains two folders of YAML cassettes:
 * - `anthropic/`: VCR cassettes written by pytest-recording. Each interaction has
 *   `request {body, headers, method, uri}` and `response {status {code, message}, headers, body {string}}`.
 *   Gzip-compressed bodies are stored as YAML `!!binary`.
 * - `openai/`: go-vcr v2 cassettes. Each interaction has `request {body, headers, url, method}` and
 *   `response {code, headers, body, content_length}`.
 *
 * By default the directory is `../shared/fixtures` relative to the repository root.
 * Set LLM_PROXY_FIXTURES_DIR to use another directory with the same layout.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';
import { parse } from 'yaml';

export const FIXTURES_DIR_ENV = 'LLM_PROXY_FIXTURES_DIR';

export type FixtureProvider = 'anthropic' | 'openai';

export interface FixtureExchange {
  provider: FixtureProvider;
  /** Cassette path relative to the fixtures directory, e.g. `anthropic/test_prompt.yaml`. */
  file: string;
  /** Position of the interaction inside its cassette, starting at 0. */
  index: number;
  /** Cassette file name and index, e.g. `test_prompt.yaml#0`. Unique across both folders. */
  name: string;
  method: string;
  /** Full recorded request URL, including the host (not always a provider host, see `path`). */
  url: string;
  /** URL pathname, e.g. `/v1/messages` or `/v1/chat/completions`. */
  path: string;
  requestBody: string;
  /** Parsed request body, or undefined when it is empty or not JSON. */
  requestJson: any;
  /** True when the request body has `"stream": true`. */
  stream: boolean;
  status: number;
  /**
   * Recorded response headers with their original names. Content-Length, Transfer-Encoding and
   * Connection are removed because they describe the original connection.
   */
  headers: Record<string, string[]>;
  /** Response body bytes exactly as recorded, gzip-compressed when `contentEncoding` is `gzip`. */
  body: Buffer;
  /** Value of the recorded Content-Encoding header, lowercased. */
  contentEncoding: string | undefined;
}

/** Token counts reported by the provider in a recorded response body. Missing fields are 0. */
export interface FixtureUsage {
  inputTokens: number;
  outputTokens: number;
  cacheCreationInputTokens: number;
  cacheReadInputTokens: number;
  reasoningTokens: number;
}

const FRAMING_HEADERS = new Set(['content-length', 'transfer-encoding', 'connection']);
const PROVIDERS: FixtureProvider[] = ['anthropic', 'openai'];

const cache = new Map<string, FixtureExchange[]>();

/** Returns the absolute fixtures directory, honoring LLM_PROXY_FIXTURES_DIR. */
export function fixturesDir(): string {
  const override = process.env[FIXTURES_DIR_ENV];
  if (override) {
    return path.resolve(override);
  }
  const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
  return path.resolve(repoRoot, '..', 'shared', 'fixtures');
}

/**
 * Loads every interaction of every cassette, sorted by name.
 *
 * Parsed cassettes are cached per directory, and each call returns fresh copies, so callers may
 * modify the returned objects. Throws when the directory or a provider folder is missing, or when
 * a cassette does not have the expected shape.
 */
export function loadFixtures(): FixtureExchange[] {
  const dir = fixturesDir();
  let exchanges = cache.get(dir);
  if (!exchanges) {
    exchanges = readFixtureDir(dir);
    cache.set(dir, exchanges);
  }
  return exchanges.map(copyExchange);
}

/** Returns the exchange with the given name (e.g. `chat-basic.yaml#0`), or throws an error listing the available names. */
export function fixture(name: string): FixtureExchange {
  const all = loadFixtures();
  const found = all.find((ex) => ex.name === name);
  if (!found) {
    throw new Error(`Fixture ${JSON.stringify(name)} not found. Available: ${all.map((ex) => ex.name).join(', ')}`);
  }
  return found;
}

/** Returns the response body with any gzip Content-Encoding removed. */
export function decodedBody(ex: FixtureExchange): Buffer {
  if (ex.contentEncoding === 'gzip') {
    return zlib.gunzipSync(ex.body);
  }
  if (ex.contentEncoding !== undefined && ex.contentEncoding !== 'identity') {
    throw new Error(`${ex.name}: unsupported Content-Encoding ${JSON.stringify(ex.contentEncoding)}`);
  }
  return ex.body;
}

/**
 * Computes the token counts reported in the recorded response body, or undefined when the body
 * reports none (streams recorded without `include_usage`, error bodies, non-API requests).
 *
 * Anthropic streams: every field starts from `message_start.message.usage` and is replaced by the
 * value in the last `message_delta.usage` that carries it. The delta counts are final and can be
 * larger: with server-side web search, the `input_tokens` of `message_delta` include the search
 * results and can be several times the `message_start` value. For Anthropic, `reasoningTokens`
 * is `output_tokens_details.thinking_tokens`, which is already included in `output_tokens`.
 *
 * OpenAI: `prompt_tokens`, `completion_tokens`, `completion_tokens_details.reasoning_tokens` and
 * `prompt_tokens_details.cached_tokens` (as cacheReadInputTokens) from the JSON body or from the
 * last stream chunk whose `usage` is not null. Embeddings report only `prompt_tokens`.
 *
 * This parser is written independently of the gateway's, so that tests can compare the two.
 */
export function fixtureUsage(ex: FixtureExchange): FixtureUsage | undefined {
  const text = decodedBody(ex).toString('utf8');
  if (text.trim() === '') {
    return undefined;
  }
  const isStream = isEventStream(ex);
  if (ex.provider === 'anthropic') {
    return isStream ? anthropicStreamUsage(parseSseData(text)) : anthropicUsage(JSON.parse(text)?.usage);
  }
  if (isStream) {
    const withUsage = parseSseData(text).filter((event) => event?.usage != null);
    return openaiUsage(withUsage.at(-1)?.usage);
  }
  return openaiUsage(JSON.parse(text)?.usage);
}

function isEventStream(ex: FixtureExchange): boolean {
  const contentType = headerValue(ex.headers, 'content-type') ?? '';
  return contentType.toLowerCase().startsWith('text/event-stream');
}

/** Parses the `data:` payloads of an SSE body as JSON, skipping the OpenAI `[DONE]` marker. */
function parseSseData(text: string): any[] {
  const events: any[] = [];
  for (const block of text.split(/\r?\n\r?\n/)) {
    const dataLines = block
      .split(/\r?\n/)
      .filter((line) => line.startsWith('data:'))
      .map((line) => line.slice('data:'.length).replace(/^ /, ''));
    if (dataLines.length === 0) {
      continue;
    }
    const data = dataLines.join('\n');
    if (data === '[DONE]') {
      continue;
    }
    events.push(JSON.parse(data));
  }
  return events;
}

function anthropicUsage(usage: any): FixtureUsage | undefined {
  if (usage == null) {
    return undefined;
  }
  return {
    inputTokens: usage.input_tokens ?? 0,
    outputTokens: usage.output_tokens ?? 0,
    cacheCreationInputTokens: usage.cache_creation_input_tokens ?? 0,
    cacheReadInputTokens: usage.cache_read_input_tokens ?? 0,
    reasoningTokens: usage.output_tokens_details?.thinking_tokens ?? 0,
  };
}

function anthropicStreamUsage(events: any[]): FixtureUsage | undefined {
  const start = events.find((event) => event?.type === 'message_start');
  const merged: Record<string, any> = { ...(start?.message?.usage ?? {}) };
  let found = start?.message?.usage != null;
  for (const event of events) {
    if (event?.type === 'message_delta' && event.usage != null) {
      found = true;
      for (const [key, value] of Object.entries(event.usage)) {
        if (value != null) {
          merged[key] = value;
        }
      }
    }
  }
  return found ? anthropicUsage(merged) : undefined;
}

function openaiUsage(usage: any): FixtureUsage | undefined {
  if (usage == null) {
    return undefined;
  }
  return {
    inputTokens: usage.prompt_tokens ?? 0,
    outputTokens: usage.completion_tokens ?? 0,
    cacheCreationInputTokens: 0,
    cacheReadInputTokens: usage.prompt_tokens_details?.cached_tokens ?? 0,
    reasoningTokens: usage.completion_tokens_details?.reasoning_tokens ?? 0,
  };
}

function readFixtureDir(dir: string): FixtureExchange[] {
  if (!fs.existsSync(dir)) {
    throw new Error(
      `Fixtures directory not found: ${dir}. Set ${FIXTURES_DIR_ENV} to a directory containing anthropic/ and openai/ cassettes.`,
    );
  }
  const exchanges: FixtureExchange[] = [];
  for (const provider of PROVIDERS) {
    const providerDir = path.join(dir, provider);
    if (!fs.existsSync(providerDir)) {
      throw new Error(`Fixtures folder not found: ${providerDir}. Set ${FIXTURES_DIR_ENV} to a directory containing anthropic/ and openai/ cassettes.`);
    }
    const files = fs.readdirSync(providerDir).filter((name) => name.endsWith('.yaml') || name.endsWith('.yml'));
    for (const fileName of files) {
      exchanges.push(...readCassette(dir, provider, fileName));
    }
  }

  exchanges.sort(compareByName);
  for (let i = 1; i < exchanges.length; i++) {
    if (exchanges[i].name === exchanges[i - 1].name) {
      throw new Error(`Duplicate fixture name ${exchanges[i].name} in ${exchanges[i - 1].file} and ${exchanges[i].file}`);
    }
  }
  return exchanges;
}

function compareByName(a: FixtureExchange, b: FixtureExchange): number {
  if (a.name === b.name) {
    return 0;
  }
  return a.name < b.name ? -1 : 1;
}

function readCassette(dir: string, provider: FixtureProvider, fileName: string): FixtureExchange[] {
  const file = `${provider}/${fileName}`;
  // The default YAML 1.2 core schema of `yaml` 2.x still resolves the explicit `!!binary` tag
  // and returns a Buffer in Node.
  const document = parse(fs.readFileSync(path.join(dir, file), 'utf8'));
  const interactions = document?.interactions;
  if (!Array.isArray(interactions)) {
    throw new Error(`Invalid cassette ${file}: missing "interactions" list`);
  }

  return interactions.map((interaction: any, index: number) => {
    const where = `${file} interaction ${index}`;
    const request = interaction?.request;
    const response = interaction?.response;
    if (request == null || response == null) {
      throw new Error(`Invalid cassette ${where}: missing request or response`);
    }

    const url = provider === 'anthropic' ? request.uri : request.url;
    const status = provider === 'anthropic' ? response.status?.code : response.code;
    const rawBody = provider === 'anthropic' ? response.body?.string : response.body;
    if (typeof url !== 'string' || typeof status !== 'number') {
      throw new Error(`Invalid cassette ${where}: missing request URL or response status code`);
    }

    const requestBody = toBuffer(request.body, `${where} request body`).toString('utf8');
    const requestJson = parseJsonOrUndefined(requestBody);
    const allHeaders = normalizeHeaders(response.headers, where);
    const headers: Record<string, string[]> = {};
    for (const [headerName, values] of Object.entries(allHeaders)) {
      if (!FRAMING_HEADERS.has(headerName.toLowerCase())) {
        headers[headerName] = values;
      }
    }

    return {
      provider,
      file,
      index,
      name: `${fileName}#${index}`,
      method: String(request.method ?? 'GET').toUpperCase(),
      url,
      path: new URL(url).pathname,
      requestBody,
      requestJson,
      stream: requestJson?.stream === true,
      status,
      headers,
      body: toBuffer(rawBody, `${where} response body`),
      contentEncoding: headerValue(headers, 'content-encoding')?.toLowerCase(),
    };
  });
}

function toBuffer(value: unknown, description: string): Buffer {
  if (value == null) {
    return Buffer.alloc(0);
  }
  if (typeof value === 'string') {
    return Buffer.from(value, 'utf8');
  }
  if (value instanceof Uint8Array) {
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  }
  throw new Error(`Invalid cassette: ${description} is neither a string nor binary data`);
}

function normalizeHeaders(value: unknown, where: string): Record<string, string[]> {
  const headers: Record<string, string[]> = {};
  if (value == null) {
    return headers;
  }
  if (typeof value !== 'object') {
    throw new Error(`Invalid cassette ${where}: response headers are not a map`);
  }
  for (const [headerName, values] of Object.entries(value)) {
    const list = Array.isArray(values) ? values : [values];
    headers[headerName] = list.map((item) => String(item));
  }
  return headers;
}

/** Returns the values of a header joined with ", ", matching its name case-insensitively. */
export function headerValue(headers: Record<string, string[]>, headerName: string): string | undefined {
  const target = headerName.toLowerCase();
  for (const [key, values] of Object.entries(headers)) {
    if (key.toLowerCase() === target) {
      return values.join(', ');
    }
  }
  return undefined;
}

function parseJsonOrUndefined(text: string): any {
  if (text.trim() === '') {
    return undefined;
  }
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function copyExchange(ex: FixtureExchange): FixtureExchange {
  const headers: Record<string, string[]> = {};
  for (const [key, values] of Object.entries(ex.headers)) {
    headers[key] = [...values];
  }
  return {
    ...ex,
    requestJson: ex.requestJson === undefined ? undefined : structuredClone(ex.requestJson),
    headers,
    body: Buffer.from(ex.body),
  };
}
