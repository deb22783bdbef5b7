import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { FEATURES, isFeature, type FeatureLimit, type FeatureLimits } from '../actors/types.ts';
import { parseDuration } from './duration.ts';

export type ProviderName = 'anthropic' | 'openai';

export interface ProviderConfig {
  name: ProviderName;
  apiKey: string | null;
  baseUrl: string;
  /** Lower-cased model names without a provider prefix; `*` allows every model. */
  allowedModels: string[];
  /** `retry-after` seconds sent with a 503 when the provider returned 429 without its own value. */
  retryAfterSeconds: number;
  /** OpenAI only: sent as `OpenAI-Organization`. */
  organization: string | null;
}

export interface Config {
  host: string;
  port: number;
  dataDir: string;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  adminToken: string | null;
  allowAnonymous: boolean;
  anonymousLimits: FeatureLimits;
  maxBodyBytes: number;
  upstreamTimeoutMs: number;
  streamIdleTimeoutMs: number;
  shutdownGraceMs: number;
  usageFlushIntervalMs: number;
  trustProxy: boolean;
  /** Output tokens reserved against token budgets when a request sets no `max_tokens`. */
  tokenReservationDefault: number;
  redis: {
    /** `redis://` or `rediss://` URL; the shared limiter and actor-change bus are on when set. */
    url: string | null;
    keyPrefix: string;
    commandTimeoutMs: number;
    /** `open` admits requests while Redis is down; `closed` rejects them with 503. */
    failureMode: 'open' | 'closed';
  };
  /** `postgres://` URL; actors, tokens and usage events live in Postgres when set. */
  databaseUrl: string | null;
  /** Postgres schema for the gateway's tables; the connection's default search path when null. */
  databaseSchema: string | null;
  /** Largest size of the on-disk spool that keeps usage events while the database is down. */
  usageSpoolMaxBytes: number;
  actorSource: {
    /** Base URL of the remote actor source; off when null. */
    url: string | null;
    secret: string | null;
    ttlMs: number;
    negativeTtlMs: number;
    /** Full sync period; 0 turns the periodic sync off. */
    syncIntervalMs: number;
    timeoutMs: number;
  };
  providers: Record<ProviderName, ProviderConfig>;
}

/** A start-up configuration problem, reported as one line that names the setting. */
export class ConfigError extends Error {
  constructor(readonly setting: string, readonly problem: string, readonly expected: string) {
    super(`invalid setting ${printable(setting)}: ${problem}; expected ${expected}`);
    this.name = 'ConfigError';
  }
}

/** Quotes a name that contains control characters, so the error stays on one line. */
function printable(name: string): string {
  return /[\x00-\x1f\x7f]/.test(name) ? JSON.stringify(name) : name;
}

type Parser = (raw: unknown, setting: string) => unknown;

interface Setting {
  env: string;
  /** Dotted path in the YAML file and in the resulting config object. */
  key: string;
  defaultValue: unknown;
  parse: Parser;
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

function describe(raw: unknown): string {
  return typeof raw === 'string' ? JSON.stringify(raw) : String(JSON.stringify(raw));
}

const text: Parser = (raw, setting) => {
  if (typeof raw !== 'string' && typeof raw !== 'number') {
    throw new ConfigError(setting, `got ${describe(raw)}`, 'a string');
  }
  return String(raw);
};

const optionalText: Parser = (raw, setting) => {
  if (raw === null || raw === undefined || raw === '') return null;
  return text(raw, setting);
};

function integer(min: number, max: number): Parser {
  return (raw, setting) => {
    const value = typeof raw === 'string' && /^\d+$/.test(raw.trim()) ? Number(raw) : raw;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
      throw new ConfigError(setting, `got ${describe(raw)}`, `a whole number from ${min} to ${max}`);
    }
    return value;
  };
}

const boolean: Parser = (raw, setting) => {
  if (typeof raw === 'boolean') return raw;
  if (typeof raw === 'string' && /^(true|1|yes)$/i.test(raw.trim())) return true;
  if (typeof raw === 'string' && /^(false|0|no)$/i.test(raw.trim())) return false;
  throw new ConfigError(setting, `got ${describe(raw)}`, 'true or false');
};

function duration(minMs: number): Parser {
  return (raw, setting) => {
    const ms = typeof raw === 'string' || typeof raw === 'number' ? parseDuration(raw) : undefined;
    if (ms === undefined || ms < minMs) {
      throw new ConfigError(setting, `got ${describe(raw)}`, `a duration of at least ${minMs} ms such as 30s, 10m, 1h30m, or whole seconds`);
    }
    return ms;
  };
}

