import type { IncomingHttpHeaders } from 'node:http';
import { GatewayError } from '../errors/errors.ts';
import type { Logger } from '../logging/logger.ts';
import type { ActorStore, TokenLookup } from '../storage/store.ts';
import type { ActorChange, ActorChangeBus } from './changes.ts';
import type { RemoteActorSource, RemoteEntry } from './remote-source.ts';
import { hashToken, looksLikeToken } from './tokens.ts';
import type { Actor, FeatureLimits } from './types.ts';

/** The actor a request runs as, with the token it presented (none for anonymous access). */
export interface ResolvedActor {
  actor: Actor;
  tokenId: string | null;
}

const MAX_CACHED = 50_000;
/** Unknown tokens are kept apart and bounded on their own, so a flood of guesses cannot push out valid tokens. */
const MAX_CACHED_UNKNOWN = 10_000;
const VERSION_POLL_MS = 1000;
/** After a failed background refresh, the cached entry is served this long before the next try. */
const REFRESH_RETRY_MS = 5000;

interface CacheEntry {
  value: TokenLookup | null;
  /** `local` entries live until a change drops them; `remote` ones until `freshUntil`. */
  origin: 'local' | 'remote';
  freshUntil: number;
  refreshing: boolean;
}

export interface ResolverOptions {
  allowAnonymous: boolean;
  anonymousLimits: FeatureLimits;
  remote?: RemoteActorSource;
  /** How long a token found at the remote source is served before it is refreshed in the background. */
  remoteTtlMs?: number;
  /** How long a token the remote source does not know is remembered as unknown. */
  remoteNegativeTtlMs?: number;
  bus?: ActorChangeBus;
}

/**
 * Resolves credentials to actors. A token seen before is served from memory: no query per
 * request. Local entries are dropped when an actor or token changes: at once for changes made
 * through this process, through the change bus for other replicas, and by polling the store's
 * change version for anything else (the CLI). Unknown tokens are cached too, so guessing tokens
 * does not cost a query each.
 *
 * Tokens the local store does not know can come from a remote actor source. Those are cached with
 * a TTL; a stale entry keeps serving while one background refresh runs, so an outage of the
 * source never turns a cached valid token into a rejection.
 */
export class ActorResolver {
  /** Known tokens, least recently used first. */
  private readonly cache = new Map<string, CacheEntry>();
  /** Tokens found nowhere, oldest first. */
  private readonly unknown = new Map<string, CacheEntry>();
  /** Lookups in progress, so concurrent first requests for one token share a single lookup. */
  private readonly pending = new Map<string, Promise<TokenLookup | null>>();
  private readonly anonymous: Actor | undefined;
  private version = -1;
  private readonly poller: NodeJS.Timeout;
  private readonly remoteTtlMs: number;
  private readonly remoteNegativeTtlMs: number;

  constructor(
    private readonly store: ActorStore,
    private readonly logger: Logger,
    private readonly options: ResolverOptions,
  ) {
    if (options.allowAnonymous) {
      const epoch = new Date(0).toISOString();
      this.anonymous = { id: 'anonymous', name: 'anonymous', enabled: true, limits: options.anonymousLimits, createdAt: epoch, updatedAt: epoch };
    }
    this.remoteTtlMs = options.remoteTtlMs ?? 5 * 60_000;
    this.remoteNegativeTtlMs = options.remoteNegativeTtlMs ?? 30_000;
    this.poller = setInterval(() => void this.pollVersion(), VERSION_POLL_MS);
    this.poller.unref();
    options.bus?.subscribe((change) => this.applyChange(change));
  }

  async start(): Promise<void> {
    this.version = await this.store.changeVersion();
  }

