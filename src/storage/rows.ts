import type { TokenRecord } from '../actors/types.ts';
import type { UsageEvent } from '../usage/event.ts';

/**
 * UsageEvent fields and their columns, in the order of the INSERT column list. The SQLite and
 * Postgres `usage_events` tables use the same column names.
 */
export const EVENT_COLUMNS = [
  ['id', 'id'],
  ['timestamp', 'timestamp'],
  ['requestId', 'request_id'],
  ['actorId', 'actor_id'],
  ['actorName', 'actor_name'],
  ['feature', 'feature'],
  ['provider', 'provider'],
  ['route', 'route'],
  ['requestedModel', 'requested_model'],
  ['upstreamModel', 'upstream_model'],
  ['stream', 'stream'],
  ['upstreamStatus', 'upstream_status'],
  ['status', 'status'],
  ['outcome', 'outcome'],
  ['errorCode', 'error_code'],
  ['inputTokens', 'input_tokens'],
  ['outputTokens', 'output_tokens'],
  ['cacheCreationInputTokens', 'cache_creation_input_tokens'],
  ['cacheReadInputTokens', 'cache_read_input_tokens'],
  ['reasoningTokens', 'reasoning_tokens'],
  ['tokensEstimated', 'tokens_estimated'],
  ['durationMs', 'duration_ms'],
  ['upstreamTtfbMs', 'upstream_ttfb_ms'],
  ['upstreamDurationMs', 'upstream_duration_ms'],
  ['overheadMs', 'overhead_ms'],
  ['promptChars', 'prompt_chars'],
  ['completionChars', 'completion_chars'],
  ['clientIp', 'client_ip'],
  ['userAgent', 'user_agent'],
  ['sgActorUid', 'sg_actor_uid'],
  ['sgActorAnonymousUid', 'sg_actor_anonymous_uid'],
] as const satisfies ReadonlyArray<readonly [keyof UsageEvent, string]>;

/** A `tokens` row without `token_hash`. Both stores return these columns as strings or null. */
export interface TokenRow {
  id: string;
  actor_id: string;
  hint: string;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
}

/** A token as stored, with its hash: the input of PostgresStore.importTokens. */
export interface StoredToken extends TokenRecord {
  tokenHash: string;
}

export function tokenFromRow(row: TokenRow): TokenRecord {
  return {
    id: row.id,
    actorId: row.actor_id,
    hint: row.hint,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    revokedAt: row.revoked_at,
  };
}
