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
 * Masks the gateway's provider key inside a streamed chunk, in place of the key's own bytes so
 * that the stream keeps its length. The provider has no reason to send the key, so this is a
 * last line of defence.
 * NOTE: a key split across two chunks is not found.
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

/** True when a header value carries the provider key, so the header must not reach the client. */
export function headerLeaksKey(value: string | string[] | undefined, key: string | null): boolean {
  if (key === null || value === undefined) return false;
  return Array.isArray(value) ? value.some((item) => item.includes(key)) : value.includes(key);
}