const durationSeconds: Parser = (raw, setting) => Math.ceil((duration(0)(raw, setting) as number) / 1000);

const logLevel: Parser = (raw, setting) => {
  if (typeof raw !== 'string' || !LOG_LEVELS.includes(raw.trim().toLowerCase())) {
    throw new ConfigError(setting, `got ${describe(raw)}`, `one of ${LOG_LEVELS.join(', ')}`);
  }
  return raw.trim().toLowerCase();
};

const url: Parser = (raw, setting) => {
  const value = text(raw, setting) as string;
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new ConfigError(setting, `got ${describe(raw)}`, 'an absolute http:// or https:// URL');
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new ConfigError(setting, `got ${describe(raw)}`, 'an absolute http:// or https:// URL');
  }
  if (parsed.search || parsed.hash) {
    throw new ConfigError(setting, 'a base URL cannot carry a query or fragment', 'a URL such as https://api.openai.com/v1');
  }
  return value.replace(/\/+$/, '');
};

function oneOf(values: string[]): Parser {
  return (raw, setting) => {
    const value = typeof raw === 'string' ? raw.trim().toLowerCase() : raw;
    if (typeof value !== 'string' || !values.includes(value)) {
      throw new ConfigError(setting, `got ${describe(raw)}`, `one of ${values.join(', ')}`);
    }
    return value;
  };
}

function optionalUrl(protocols: string[], example: string): Parser {
  return (raw, setting) => {
    const value = optionalText(raw, setting) as string | null;
    if (value === null) return null;
    let parsed: URL | undefined;
    try {
      parsed = new URL(value);
    } catch {
      parsed = undefined;
    }
    if (parsed === undefined) {
      // The value can hold a password, so it is not repeated in the message.
      throw new ConfigError(setting, 'the value is not a valid URL', `a URL such as ${example}`);
    }
    if (!protocols.includes(parsed.protocol)) {
      throw new ConfigError(setting, `the URL scheme ${parsed.protocol} is not supported`, `${protocols.map((protocol) => `${protocol}//`).join(' or ')}, such as ${example}`);
    }
    return value;
  };
}

const identifier: Parser = (raw, setting) => {
  const value = optionalText(raw, setting) as string | null;
  if (value !== null && !/^[a-z_][a-z0-9_]{0,62}$/.test(value)) {
    throw new ConfigError(setting, `got ${describe(raw)}`, 'a lower-case SQL identifier such as llm_proxy');
  }
  return value;
};

const secret: Parser = (raw, setting) => {
  if (typeof raw === 'number') {
    // YAML reads an unquoted long number as a float and rounds it, so the secret would change.
    throw new ConfigError(setting, 'the value is a number', 'a quoted string in YAML, such as "0123456789012345"');
  }
  const value = optionalText(raw, setting) as string | null;
  if (value !== null && /\s/.test(value)) {
    throw new ConfigError(setting, 'the value contains white space', 'the key exactly as issued, without spaces or line breaks');
  }
  return value;
};

const adminToken: Parser = (raw, setting) => {
  const value = secret(raw, setting) as string | null;
  if (value !== null && value.length < 16) {
    throw new ConfigError(setting, `it is ${value.length} characters long`, 'at least 16 characters, for example from `openssl rand -hex 32`');
  }
  return value;
};

const modelList: Parser = (raw, setting) => {
  const items = typeof raw === 'string' ? raw.split(',') : raw;
  if (!Array.isArray(items)) {
    throw new ConfigError(setting, `got ${describe(raw)}`, 'a list of model names, or a comma-separated string');
  }
  const models = items.map((item) => String(item).trim().toLowerCase()).filter((item) => item !== '');
  if (models.length === 0) {
    throw new ConfigError(setting, 'the list is empty', 'at least one model name, or * for every model');
  }
  return models;
};

const limits: Parser = (raw, setting) => parseFeatureLimits(raw, setting);

const OPTIONAL_LIMIT_FIELDS = ['concurrency', 'tokenLimit', 'inputTokenLimit', 'outputTokenLimit'] as const;
const KNOWN_LIMIT_FIELDS = new Set(['limit', 'interval', 'intervalSeconds', 'allowedModels', ...OPTIONAL_LIMIT_FIELDS]);

/**
 * Validates `{<feature>: {limit, interval, allowedModels}}` as used by the config file and the
 * admin API. Throws ConfigError naming the first invalid field.
 */
export function parseFeatureLimits(raw: unknown, setting: string): FeatureLimits {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError(setting, `got ${describe(raw)}`, `an object keyed by feature (${FEATURES.join(', ')})`);
  }
  const result: FeatureLimits = {};
  for (const [feature, value] of Object.entries(raw)) {
    const where = `${setting}.${feature}`;
    if (!isFeature(feature)) {
      throw new ConfigError(setting, `unknown feature ${JSON.stringify(feature)}`, `one of ${FEATURES.join(', ')}`);
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw new ConfigError(where, `got ${describe(value)}`, 'an object {limit, interval, allowedModels}');
    }
    const entry = value as Record<string, unknown>;
    const limit = integer(0, Number.MAX_SAFE_INTEGER)(entry.limit, `${where}.limit`) as number;
    const intervalMs = duration(1000)(entry.interval ?? entry.intervalSeconds, `${where}.interval`) as number;
    const models = entry.allowedModels === undefined ? ['*'] : (modelList(entry.allowedModels, `${where}.allowedModels`) as string[]);
    const parsed: FeatureLimit = { limit, intervalSeconds: Math.round(intervalMs / 1000), allowedModels: models };
    for (const field of OPTIONAL_LIMIT_FIELDS) {
      const value = entry[field];
      if (value === undefined || value === null) continue;
      if (feature === 'embeddings' && field !== 'concurrency') {
        throw new ConfigError(`${where}.${field}`, 'embeddings limits are already counted in tokens', 'only limit, interval, allowedModels and concurrency for embeddings');
      }
      parsed[field] = integer(1, Number.MAX_SAFE_INTEGER)(value, `${where}.${field}`) as number;
    }
    const unknownField = Object.keys(entry).find((key) => !KNOWN_LIMIT_FIELDS.has(key));
    if (unknownField !== undefined) {
      throw new ConfigError(`${where}.${unknownField}`, 'unknown field', `one of ${[...KNOWN_LIMIT_FIELDS].join(', ')}`);
    }
    result[feature] = parsed;
  }
  return result;
}

