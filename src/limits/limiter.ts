import type { Feature } from '../actors/types.ts';

/** Unit a counter measures within one actor's feature quota. */
export type Counter = 'requests' | 'tokens' | 'input_tokens' | 'output_tokens';

/** Identifies one quota counter: an actor's use of one feature, in one unit. */
export interface LimitKey {
  actorId: string;
  feature: Feature;
  counter: Counter;
}

/** One counter to check and charge as part of an admission. */
export interface QuotaCheck {
  key: LimitKey;
  limit: number;
  intervalMs: number;
  /** Units to take now: 1 for a request, the reservation for a token budget, 0 to only check. */
  cost: number;
  /**
   * `fit`: admit only when `used + cost <= limit`. `remaining`: admit while `used < limit` and
   * take `cost` even past the limit, so the overshoot is at most one request's reservation.
   */
  mode: 'fit' | 'remaining';
}

/** An in-flight slot, held from admission until the request ends. */
export interface LeaseRequest {
  actorId: string;
  feature: Feature;
  /** Unique per request. */
  id: string;
  max: number;
  /** A lease not released within this time frees itself (a crashed replica's leases). */
  ttlMs: number;
}

export interface CounterState {
  key: LimitKey;
  limit: number;
  /** Units left after this admission (never below 0). */
  remaining: number;
  /** Epoch milliseconds at which the window ends. */
  resetAt: number;
}

export interface AdmitResult {
  allowed: boolean;
  /** One entry per check, in order; on rejection, the state without this request's cost. */
  counters: CounterState[];
  /** On rejection: which check failed (its index), or `concurrency`. */
  rejectedBy?: number | 'concurrency';
  /** In-flight requests of the actor's feature, this one included when admitted. */
  inFlight?: number;
}

export interface Adjustment {
  key: LimitKey;
  /** Positive adds units, negative gives back; a counter never drops below 0. */
  delta: number;
  intervalMs: number;
}

export interface WindowUsage {
  used: number;
  /** Epoch milliseconds at which the window ends; undefined when nothing was used. */
  resetAt: number | undefined;
}

/**
 * Fixed-window quota counters and in-flight leases. A window starts at its first charged unit and
 * lasts `intervalMs`; later requests never extend it. `admit` is atomic and all-or-nothing: either
 * every check passes and all are charged (and the lease taken), or nothing changes.
 */
export interface Limiter {
  admit(checks: QuotaCheck[], lease?: LeaseRequest): Promise<AdmitResult>;
  /** Settles reservations and refunds, and releases the lease, after the request ended. */
  settle(adjustments: Adjustment[], lease?: { actorId: string; feature: Feature; id: string }): Promise<void>;
  /** Extends a held lease by its TTL; long streams renew their lease while they run. */
  renewLease(lease: LeaseRequest): Promise<void>;
  usage(key: LimitKey): Promise<WindowUsage>;
  close(): Promise<void>;
}
