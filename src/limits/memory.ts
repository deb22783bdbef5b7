import type { Admission, LimitKey, Limiter, WindowUsage } from './limiter.ts';

interface Window {
  used: number;
  resetAt: number;
}

const SWEEP_INTERVAL_MS = 60_000;

/**
 * In-process limiter for a single gateway process. JavaScript runs one callback at a time, so
 * check-and-consume in `acquire` is atomic without locks. Several processes need a shared store.
 */
export class MemoryLimiter implements Limiter {
  private readonly windows = new Map<string, Window>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly now: () => number = Date.now) {
    this.sweeper = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS);
    this.sweeper.unref();
  }

  private current(id: string): Window | undefined {
    const window = this.windows.get(id);
    if (window !== undefined && window.resetAt <= this.now()) {
      this.windows.delete(id);
      return undefined;
    }
    return window;
  }

  async acquire(key: LimitKey, limit: number, intervalMs: number, cost: number): Promise<Admission> {
    const id = keyOf(key);
    const window = this.current(id);
    const used = window?.used ?? 0;
    const allowed = cost > 0 ? used + cost <= limit : used < limit;
    if (!allowed) {
      return { allowed, limit, remaining: Math.max(0, limit - used), resetAt: window?.resetAt ?? this.now() + intervalMs };
    }
    if (window === undefined) {
      const created = { used: cost, resetAt: this.now() + intervalMs };
      this.windows.set(id, created);
      return { allowed, limit, remaining: limit - cost, resetAt: created.resetAt };
    }
    window.used += cost;
    return { allowed, limit, remaining: limit - window.used, resetAt: window.resetAt };
  }

  async adjust(key: LimitKey, delta: number, intervalMs: number): Promise<void> {
    const id = keyOf(key);
    const window = this.current(id);
    if (window === undefined) {
      // A refund for a window that already ended has nothing to give back to.
      if (delta > 0) this.windows.set(id, { used: delta, resetAt: this.now() + intervalMs });
      return;
    }
    window.used = Math.max(0, window.used + delta);
  }

  async usage(key: LimitKey): Promise<WindowUsage> {
    const window = this.current(keyOf(key));
    return { used: window?.used ?? 0, resetAt: window?.resetAt };
  }

  private sweep(): void {
    const now = this.now();
    for (const [id, window] of this.windows) {
      if (window.resetAt <= now) this.windows.delete(id);
    }
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
  }
}

function keyOf(key: LimitKey): string {
  return `${key.feature}:${key.actorId}`;
}