const DEFAULT_ANONYMOUS_LIMITS: FeatureLimits = {
  chat_completions: { limit: 50, intervalSeconds: 86_400, allowedModels: ['*'] },
  code_completions: { limit: 1000, intervalSeconds: 86_400, allowedModels: ['*'] },
  embeddings: { limit: 100_000, intervalSeconds: 86_400, allowedModels: ['*'] },
};

/** Every setting, its environment variable, its config-file key and its default. */
export const SETTINGS: Setting[] = [
  { env: 'LLM_PROXY_HOST', key: 'host', defaultValue: '127.0.0.1', parse: text },
  { env: 'LLM_PROXY_PORT', key: 'port', defaultValue: 9992, parse: integer(0, 65535) },
  { env: 'LLM_PROXY_DATA_DIR', key: 'dataDir', defaultValue: './data', parse: text },
  { env: 'LLM_PROXY_LOG_LEVEL', key: 'logLevel', defaultValue: 'info', parse: logLevel },
  { env: 'LLM_PROXY_ADMIN_TOKEN', key: 'adminToken', defaultValue: null, parse: adminToken },
  { env: 'LLM_PROXY_ALLOW_ANONYMOUS', key: 'allowAnonymous', defaultValue: false, parse: boolean },
  { env: 'LLM_PROXY_ANONYMOUS_LIMITS', key: 'anonymousLimits', defaultValue: DEFAULT_ANONYMOUS_LIMITS, parse: limits },
  { env: 'LLM_PROXY_MAX_BODY_BYTES', key: 'maxBodyBytes', defaultValue: 32 * 1024 * 1024, parse: integer(1024, 1024 * 1024 * 1024) },
  { env: 'LLM_PROXY_UPSTREAM_TIMEOUT', key: 'upstreamTimeout', defaultValue: 60_000, parse: duration(100) },
  { env: 'LLM_PROXY_STREAM_IDLE_TIMEOUT', key: 'streamIdleTimeout', defaultValue: 60_000, parse: duration(100) },
  { env: 'LLM_PROXY_SHUTDOWN_GRACE', key: 'shutdownGrace', defaultValue: 30_000, parse: duration(0) },
  { env: 'LLM_PROXY_USAGE_FLUSH_INTERVAL', key: 'usageFlushInterval', defaultValue: 1000, parse: duration(10) },
  { env: 'LLM_PROXY_TRUST_PROXY', key: 'trustProxy', defaultValue: false, parse: boolean },
  { env: 'LLM_PROXY_TOKEN_RESERVATION_DEFAULT', key: 'tokenReservationDefault', defaultValue: 4096, parse: integer(0, 10_000_000) },
  { env: 'LLM_PROXY_REDIS_URL', key: 'redis.url', defaultValue: null, parse: optionalUrl(['redis:', 'rediss:'], 'redis://127.0.0.1:6379') },
  { env: 'LLM_PROXY_REDIS_KEY_PREFIX', key: 'redis.keyPrefix', defaultValue: 'llmp:', parse: text },
  { env: 'LLM_PROXY_REDIS_TIMEOUT', key: 'redis.timeout', defaultValue: 50, parse: duration(1) },
  { env: 'LLM_PROXY_REDIS_FAILURE_MODE', key: 'redis.failureMode', defaultValue: 'open', parse: oneOf(['open', 'closed']) },
  { env: 'LLM_PROXY_DATABASE_URL', key: 'databaseUrl', defaultValue: null, parse: optionalUrl(['postgres:', 'postgresql:'], 'postgres://user@127.0.0.1:5432/llm_proxy') },
  { env: 'LLM_PROXY_DATABASE_SCHEMA', key: 'databaseSchema', defaultValue: null, parse: identifier },
  { env: 'LLM_PROXY_USAGE_SPOOL_MAX_BYTES', key: 'usageSpoolMaxBytes', defaultValue: 1024 * 1024 * 1024, parse: integer(1024 * 1024, Number.MAX_SAFE_INTEGER) },
  { env: 'LLM_PROXY_ACTOR_SOURCE_URL', key: 'actorSource.url', defaultValue: null, parse: optionalUrl(['http:', 'https:'], 'https://accounts.example.com/llm-proxy') },
  { env: 'LLM_PROXY_ACTOR_SOURCE_SECRET', key: 'actorSource.secret', defaultValue: null, parse: secret },
  { env: 'LLM_PROXY_ACTOR_SOURCE_TTL', key: 'actorSource.ttl', defaultValue: 300_000, parse: duration(1000) },
  { env: 'LLM_PROXY_ACTOR_SOURCE_NEGATIVE_TTL', key: 'actorSource.negativeTtl', defaultValue: 30_000, parse: duration(0) },
  { env: 'LLM_PROXY_ACTOR_SOURCE_SYNC_INTERVAL', key: 'actorSource.syncInterval', defaultValue: 120_000, parse: duration(0) },
  { env: 'LLM_PROXY_ACTOR_SOURCE_TIMEOUT', key: 'actorSource.timeout', defaultValue: 5000, parse: duration(10) },
  { env: 'LLM_PROXY_ANTHROPIC_API_KEY', key: 'providers.anthropic.apiKey', defaultValue: null, parse: secret },
  { env: 'LLM_PROXY_ANTHROPIC_BASE_URL', key: 'providers.anthropic.baseUrl', defaultValue: 'https://api.anthropic.com', parse: url },
  { env: 'LLM_PROXY_ANTHROPIC_ALLOWED_MODELS', key: 'providers.anthropic.allowedModels', defaultValue: ['*'], parse: modelList },
  { env: 'LLM_PROXY_ANTHROPIC_RETRY_AFTER', key: 'providers.anthropic.retryAfter', defaultValue: 2, parse: durationSeconds },
  { env: 'LLM_PROXY_OPENAI_API_KEY', key: 'providers.openai.apiKey', defaultValue: null, parse: secret },
  { env: 'LLM_PROXY_OPENAI_BASE_URL', key: 'providers.openai.baseUrl', defaultValue: 'https://api.openai.com/v1', parse: url },
  { env: 'LLM_PROXY_OPENAI_ALLOWED_MODELS', key: 'providers.openai.allowedModels', defaultValue: ['*'], parse: modelList },
  { env: 'LLM_PROXY_OPENAI_RETRY_AFTER', key: 'providers.openai.retryAfter', defaultValue: 30, parse: durationSeconds },
  { env: 'LLM_PROXY_OPENAI_ORGANIZATION', key: 'providers.openai.organization', defaultValue: null, parse: optionalText },
];

