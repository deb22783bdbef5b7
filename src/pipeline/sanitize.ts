import type { ProviderConfig } from '../config/config.ts';

/** Provider key fragments, masked or not, such as `sk-proj-abc…` or `sk-up****WXYZ`. */
const KEY_FRAGMENT = /\bsk-[A-Za-z0-9_*\-]+/g;

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Removes what an upstream error body may reveal about the gateway's own provider account: key
 * fragments, the key itself, and the base URL (which can be an internal host).
 */
export function sanitizeUpstreamText(text: string, provider: ProviderConfig): string {
  let result = text;
  if (provider.apiKey !== null && provider.apiKey.length >= 8) {
    result = result.split(provider.apiKey).join('[REDACTED]');
    // Providers echo keys masked, such as the first characters followed by asterisks.
    const head = provider.apiKey.slice(0, 8);
    result = result.replace(new RegExp(`${escapeRegExp(head)}[A-Za-z0-9_*.\\-]*`, 'g'), '[redacted key]');
  }
  result = result.replace(KEY_FRAGMENT, '[redacted key]');
  const base = new URL(provider.baseUrl);
  result = result.replace(new RegExp(escapeRegExp(provider.baseUrl), 'g'), '[upstream]');
  result = result.replace(new RegExp(`https?://${escapeRegExp(base.host)}[^\\s"']*`, 'g'), '[upstream]');
  result = result.replace(new RegExp(escapeRegExp(base.host), 'g'), '[upstream]');
  result = result.replace(new RegExp(escapeRegExp(base.hostname), 'g'), '[upstream]');
  return result;
}

/**
 * Masks the gateway's provider key inside a buffer, in place of the key's own bytes so that the
 * body keeps its length. The provider has no reason to send the key, so this is a last line of
 * defence. Streams use StreamKeyMask, which also finds a key split between chunks.
 */
export function maskKeyInChunk(chunk: Buffer, key: Buffer | undefined): Buffer {
  if (key === undefined || chunk.length < key.length) return chunk;
  let at = chunk.indexOf(key);
  if (at === -1) return chunk;
  const copy = Buffer.from(chunk);
  while (at !== -1) {
    copy.fill(0x2a, at, at + key.length);
    at = copy.indexOf(key, at + key.length);
  }
  return copy;
}

/**
 * Masks the provider key across the chunks of a stream. A chunk that ends with the first bytes of
 * the key keeps them back until the next chunk shows whether the rest of the key follows.
 */
export class StreamKeyMask {
  private keyStart: Buffer | undefined;

  constructor(private readonly key: Buffer) {}

  /** Returns the chunk's bytes that are safe to forward now, masked. */
  push(chunk: Buffer): Buffer {
    const data = this.keyStart === undefined ? chunk : Buffer.concat([this.keyStart, chunk]);
    this.keyStart = undefined;
    const masked = maskKeyInChunk(data, this.key);
    const keep = keyStartAtEnd(masked, this.key);
    if (keep === 0) return masked;
    this.keyStart = Buffer.from(masked.subarray(masked.length - keep));
    return masked.subarray(0, masked.length - keep);
  }

  /** Returns the bytes still kept back when the stream ends: a start of the key that never finished. */
  end(): Buffer | undefined {
    const keyStart = this.keyStart;
    this.keyStart = undefined;
    return keyStart;
  }
}

/** Returns the length of the longest end of `data` that is a proper prefix of `key`, or 0. */
function keyStartAtEnd(data: Buffer, key: Buffer): number {
  let at = data.indexOf(key[0], Math.max(0, data.length - key.length + 1));
  while (at !== -1) {
    if (data.compare(key, 0, data.length - at, at) === 0) return data.length - at;
    at = data.indexOf(key[0], at + 1);
  }
  return 0;
}

/** True when a header value carries the provider key, so the header must not reach the client. */
export function headerLeaksKey(value: string | string[] | undefined, key: string | null): boolean {
  if (key === null || value === undefined) return false;
  return Array.isArray(value) ? value.some((item) => item.includes(key)) : value.includes(key);
}
