import type { IncomingHttpHeaders } from 'node:http';
import { GatewayError } from '../errors/errors.ts';
import type { Logger } from '../logging/logger.ts';
import type { ActorStore, TokenLookup } from '../storage/store.ts';
import { hashToken, looksLikeToken } from './tokens.ts';
import type { Actor, FeatureLimits } from './types.ts';

/** The actor a request runs as, with the token it presented (none for anonymous access). */
export interface ResolvedActor {
  actor: Actor;
  tokenId: string | null;
}

const MAX_CACHED = 50_000;
const VERSION_POLL_MS = 1000;

type CacheEntry = TokenLookup | null;

/**
 * Resolves credentials to actors. A token seen before is served from memory: no store query per
 * request. Entries are dropped when the admin API changes an actor or token, and the whole cache
 * when another process (the CLI) commits a change, detected by polling the store's change version.
 * Unknown tokens are cached too (as null), so guessing tokens does not cost a query each.
 */
export class ActorResolver {
  private readonly cache = new Map<string, CacheEntry>();
  private readonly anonymous: Actor | undefined;
  private version = -1;
  private readonly poller: NodeJS.Timeout;

  constructor(
    private readonly store: ActorStore,
    private readonly logger: Logger,
    options: { allowAnonymous: boolean; anonymousLimits: FeatureLimits },
  ) {
    if (options.allowAnonymous) {
      const epoch = new Date(0).toISOString();
      this.anonymous = { id: 'anonymous', name: 'anonymous', enabled: true, limits: options.anonymousLimits, createdAt: epoch, updatedAt: epoch };
    }
    this.poller = setInterval(() => void this.pollVersion(), VERSION_POLL_MS);
    this.poller.unref();
  }

  async start(): Promise<void> {
    this.version = await this.store.changeVersion();
  }

  private async pollVersion(): Promise<void> {
    try {
      const version = await this.store.changeVersion();
      if (version !== this.version) {
        this.version = version;
        this.cache.clear();
      }
    } catch (error) {
      this.logger.warn({ err: error }, 'failed to poll the actor store for changes');
    }
  }

  /** Reads the token from `Authorization: Bearer` or `x-api-key`. */
  static credential(headers: IncomingHttpHeaders): string | null {
    const authorization = headers.authorization;
    if (authorization !== undefined && authorization !== '') {
      const space = authorization.indexOf(' ');
      const scheme = space === -1 ? authorization : authorization.slice(0, space);
      if (scheme.toLowerCase() !== 'bearer') {
        throw new GatewayError('invalid_token', 'the Authorization header must use the Bearer scheme: "Authorization: Bearer <token>"');
      }
      return authorization.slice(space + 1).trim();
    }
    const apiKey = headers['x-api-key'];
    if (typeof apiKey === 'string' && apiKey !== '') return apiKey.trim();
    return null;
  }

  async resolve(headers: IncomingHttpHeaders): Promise<ResolvedActor> {
    const token = ActorResolver.credential(headers);
    if (token === null || token === '') {
      if (this.anonymous !== undefined) return { actor: this.anonymous, tokenId: null };
      throw new GatewayError('missing_token', 'no access token given: send "Authorization: Bearer <token>" or "x-api-key: <token>"');
    }
    if (!looksLikeToken(token)) {
      throw new GatewayError('invalid_token', 'the access token is not a valid LLM Proxy token; tokens start with "llmp_"');
    }
    const hash = hashToken(token);
    let entry = this.cache.get(hash);
    if (entry === undefined) {
      entry = (await this.store.findToken(hash)) ?? null;
      if (this.cache.size >= MAX_CACHED) this.cache.delete(this.cache.keys().next().value as string);
      this.cache.set(hash, entry);
    }
    if (entry === null) throw new GatewayError('invalid_token', 'the access token is not known to this gateway');
    const { token: record, actor } = entry;
    if (record.revokedAt !== null) throw new GatewayError('token_revoked', 'the access token was revoked; ask an administrator for a new one');
    if (record.expiresAt !== null && Date.parse(record.expiresAt) <= Date.now()) {
      throw new GatewayError('token_expired', `the access token expired at ${record.expiresAt}; ask an administrator for a new one`);
    }
    if (!actor.enabled) throw new GatewayError('actor_disabled', `actor ${actor.id} is disabled`);
    return { actor, tokenId: record.id };
  }

  /** Drops every cached token of an actor, after the actor was updated, disabled or deleted. */
  invalidateActor(actorId: string): void {
    for (const [hash, entry] of this.cache) {
      if (entry === null || entry.actor.id === actorId) this.cache.delete(hash);
    }
  }

  /** Drops a cached token after it was revoked, and every cached unknown token after one was created. */
  invalidateToken(tokenId: string): void {
    for (const [hash, entry] of this.cache) {
      if (entry === null || entry.token.id === tokenId) this.cache.delete(hash);
    }
  }

  close(): void {
    clearInterval(this.poller);
  }
}