const KNOWN_KEYS = new Set(SETTINGS.map((setting) => setting.key));

function readPath(source: Record<string, unknown>, path: string): unknown {
  let current: unknown = source;
  for (const part of path.split('.')) {
    if (current === null || typeof current !== 'object') return undefined;
    current = (current as Record<string, unknown>)[part];
  }
  return current;
}

/** Lists the dotted leaf keys of a parsed YAML document, stopping at known settings. */
function collectKeys(source: unknown, prefix: string, out: string[]): void {
  if (source === null || typeof source !== 'object' || Array.isArray(source)) return;
  for (const [key, value] of Object.entries(source)) {
    const path = prefix === '' ? key : `${prefix}.${key}`;
    if (KNOWN_KEYS.has(path)) continue;
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) collectKeys(value, path, out);
    else out.push(path);
  }
}

function readConfigFile(path: string): Record<string, unknown> {
  let content: string;
  try {
    content = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(`config file ${path}`, `it cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`, 'a readable YAML file');
  }
  let document: unknown;
  try {
    document = parseYaml(content);
  } catch (error) {
    throw new ConfigError(`config file ${path}`, `it is not valid YAML (${(error as Error).message.split('\n')[0]})`, 'a YAML mapping of settings');
  }
  if (document === null || document === undefined) return {};
  if (typeof document !== 'object' || Array.isArray(document)) {
    throw new ConfigError(`config file ${path}`, 'the top level is not a mapping', 'a YAML mapping of settings');
  }
  const unknown: string[] = [];
  collectKeys(document, '', unknown);
  if (unknown.length > 0) {
    throw new ConfigError(`${unknown[0]} in ${path}`, 'unknown key', `one of the keys in docs/configuration.md`);
  }
  return document as Record<string, unknown>;
}

