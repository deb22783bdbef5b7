import type { Feature } from '../actors/types.ts';

/** Final state of a request that passed authentication. */
export type Outcome = 'completed' | 'client_aborted' | 'upstream_error' | 'timeout' | 'rejected';

/** One record per authenticated request, written whichever way the request ends. */
export interface UsageEvent {
  id: string;
  timestamp: string;
  requestId: string;
  actorId: string;
  actorName: string;
  feature: Feature | null;
  provider: string | null;
  route: string;
  requestedModel: string | null;
  upstreamModel: string | null;
  stream: boolean;
  upstreamStatus: number | null;
  status: number;
  outcome: Outcome;
  /** Stable error code when the gateway rejected or failed the request. */
  errorCode: string | null;
  inputTokens: number | null;
  outputTokens: number | null;
  cacheCreationInputTokens: number | null;
  cacheReadInputTokens: number | null;
  reasoningTokens: number | null;
  /** True when some token count came from the local tokenizer instead of the provider. */
  tokensEstimated: boolean;
  durationMs: number;
  upstreamTtfbMs: number | null;
  upstreamDurationMs: number | null;
  overheadMs: number | null;
  promptChars: number | null;
  completionChars: number | null;
  clientIp: string | null;
  userAgent: string | null;
  sgActorUid: string | null;
  sgActorAnonymousUid: string | null;
}

export interface UsageQuery {
  actorId?: string;
  /** ISO 8601 timestamp; only events at or after it. */
  since?: string;
  limit: number;
}
