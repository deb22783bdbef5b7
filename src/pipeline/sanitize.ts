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
  }
  result = result.replace(KEY_FRAGMENT, '[redacted key]');
  const base = new URL(provider.baseUrl);
  result = result.replace(new RegExp(escapeRegExp(provider.baseUrl), 'g'), '[upstream]');
  result = result.replace(new RegExp(`https?://${escapeRegExp(base.host)}[^\\s"']*`, 'g'), '[upstream]');
  result = result.replace(new RegExp(escapeRegExp(base.host), 'g'), '[upstream]');
  result = result.replace(new RegExp(escapeRegExp(base.hostname), 'g'), '[upstream]');
  return result;
}
