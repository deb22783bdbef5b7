import type { Actor, ActorPatch, NewActor, TokenRecord } from '../actors/types.ts';
import type { UsageEvent, UsageQuery } from '../usage/event.ts';

/** The actor that a token hash resolves to, with the token's own state. */
export interface TokenLookup {
  token: TokenRecord;
  actor: Actor;
}

/**
 * Persistent actors and tokens. The embedded implementation is SQLite; a shared database can
 * implement the same interface. Methods are async so that network stores fit.
 */
export interface ActorStore {
  createActor(input: NewActor): Promise<Actor>;
  getActor(id: string): Promise<Actor | undefined>;
  listActors(): Promise<Actor[]>;
  updateActor(id: string, patch: ActorPatch): Promise<Actor | undefined>;
  /** Deletes the actor and its tokens. Usage events are kept. */
  deleteActor(id: string): Promise<boolean>;
  /** Stores a token by hash. `tokenHash` is the hex SHA-256 of the full token. */
  createToken(actorId: string, tokenHash: string, hint: string, expiresAt: string | null): Promise<TokenRecord>;
  revokeToken(id: string): Promise<TokenRecord | undefined>;
  listTokens(actorId: string): Promise<TokenRecord[]>;
  findToken(tokenHash: string): Promise<TokenLookup | undefined>;
  /**
   * A number that changes whenever another process commits a change to actors or tokens,
   * so that caches can be dropped without a query per request.
   */
  changeVersion(): Promise<number>;
}

export interface UsageStore {
  insertEvents(events: UsageEvent[]): Promise<void>;
  queryEvents(query: UsageQuery): Promise<UsageEvent[]>;
}

export interface Store extends ActorStore, UsageStore {
  /** Throws when the store cannot serve requests. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
