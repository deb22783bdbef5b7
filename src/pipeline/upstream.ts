import { STATUS_CODES, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import type { Transform } from 'node:stream';
import { promisify } from 'node:util';
import { brotliDecompress, createBrotliDecompress, createGunzip, createInflate, gunzip, inflate } from 'node:zlib';
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
export const MAX_ERROR_BODY = 1024 * 1024;

/** A response body collected whole (JSON, or an error status), for the pipeline to relay. */
export interface CollectedResponse {
  status: number;
  headers: IncomingHttpHeaders;
  /** Raw bytes as received, still in the upstream's content encoding. */
  body: Buffer;
}

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
  if (upstreamId !== undefined && !headerLeaksKey(upstreamId, providerKey)) headers['upstream-request-id'] = upstreamId;
  headers['request-id'] = requestId;
  headers['x-request-id'] = requestId;
  return headers;
}

/** Returns the response's content encoding, lowercased, or '' for none and for identity. */
export function contentEncoding(headers: IncomingHttpHeaders): string {
  const encoding = headers['content-encoding'];
  const value = (Array.isArray(encoding) ? encoding.join(',') : (encoding ?? '')).trim().toLowerCase();
  return value === 'identity' ? '' : value;
}

/** Creates a streaming decoder for a content encoding; returns undefined for one the gateway cannot decode. */
export function createDecoder(encoding: string): Transform | undefined {
  if (encoding === 'gzip' || encoding === 'x-gzip') return createGunzip();
  if (encoding === 'deflate') return createInflate();
  if (encoding === 'br') return createBrotliDecompress();
  return undefined;
}

const gunzipAsync = promisify(gunzip);
const inflateAsync = promisify(inflate);
const brotliAsync = promisify(brotliDecompress);

/**
 * Decodes a whole body in its content encoding (as returned by contentEncoding). Returns
 * undefined for an encoding the gateway did not ask for and cannot decode; rejects on corrupt data.
 */
export async function decodeWhole(body: Buffer, encoding: string): Promise<Buffer | undefined> {
  if (encoding === '') return body;
  if (encoding === 'gzip' || encoding === 'x-gzip') return gunzipAsync(body);
  if (encoding === 'deflate') return inflateAsync(body);
  if (encoding === 'br') return brotliAsync(body);
  return undefined;
}

/**
 * Decodes the first `maxBytes` bytes of a body, for error bodies that are cut off anyway. The
 * decoder stops there, so a small compressed body cannot expand without bound. Returns undefined
 * for an encoding the gateway cannot decode, and what was decoded so far when the data is corrupt.
 */
export function decodeHead(body: Buffer, encoding: string, maxBytes: number): Promise<Buffer | undefined> {
  if (encoding === '') return Promise.resolve(body.subarray(0, maxBytes));
  const decoder = createDecoder(encoding);
  if (decoder === undefined) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const finish = () => {
      decoder.destroy();
      resolve(Buffer.concat(chunks, size).subarray(0, maxBytes));
    };
    decoder.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
      if (size >= maxBytes) finish();
    });
    decoder.on('end', finish);
    decoder.on('error', finish);
    decoder.end(body);
  });
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
export async function relayUpstreamError(gateway: Gateway, ctx: RequestContext, provider: ProviderConfig, response: CollectedResponse): Promise<void> {
  const { res } = ctx;
  const { status, headers } = response;
  ctx.outcome = 'upstream_error';
  if (status === 429) {
    const seconds = retryAfterSeconds(headers['retry-after']) ?? provider.retryAfterSeconds;
    throw new GatewayError(
      'upstream_rate_limited',
      `the ${provider.name} provider is rate limiting this gateway, which shares one provider quota among all callers; retry after ${seconds} seconds`,
      { headers: { 'retry-after': String(seconds) } },
    );
  }
  // A body in an encoding the gateway cannot decode is cleaned as it is.
  const raw = (await decodeHead(response.body, contentEncoding(headers), MAX_ERROR_BODY)) ?? response.body.subarray(0, MAX_ERROR_BODY);
  const text = sanitizeUpstreamText(raw.toString('utf8'), provider);
  const out = ctx.responseHeaders(headers, provider.apiKey);
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
