import type { Feature, FeatureLimit } from '../actors/types.ts';
import type { Adjustment, Counter, LeaseRequest, LimitKey, QuotaCheck } from './limiter.ts';

/** A lease not renewed for this long is free again, so a crashed replica's slots come back. */
export const LEASE_TTL_MS = 30_000;
/** Running requests renew their lease this often. */
export const LEASE_RENEW_MS = 10_000;

/**
 * A token estimate of the prompt that costs no tokenizer run on the request path. Three
 * characters per token over-reserves for English text (about four per token), so the settlement
 * usually gives tokens back rather than taking more.
 */
export function estimatePromptTokens(promptChars: number): number {
  return Math.ceil(promptChars / 3);
}

/** The counter that `limit` applies to: tokens for embeddings, requests for the rest. */
export function primaryCounter(feature: Feature): Counter {
  return feature === 'embeddings' ? 'tokens' : 'requests';
}

export interface Reservation {
  checks: QuotaCheck[];
  lease?: LeaseRequest;
  reservedInput: number;
  reservedOutput: number;
}

export interface ReservationInput {
  actorId: string;
  feature: Feature;
  limit: FeatureLimit;
  requestId: string;
  promptChars: number;
  maxOutputTokens: number | null;
  /** Output tokens reserved when the request sets no output cap. */
  defaultOutputReservation: number;
  /** A better input estimate than the character count, when the request gives one (token-id inputs). */
  promptTokenEstimate?: number;
}

function limitKey(actorId: string, feature: Feature, counter: Counter): LimitKey {
  return { actorId, feature, counter };
}

/** Builds the checks one request must pass: its quota, its token budgets, and a concurrency lease. */
export function buildReservation(input: ReservationInput): Reservation {
  const { actorId, feature, limit } = input;
  const intervalMs = limit.intervalSeconds * 1000;
  const checks: QuotaCheck[] = [];
  let reservedInput = 0;
  let reservedOutput = 0;
  if (feature === 'embeddings') {
    // The reservation keeps concurrent requests from all passing while the budget looks unused;
    // the settlement replaces it with the tokens the provider reports.
    reservedInput = Math.max(1, input.promptTokenEstimate ?? estimatePromptTokens(input.promptChars));
    checks.push({ key: limitKey(actorId, feature, 'tokens'), limit: limit.limit, intervalMs, cost: reservedInput, mode: 'remaining' });
  } else {
    checks.push({ key: limitKey(actorId, feature, 'requests'), limit: limit.limit, intervalMs, cost: 1, mode: 'fit' });
    if (limit.tokenLimit !== undefined || limit.inputTokenLimit !== undefined || limit.outputTokenLimit !== undefined) {
      reservedInput = estimatePromptTokens(input.promptChars);
      reservedOutput = input.maxOutputTokens ?? input.defaultOutputReservation;
    }
    if (limit.tokenLimit !== undefined) {
      checks.push({ key: limitKey(actorId, feature, 'tokens'), limit: limit.tokenLimit, intervalMs, cost: reservedInput + reservedOutput, mode: 'remaining' });
    }
    if (limit.inputTokenLimit !== undefined) {
      checks.push({ key: limitKey(actorId, feature, 'input_tokens'), limit: limit.inputTokenLimit, intervalMs, cost: reservedInput, mode: 'remaining' });
    }
    if (limit.outputTokenLimit !== undefined) {
      checks.push({ key: limitKey(actorId, feature, 'output_tokens'), limit: limit.outputTokenLimit, intervalMs, cost: reservedOutput, mode: 'remaining' });
    }
  }
  const lease = limit.concurrency === undefined ? undefined : { actorId, feature, id: input.requestId, max: limit.concurrency, ttlMs: LEASE_TTL_MS };
  return { checks, lease, reservedInput, reservedOutput };
}

export interface RequestResult {
  /** The provider returned a 2xx status. */
  delivered: boolean;
  /** The request failed in a way the caller should not pay a request unit for. */
  refundRequest: boolean;
  /** Tokens to charge; zero when the provider billed nothing. */
  inputTokens: number;
  outputTokens: number;
}

/** Turns reservations into what the request really used. */
export function settleReservation(reservation: Reservation, result: RequestResult): Adjustment[] {
  const adjustments: Adjustment[] = [];
  for (const check of reservation.checks) {
    const { key, intervalMs } = check;
    switch (key.counter) {
      case 'requests':
        if (result.refundRequest) adjustments.push({ key, delta: -check.cost, intervalMs });
        break;
      case 'tokens': {
        const used = key.feature === 'embeddings' ? result.inputTokens : result.inputTokens + result.outputTokens;
        adjustments.push({ key, delta: used - check.cost, intervalMs });
        break;
      }
      case 'input_tokens':
        adjustments.push({ key, delta: result.inputTokens - check.cost, intervalMs });
        break;
      case 'output_tokens':
        adjustments.push({ key, delta: result.outputTokens - check.cost, intervalMs });
        break;
    }
  }
  return adjustments.filter((adjustment) => adjustment.delta !== 0);
}
