import type { Feature } from '../actors/types.ts';

/** Identifies one quota counter: an actor's use of one feature. */
export interface LimitKey {
  actorId: string;
  feature: Feature;
}

export interface Admission {
  allowed: boolean;
  limit: number;
  /** Units left in the current window after this admission (0 when rejected). */
  remaining: number;
  /** Epoch milliseconds at which the current window ends. */
  resetAt: number;
}

export interface WindowUsage {
  used: number;
  /** Epoch milliseconds at which the window ends; undefined when nothing was used. */
  resetAt: number | undefined;
}

/**
 * Fixed-window quota counters. A window starts at the first admitted unit and lasts `intervalMs`;
 * later requests never extend it. Implementations must make `acquire` atomic: two concurrent
 * callers can never both take the last unit.
 */
export interface Limiter {
  /**
   * Admits the request when `used + cost <= limit` and adds `cost`. With cost 0 (token budgets
   * whose real cost is known only after the response), admits while `used < limit`.
   */
  acquire(key: LimitKey, limit: number, intervalMs: number, cost: number): Promise<Admission>;
  /** Adds (positive) or gives back (negative) units in the current window; never below 0. */
  adjust(key: LimitKey, delta: number, intervalMs: number): Promise<void>;
  usage(key: LimitKey): Promise<WindowUsage>;
  close(): Promise<void>;
}
