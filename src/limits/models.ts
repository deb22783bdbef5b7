/** Strips a `provider/` prefix and lower-cases, so `Anthropic/Claude-X` and `claude-x` compare equal. */
export function bareModel(model: string, provider: string): string {
  const lower = model.toLowerCase();
  const prefix = `${provider}/`;
  return lower.startsWith(prefix) ? lower.slice(prefix.length) : lower;
}

/** Only these prefixes name a provider; other slashes are part of a model name (`meta-llama/llama-3`). */
const PROVIDER_PREFIXES = new Set(['anthropic', 'openai']);

function listAllows(entries: readonly string[], provider: string, model: string): boolean {
  for (const entry of entries) {
    const lower = entry.toLowerCase();
    if (lower === '*' || lower === `${provider}/*`) return true;
    const slash = lower.indexOf('/');
    if (slash === -1 || !PROVIDER_PREFIXES.has(lower.slice(0, slash))) {
      if (lower === model) return true;
    } else if (lower.slice(0, slash) === provider && lower.slice(slash + 1) === model) {
      return true;
    }
  }
  return false;
}

/**
 * A model is allowed when both the provider's list from config and the actor's list for the
 * feature allow it. Entries match case-insensitively with or without the `provider/` prefix;
 * an entry with another provider's prefix never matches.
 */
export function isModelAllowed(
  model: string,
  provider: string,
  providerAllowed: readonly string[],
  actorAllowed: readonly string[],
): boolean {
  const bare = bareModel(model, provider);
  return listAllows(providerAllowed, provider, bare) && listAllows(actorAllowed, provider, bare);
}
