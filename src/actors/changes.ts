/** A change to an actor or token that cached copies must drop. */
export interface ActorChange {
  actorId?: string;
  tokenId?: string;
  /** A full sync from the remote actor source listed exactly these token hashes. */
  syncedTokenHashes?: string[];
}

/**
 * Carries actor and token changes between gateway replicas, so that a revoke, disable or limit
 * change made through one replica reaches every replica's cache.
 */
export interface ActorChangeBus {
  publish(change: ActorChange): Promise<void>;
  subscribe(handler: (change: ActorChange) => void): void;
  close(): Promise<void>;
}
