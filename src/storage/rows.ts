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

/** One column value of a usage event row. */
export type EventValue = string | number | boolean | null;

/**
 * Returns the event's values in EVENT_COLUMNS order, as one array. Written out field by field rather than
 * looped over EVENT_COLUMNS, because it runs once for every request and an array is the cheapest
 * shape to hand to a writer thread. A unit test keeps the order in step with EVENT_COLUMNS.
 */
export function eventValues(e: UsageEvent): EventValue[] {
  return [
    e.id, e.timestamp, e.requestId, e.actorId, e.actorName, e.feature, e.provider, e.route,
    e.requestedModel, e.upstreamModel, e.stream, e.upstreamStatus, e.status, e.outcome, e.errorCode,
    e.inputTokens, e.outputTokens, e.cacheCreationInputTokens, e.cacheReadInputTokens, e.reasoningTokens,
    e.tokensEstimated, e.durationMs, e.upstreamTtfbMs, e.upstreamDurationMs, e.overheadMs, e.promptChars,
    e.completionChars, e.clientIp, e.userAgent, e.sgActorUid, e.sgActorAnonymousUid,
  ];
}

/** Positions in an eventValues() array that hold booleans, which SQLite stores as 0 or 1. */
export const BOOLEAN_EVENT_INDEXES: readonly number[] = EVENT_COLUMNS.flatMap(([field], index) => (field === 'stream' || field === 'tokensEstimated' ? [index] : []));

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
