import { STATUS_CODES, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import { once } from 'node:events';
import type { Readable } from 'node:stream';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import type { ProviderConfig } from '../config/config.ts';
import { GatewayError } from '../errors/errors.ts';
import type { Gateway } from '../server/gateway.ts';
import type { RequestContext } from './context.ts';
import { headerLeaksKey, sanitizeUpstreamText } from './sanitize.ts';

/** Client headers passed on to the provider. Everything else, credentials included, stays behind. */
const FORWARDED_REQUEST_HEADERS = new Set([
  'content-type',
  'accept',
  'user-agent',
  'anthropic-version',
  'anthropic-beta',
  'openai-beta',
  'idempotency-key',
]);
const FORWARDED_REQUEST_PREFIX = 'x-stainless-';

/** Response headers never passed back: hop-by-hop, framing the gateway recomputes, provider account details. */
const DROPPED_RESPONSE_HEADERS = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'content-length',
  'content-encoding',
  'set-cookie',
  'alt-svc',
  'request-id',
  'x-request-id',
  'anthropic-organization-id',
  'openai-organization',
  'openai-project',
  'retry-after',
]);
const DROPPED_RESPONSE_PREFIXES = ['x-ratelimit-', 'anthropic-ratelimit-'];

/** Largest upstream error body the gateway reads to clean it; the rest is cut off. */
const MAX_ERROR_BODY = 1024 * 1024;

export function upstreamRequestHeaders(incoming: IncomingHttpHeaders, provider: ProviderConfig, stream: boolean, bodyLength: number): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const name in incoming) {
    if (FORWARDED_REQUEST_HEADERS.has(name) || name.startsWith(FORWARDED_REQUEST_PREFIX)) {
      const value = incoming[name];
      headers[name] = Array.isArray(value) ? value.join(', ') : (value as string);
    }
  }
  headers['content-type'] ??= 'application/json';
  headers['content-length'] = String(bodyLength);
  // Compressed SSE would have to be inflated event by event; JSON bodies are small enough to inflate whole.
  headers['accept-encoding'] = stream ? 'identity' : 'gzip, deflate, br';
  if (provider.name === 'anthropic') {
    headers['x-api-key'] = provider.apiKey as string;
    headers['anthropic-version'] ??= '2023-06-01';
  } else {
    headers.authorization = `Bearer ${provider.apiKey as string}`;
    if (provider.organization !== null) headers['openai-organization'] = provider.organization;
  }
  return headers;
}

/** Copies the upstream's end-to-end headers, minus those named in its `Connection` header. */
export function clientResponseHeaders(upstream: IncomingHttpHeaders, requestId: string, providerKey: string | null = null): OutgoingHttpHeaders {
  const named = new Set<string>();
  const connection = upstream.connection;
  if (typeof connection === 'string') {
    for (const token of connection.split(',')) named.add(token.trim().toLowerCase());
  }
  const headers: OutgoingHttpHeaders = {};
  for (const name in upstream) {
    if (DROPPED_RESPONSE_HEADERS.has(name) || named.has(name)) continue;
    if (DROPPED_RESPONSE_PREFIXES.some((prefix) => name.startsWith(prefix))) continue;
    if (headerLeaksKey(upstream[name], providerKey)) continue;
    headers[name] = upstream[name];
  }
  const upstreamId = upstream['request-id'] ?? upstream['x-request-id'];
  if (upstreamId !== undefined) headers['upstream-request-id'] = upstreamId;
  headers['request-id'] = requestId;
  headers['x-request-id'] = requestId;
  return headers;
}

/**
 * Wraps the upstream body in a decoder for its content encoding. Returns undefined for an
 * encoding the gateway did not ask for and cannot decode.
 */
export function decodeBody(body: Readable, encoding: string | string[] | undefined): Readable | undefined {
  const value = (Array.isArray(encoding) ? encoding.join(',') : (encoding ?? '')).trim().toLowerCase();
  if (value === '' || value === 'identity') return body;
  let decoder: NodeJS.ReadWriteStream;
  if (value === 'gzip' || value === 'x-gzip') decoder = createGunzip();
  else if (value === 'deflate') decoder = createInflate();
  else if (value === 'br') decoder = createBrotliDecompress();
  else return undefined;
  body.on('error', (error) => (decoder as unknown as Readable).destroy(error));
  return body.pipe(decoder as unknown as NodeJS.WritableStream) as unknown as Readable;
}

/** Reads a whole (decoded) body. Error bodies are cut off at `limit` bytes. */
export async function readAll(body: Readable, limit = Number.POSITIVE_INFINITY): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    const buffer = chunk as Buffer;
    if (size + buffer.length > limit) {
      chunks.push(buffer.subarray(0, limit - size));
      size = limit;
      body.destroy();
      break;
    }
    chunks.push(buffer);
    size += buffer.length;
  }
  return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
}

/** Seconds from an upstream `retry-after` (seconds or an HTTP date), or undefined. */
export function retryAfterSeconds(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  if (text === undefined || text.trim() === '') return undefined;
  if (/^\d+(\.\d+)?$/.test(text.trim())) return Math.max(0, Math.ceil(Number(text)));
  // An HTTP date names the weekday; anything else (such as "-5") is not a date.
  if (!/^[A-Za-z]{3},/.test(text.trim())) return undefined;
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : Math.max(0, Math.ceil((date - now) / 1000));
}

/** Relays an upstream error status with a cleaned body; a 429 becomes 503. */
export async function relayUpstreamError(gateway: Gateway, ctx: RequestContext, provider: ProviderConfig, status: number, headers: IncomingHttpHeaders, body: Readable): Promise<void> {
  const { res } = ctx;
  ctx.outcome = 'upstream_error';
  if (status === 429) {
    body.resume();
    const seconds = retryAfterSeconds(headers['retry-after']) ?? provider.retryAfterSeconds;
    throw new GatewayError(
      'upstream_rate_limited',
      `the ${provider.name} provider is rate limiting this gateway, which shares one provider quota among all callers; retry after ${seconds} seconds`,
      { headers: { 'retry-after': String(seconds) } },
    );
  }
  const decoded = decodeBody(body, headers['content-encoding']) ?? body;
  let raw: Buffer;
  try {
    raw = await readAll(decoded, MAX_ERROR_BODY);
  } catch {
    raw = Buffer.alloc(0);
  }
  const text = sanitizeUpstreamText(raw.toString('utf8'), provider);
  const out = clientResponseHeaders(headers, ctx.requestId, provider.apiKey);
  const retryAfter = headers['retry-after'];
  if (retryAfter !== undefined) out['retry-after'] = retryAfter;
  out['content-length'] = Buffer.byteLength(text);
  ctx.status = status;
  gateway.logger.debug({ requestId: ctx.requestId, status, body: text.slice(0, 512) }, 'upstream returned an error status');
  res.writeHead(status, reasonPhrase(status), out);
  res.end(text);
}

/** Status lines for codes Node does not name, such as Anthropic's 529. */
const EXTRA_REASONS: Record<number, string> = { 529: 'Overloaded' };

export function reasonPhrase(status: number): string {
  return STATUS_CODES[status] ?? EXTRA_REASONS[status] ?? 'Unknown';
}

/** Writes a chunk, waiting for the client to drain when its socket buffer is full. */
export async function writeChunk(ctx: RequestContext, chunk: Buffer): Promise<void> {
  if (ctx.res.write(chunk)) return;
  if (ctx.res.destroyed) return;
  await Promise.race([once(ctx.res, 'drain'), once(ctx.res, 'close')]);
}
