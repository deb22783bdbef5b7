import type { Feature } from '../actors/types.ts';
import type { Adjustment, AdmitResult, CounterState, LeaseRequest, LimitKey, Limiter, QuotaCheck, WindowUsage } from './limiter.ts';

interface Window {
  used: number;
  resetAt: number;
}

const SWEEP_INTERVAL_MS = 60_000;

/**
 * In-process limiter for a single gateway process. JavaScript runs one callback at a time, so the
 * check-and-charge in `admit` is atomic without locks. Several replicas need the Redis limiter.
 */
export class MemoryLimiter implements Limiter {
  private readonly windows = new Map<string, Window>();
  /** Lease id to expiry (epoch ms), per actor and feature. */
  private readonly leases = new Map<string, Map<string, number>>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly now: () => number = Date.now) {
    this.sweeper = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS);
    this.sweeper.unref();
  }

  private current(id: string, now = this.now()): Window | undefined {
    const window = this.windows.get(id);
    if (window !== undefined && window.resetAt <= now) {
      this.windows.delete(id);
      return undefined;
    }
    return window;
  }

  async admit(checks: QuotaCheck[], lease?: LeaseRequest): Promise<AdmitResult> {
    const now = this.now();
    const states: CounterState[] = [];
    const ids = checks.map((check) => keyOf(check.key));
    let rejectedBy: number | 'concurrency' | undefined;
    for (let i = 0; i < checks.length; i++) {
      const check = checks[i];
      const window = this.current(ids[i], now);
      const used = window?.used ?? 0;
      const fits = check.mode === 'fit' ? used + check.cost <= check.limit : used < check.limit;
      if (!fits && rejectedBy === undefined) rejectedBy = i;
      states.push({ key: check.key, limit: check.limit, remaining: Math.max(0, check.limit - used), resetAt: window?.resetAt ?? now + check.intervalMs });
    }
    let held: Map<string, number> | undefined;
    if (lease !== undefined) {
      held = this.liveLeases(lease.actorId, lease.feature, now);
      if (rejectedBy === undefined && held.size >= lease.max) rejectedBy = 'concurrency';
    }
    if (rejectedBy !== undefined) return { allowed: false, counters: states, rejectedBy, inFlight: held?.size };

    for (let i = 0; i < checks.length; i++) {
      const check = checks[i];
      if (check.cost === 0) continue;
      const id = ids[i];
      const window = this.current(id, now) ?? { used: 0, resetAt: now + check.intervalMs };
      window.used += check.cost;
      this.windows.set(id, window);
      states[i] = { ...states[i], remaining: Math.max(0, check.limit - window.used), resetAt: window.resetAt };
    }
    if (lease !== undefined && held !== undefined) {
      held.set(lease.id, now + lease.ttlMs);
      this.leases.set(leaseKey(lease.actorId, lease.feature), held);
    }
    return { allowed: true, counters: states, inFlight: held?.size };
  }

  async settle(adjustments: Adjustment[], lease?: { actorId: string; feature: Feature; id: string }): Promise<void> {
    const now = this.now();
    for (const adjustment of adjustments) {
      if (adjustment.delta === 0) continue;
      const id = keyOf(adjustment.key);
      const window = this.current(id, now);
      if (window === undefined) {
        // A refund for a window that already ended has nothing to give back to.
        if (adjustment.delta > 0) this.windows.set(id, { used: adjustment.delta, resetAt: now + adjustment.intervalMs });
        continue;
      }
      window.used = Math.max(0, window.used + adjustment.delta);
    }
    if (lease !== undefined) this.leases.get(leaseKey(lease.actorId, lease.feature))?.delete(lease.id);
  }

  async renewLease(lease: LeaseRequest): Promise<void> {
    const held = this.leases.get(leaseKey(lease.actorId, lease.feature));
    if (held?.has(lease.id)) held.set(lease.id, this.now() + lease.ttlMs);
  }

  async usage(key: LimitKey): Promise<WindowUsage> {
    const window = this.current(keyOf(key));
    return { used: window?.used ?? 0, resetAt: window?.resetAt };
  }

  private liveLeases(actorId: string, feature: Feature, now: number): Map<string, number> {
    const held = this.leases.get(leaseKey(actorId, feature)) ?? new Map<string, number>();
    for (const [id, expiresAt] of held) if (expiresAt <= now) held.delete(id);
    return held;
  }

  private sweep(): void {
    const now = this.now();
    for (const [id, window] of this.windows) if (window.resetAt <= now) this.windows.delete(id);
    for (const [id, held] of this.leases) {
      for (const [lease, expiresAt] of held) if (expiresAt <= now) held.delete(lease);
      if (held.size === 0) this.leases.delete(id);
    }
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
  }
}

function keyOf(key: LimitKey): string {
  return `${key.feature}:${key.counter}:${key.actorId}`;
}

function leaseKey(actorId: string, feature: Feature): string {
  return `${feature}:${actorId}`;
}