  private async pollVersion(): Promise<void> {
    try {
      const version = await this.store.changeVersion();
      if (version !== this.version) {
        this.version = version;
        this.dropWhere((entry) => entry.origin === 'local');
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
      throw new GatewayError('invalid_token', 'the access token is malformed; LLM Proxy tokens are "llmp_" followed by 43 letters, digits, "-" or "_"');
    }
    const hash = hashToken(token);
    const value = await this.lookup(hash);
    if (value === null) throw new GatewayError('invalid_token', 'the access token is not known to this gateway');
    const { token: record, actor } = value;
    if (record.revokedAt !== null) throw new GatewayError('token_revoked', 'the access token was revoked; ask an administrator for a new one');
    if (record.expiresAt !== null && Date.parse(record.expiresAt) <= Date.now()) {
      throw new GatewayError('token_expired', `the access token expired at ${record.expiresAt}; ask an administrator for a new one`);
    }
    if (!actor.enabled) throw new GatewayError('actor_disabled', `actor ${actor.id} is disabled`);
    return { actor, tokenId: record.id };
  }

  private lookup(hash: string): Promise<TokenLookup | null> | TokenLookup | null {
    const now = Date.now();
    const cached = this.cache.get(hash);
    if (cached !== undefined) {
      // Re-inserting keeps the map in least-recently-used order for eviction.
      this.cache.delete(hash);
      this.cache.set(hash, cached);
      if (cached.origin === 'local' || cached.freshUntil > now) return cached.value;
      this.refreshInBackground(hash, cached);
      return cached.value;
    }
    const unknown = this.unknown.get(hash);
    if (unknown !== undefined && (unknown.origin === 'local' || unknown.freshUntil > now)) return null;
    let pending = this.pending.get(hash);
    if (pending === undefined) {
      pending = this.load(hash).finally(() => this.pending.delete(hash));
      this.pending.set(hash, pending);
    }
    return pending;
  }

  private async load(hash: string): Promise<TokenLookup | null> {
    let local: TokenLookup | undefined;
    try {
      local = await this.store.findToken(hash);
    } catch (error) {
      this.logger.warn({ err: error }, 'actor store lookup failed');
      throw new GatewayError('store_unavailable', 'the actor store is unavailable, so this token cannot be checked; retry shortly', { cause: error, headers: { 'retry-after': '1' } });
    }
    if (local !== undefined || this.options.remote === undefined) {
      this.remember(hash, { value: local ?? null, origin: 'local', freshUntil: Number.POSITIVE_INFINITY, refreshing: false });
      return local ?? null;
    }
    let remote: TokenLookup | undefined;
    try {
      remote = await this.options.remote.lookup(hash);
    } catch (error) {
      this.logger.warn({ err: error }, 'actor source lookup failed');
      throw new GatewayError('store_unavailable', 'the actor source that knows this token is unavailable; retry shortly', { cause: error });
    }
    this.rememberRemote(hash, remote ?? null);
    return remote ?? null;
  }

  private rememberRemote(hash: string, value: TokenLookup | null): void {
    const ttl = value === null ? this.remoteNegativeTtlMs : this.remoteTtlMs;
    this.remember(hash, { value, origin: 'remote', freshUntil: Date.now() + ttl, refreshing: false });
  }

  private refreshInBackground(hash: string, entry: CacheEntry): void {
    if (entry.refreshing || this.options.remote === undefined) return;
    entry.refreshing = true;
    this.options.remote.lookup(hash).then(
      (value) => this.rememberRemote(hash, value ?? null),
      (error: unknown) => {
        this.logger.warn({ err: error }, 'actor source refresh failed, serving the cached entry');
        entry.refreshing = false;
        entry.freshUntil = Date.now() + REFRESH_RETRY_MS;
      },
    );
  }

  private remember(hash: string, entry: CacheEntry): void {
    const map = entry.value === null ? this.unknown : this.cache;
    const other = entry.value === null ? this.cache : this.unknown;
    other.delete(hash);
    map.delete(hash);
    if (map.size >= (entry.value === null ? MAX_CACHED_UNKNOWN : MAX_CACHED)) map.delete(map.keys().next().value as string);
    map.set(hash, entry);
  }

  private dropWhere(predicate: (entry: CacheEntry) => boolean): void {
    for (const [hash, entry] of this.cache) if (predicate(entry)) this.cache.delete(hash);
    for (const [hash, entry] of this.unknown) if (predicate(entry)) this.unknown.delete(hash);
  }

  private applyChange(change: ActorChange): void {
    if (change.actorId !== undefined) this.dropWhere((entry) => entry.value === null || entry.value.actor.id === change.actorId);
    if (change.tokenId !== undefined) this.dropWhere((entry) => entry.value === null || entry.value.token.id === change.tokenId);
    if (change.syncedTokenHashes !== undefined) this.evictUnlisted(new Set(change.syncedTokenHashes));
  }

  private evictUnlisted(listed: Set<string>): void {
    for (const [hash, entry] of this.cache) {
      if (entry.origin === 'remote' && entry.value !== null && !listed.has(hash)) this.cache.delete(hash);
    }
  }

  /** Drops every cached token of an actor, after the actor was updated, disabled or deleted. */
  invalidateActor(actorId: string): void {
    this.notify({ actorId });
  }

  /** Drops a cached token after it was revoked, and every cached unknown token after one was created. */
  invalidateToken(tokenId: string): void {
    this.notify({ tokenId });
  }

  private notify(change: ActorChange): void {
    this.applyChange(change);
    this.options.bus?.publish(change).catch((error: unknown) => this.logger.warn({ err: error }, 'failed to publish an actor change'));
  }

  /**
   * Applies a full listing from the remote source: every listed token is cached fresh, and cached
   * remote tokens missing from it are evicted, here and, through the change bus, on every replica.
   */
  applySync(entries: RemoteEntry[]): void {
    const listed = new Set<string>();
    for (const entry of entries) {
      listed.add(entry.tokenHash);
      this.rememberRemote(entry.tokenHash, entry.lookup);
    }
    this.evictUnlisted(listed);
    this.options.bus?.publish({ syncedTokenHashes: [...listed] }).catch((error: unknown) => this.logger.warn({ err: error }, 'failed to publish the actor sync'));
  }

  close(): void {
    clearInterval(this.poller);
  }
}
