import { request } from 'undici';
import type { Actor } from '../actors/types.ts';
import type { ProviderConfig, ProviderName } from '../config/config.ts';
import { bareModel, isModelAllowed } from '../limits/models.ts';
import type { Gateway } from './gateway.ts';

export interface ModelEntry {
  id: string;
  object: 'model';
  created: number;
  owned_by: ProviderName;
}

const CATALOG_TTL_MS = 5 * 60_000;
/** A failed listing is retried after this long, not on every call. */
const CATALOG_RETRY_MS = 30_000;
type Catalogs = Map<ProviderName, { expiresAt: number; models: Promise<string[]> }>;
/** Per running gateway, so two gateways in one process never share a provider's list. */
const catalogsByGateway = new WeakMap<Gateway, Catalogs>();

/** Fetches the provider's own model list, cached for five minutes; an empty list on failure. */
function providerCatalog(gateway: Gateway, provider: ProviderConfig): Promise<string[]> {
  let catalogs = catalogsByGateway.get(gateway);
  if (catalogs === undefined) {
    catalogs = new Map();
    catalogsByGateway.set(gateway, catalogs);
  }
  const cached = catalogs.get(provider.name);
  if (cached !== undefined && cached.expiresAt > Date.now()) return cached.models;
  const models = fetchCatalog(gateway, provider, catalogs);
  catalogs.set(provider.name, { expiresAt: Date.now() + CATALOG_TTL_MS, models });
  return models;
}

async function fetchCatalog(gateway: Gateway, provider: ProviderConfig, catalogs: Catalogs): Promise<string[]> {
  const anthropic = provider.name === 'anthropic';
  const url = anthropic ? `${provider.baseUrl}/v1/models?limit=1000` : `${provider.baseUrl}/models`;
  const headers: Record<string, string> = anthropic
    ? { 'x-api-key': provider.apiKey as string, 'anthropic-version': '2023-06-01' }
    : { authorization: `Bearer ${provider.apiKey as string}` };
  try {
    const response = await request(url, { method: 'GET', headers, dispatcher: gateway.dispatcher, signal: AbortSignal.timeout(gateway.config.upstreamTimeoutMs) });
    const body = (await response.body.json()) as { data?: { id?: unknown }[] };
    if (response.statusCode !== 200 || !Array.isArray(body.data)) throw new Error(`status ${response.statusCode}`);
    return body.data.map((entry) => entry.id).filter((id): id is string => typeof id === 'string');
  } catch (error) {
    gateway.logger.warn({ err: error, provider: provider.name }, 'failed to list the provider models');
    const entry = catalogs.get(provider.name);
    if (entry !== undefined) entry.expiresAt = Date.now() + CATALOG_RETRY_MS;
    return [];
  }
}

/**
 * Lists the models the actor may call. Explicit names come from the provider's allowed list or
 * the actor's own lists; where both contain only `*`, the provider's catalog is fetched.
 */
export async function listModels(gateway: Gateway, actor: Actor): Promise<ModelEntry[]> {
  const result = new Map<string, ModelEntry>();
  for (const provider of Object.values(gateway.config.providers)) {
    if (provider.apiKey === null) continue;
    for (const limit of Object.values(actor.limits)) {
      if (limit === undefined || limit.limit <= 0) continue;
      const candidates = new Set<string>();
      for (const list of [provider.allowedModels, limit.allowedModels]) {
        for (const entry of list) {
          if (entry === '*' || entry.toLowerCase() === `${provider.name}/*`) continue;
          const slash = entry.indexOf('/');
          if (slash !== -1 && entry.slice(0, slash).toLowerCase() !== provider.name) continue;
          candidates.add(bareModel(entry, provider.name));
        }
      }
      if (candidates.size === 0) {
        for (const id of await providerCatalog(gateway, provider)) candidates.add(id);
      }
      for (const id of candidates) {
        if (isModelAllowed(id, provider.name, provider.allowedModels, limit.allowedModels) && !result.has(id)) {
          result.set(id, { id, object: 'model', created: 0, owned_by: provider.name });
        }
      }
    }
  }
  return [...result.values()].sort((a, b) => a.id.localeCompare(b.id));
}
