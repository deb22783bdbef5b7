import { request, type Dispatcher } from 'undici';
import { ConfigError, parseFeatureLimits } from '../config/config.ts';
import type { Logger } from '../logging/logger.ts';
import type { TokenLookup } from '../storage/store.ts';
import type { Actor, TokenRecord } from './types.ts';

/**
 * Client for a central account service that owns actors and tokens (the remote actor source).
 * The contract, also described in docs/deployment.md:
 *
 * - `POST {url}/lookup` with `{"tokenHash": "<hex SHA-256 of the token>"}` returns 200 with one
 *   entry, or 404 when the token is unknown.
 * - `GET {url}/sync?cursor=<cursor>` answers `{"entries": [...], "nextCursor": "..." | null}`;
 *   the first page has no cursor.
 *
 * An entry is `{"tokenHash", "token": {"id", "expiresAt"?, "revokedAt"?}, "actor": {"id", "name",
 * "enabled"?, "limits"}}`. Every call carries `Authorization: Bearer <secret>`.
 */
export interface RemoteEntry {
  tokenHash: string;
  lookup: TokenLookup;
}

export class RemoteSourceError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RemoteSourceError';
  }
}

const HASH = /^[0-9a-f]{64}$/;
const MAX_SYNC_PAGES = 10_000;

function isoOrNull(value: unknown, field: string): string | null {
  if (value === undefined || value === null) return null;
  const at = typeof value === 'string' ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(at)) throw new RemoteSourceError(`${field}: expected an ISO 8601 date-time`);
  return new Date(at).toISOString();
}

/** Validates one entry from the source; throws RemoteSourceError naming the bad field. */
export function parseRemoteEntry(raw: unknown): RemoteEntry {
  if (raw === null || typeof raw !== 'object') throw new RemoteSourceError('entry: expected an object');
  const entry = raw as Record<string, any>;
  if (typeof entry.tokenHash !== 'string' || !HASH.test(entry.tokenHash)) {
    throw new RemoteSourceError('tokenHash: expected 64 lower-case hex characters');
  }
  const token = entry.token ?? {};
  const actor = entry.actor;
  if (typeof token.id !== 'string' || token.id === '') throw new RemoteSourceError('token.id: expected a non-empty string');
  if (actor === null || typeof actor !== 'object') throw new RemoteSourceError('actor: expected an object');
  if (typeof actor.id !== 'string' || actor.id === '') throw new RemoteSourceError('actor.id: expected a non-empty string');
  if (typeof actor.name !== 'string') throw new RemoteSourceError('actor.name: expected a string');
  let limits;
  try {
    limits = parseFeatureLimits(actor.limits ?? {}, 'actor.limits');
  } catch (error) {
    if (error instanceof ConfigError) throw new RemoteSourceError(error.message.replace(/^invalid setting /, ''));
    throw error;
  }
  const now = new Date().toISOString();
  const parsedActor: Actor = {
    id: actor.id,
    name: actor.name,
    enabled: actor.enabled !== false,
    limits,
    createdAt: now,
    updatedAt: now,
  };
  const record: TokenRecord = {
    id: token.id,
    actorId: actor.id,
    hint: '',
    createdAt: now,
    expiresAt: isoOrNull(token.expiresAt, 'token.expiresAt'),
    revokedAt: isoOrNull(token.revokedAt, 'token.revokedAt'),
  };
  return { tokenHash: entry.tokenHash, lookup: { token: record, actor: parsedActor } };
}

export interface RemoteSourceOptions {
  url: string;
  secret: string | null;
  timeoutMs: number;
  dispatcher: Dispatcher;
  logger: Logger;
}

export class RemoteActorSource {
  constructor(private readonly options: RemoteSourceOptions) {}

  private headers(): Record<string, string> {
    const headers: Record<string, string> = { accept: 'application/json', 'content-type': 'application/json' };
    if (this.options.secret !== null) headers.authorization = `Bearer ${this.options.secret}`;
    return headers;
  }

  /** Returns the entry for a token hash, undefined when the source does not know it; throws on outage. */
  async lookup(tokenHash: string): Promise<TokenLookup | undefined> {
    let response;
    try {
      response = await request(`${this.options.url}/lookup`, {
        method: 'POST',
        headers: this.headers(),
        body: JSON.stringify({ tokenHash }),
        dispatcher: this.options.dispatcher,
        signal: AbortSignal.timeout(this.options.timeoutMs),
      });
    } catch (error) {
      throw new RemoteSourceError(`actor source lookup failed: ${(error as Error).message}`, { cause: error });
    }
    if (response.statusCode === 404) {
      await response.body.dump();
      return undefined;
    }
    if (response.statusCode !== 200) {
      await response.body.dump();
      throw new RemoteSourceError(`actor source lookup failed with status ${response.statusCode}`);
    }
    const entry = parseRemoteEntry(await response.body.json());
    if (entry.tokenHash !== tokenHash) throw new RemoteSourceError('actor source lookup returned an entry for another token hash');
    return entry.lookup;
  }

  /** Reads every page of the full listing. Throws on any failure, so a partial sync evicts nothing. */
  async listAll(): Promise<RemoteEntry[]> {
    const entries: RemoteEntry[] = [];
    let cursor: string | null = null;
    for (let page = 0; page < MAX_SYNC_PAGES; page++) {
      const url = `${this.options.url}/sync${cursor === null ? '' : `?cursor=${encodeURIComponent(cursor)}`}`;
      let response;
      try {
        response = await request(url, { method: 'GET', headers: this.headers(), dispatcher: this.options.dispatcher, signal: AbortSignal.timeout(this.options.timeoutMs) });
      } catch (error) {
        throw new RemoteSourceError(`actor source sync failed: ${(error as Error).message}`, { cause: error });
      }
      if (response.statusCode !== 200) {
        await response.body.dump();
        throw new RemoteSourceError(`actor source sync failed with status ${response.statusCode}`);
      }
      const body = (await response.body.json()) as { entries?: unknown; nextCursor?: unknown };
      if (!Array.isArray(body.entries)) throw new RemoteSourceError('sync: expected {"entries": [...], "nextCursor": ...}');
      for (const raw of body.entries) entries.push(parseRemoteEntry(raw));
      if (typeof body.nextCursor !== 'string' || body.nextCursor === '') return entries;
      cursor = body.nextCursor;
    }
    throw new RemoteSourceError(`sync: more than ${MAX_SYNC_PAGES} pages`);
  }
}