/**
 * Builds the configuration from defaults, then the YAML file, then environment variables.
 * Throws ConfigError on the first invalid value.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, configPath?: string): Config {
  const path = configPath ?? (env.LLM_PROXY_CONFIG || undefined);
  const file = path === undefined ? {} : readConfigFile(resolve(path));
  const values = new Map<string, unknown>();
  for (const setting of SETTINGS) {
    const fromEnv = env[setting.env];
    const fromFile = readPath(file, setting.key);
    if (fromEnv !== undefined && fromEnv !== '') {
      let raw: unknown = fromEnv;
      if (setting.key === 'anonymousLimits') {
        try {
          raw = JSON.parse(fromEnv);
        } catch {
          throw new ConfigError(setting.env, 'it is not valid JSON', 'a JSON object such as {"chat_completions":{"limit":50,"interval":"24h"}}');
        }
      }
      values.set(setting.key, setting.parse(raw, setting.env));
    } else if (fromFile !== undefined) {
      try {
        values.set(setting.key, setting.parse(fromFile, setting.key));
      } catch (error) {
        if (error instanceof ConfigError) throw new ConfigError(`${error.setting} in ${path}`, error.problem, error.expected);
        throw error;
      }
    } else {
      values.set(setting.key, setting.defaultValue);
    }
  }
  const get = <T>(key: string) => values.get(key) as T;
  const provider = (name: ProviderName): ProviderConfig => ({
    name,
    apiKey: get<string | null>(`providers.${name}.apiKey`),
    baseUrl: get<string>(`providers.${name}.baseUrl`),
    allowedModels: get<string[]>(`providers.${name}.allowedModels`),
    retryAfterSeconds: get<number>(`providers.${name}.retryAfter`),
    organization: name === 'openai' ? get<string | null>('providers.openai.organization') : null,
  });
  return {
    host: get('host'),
    port: get('port'),
    dataDir: get('dataDir'),
    logLevel: get('logLevel'),
    adminToken: get('adminToken'),
    allowAnonymous: get('allowAnonymous'),
    anonymousLimits: get('anonymousLimits'),
    maxBodyBytes: get('maxBodyBytes'),
    upstreamTimeoutMs: get('upstreamTimeout'),
    streamIdleTimeoutMs: get('streamIdleTimeout'),
    shutdownGraceMs: get('shutdownGrace'),
    usageFlushIntervalMs: get('usageFlushInterval'),
    trustProxy: get('trustProxy'),
    tokenReservationDefault: get('tokenReservationDefault'),
    redis: {
      url: get('redis.url'),
      keyPrefix: get('redis.keyPrefix'),
      commandTimeoutMs: get('redis.timeout'),
      failureMode: get('redis.failureMode'),
    },
    databaseUrl: get('databaseUrl'),
    databaseSchema: get('databaseSchema'),
    usageSpoolMaxBytes: get('usageSpoolMaxBytes'),
    actorSource: {
      url: get<string | null>('actorSource.url')?.replace(/\/+$/, '') ?? null,
      secret: get('actorSource.secret'),
      ttlMs: get('actorSource.ttl'),
      negativeTtlMs: get('actorSource.negativeTtl'),
      syncIntervalMs: get('actorSource.syncInterval'),
      timeoutMs: get('actorSource.timeout'),
    },
    providers: { anthropic: provider('anthropic'), openai: provider('openai') },
  };
}
