/** Rejects a call without running it while the circuit is open. */
export class CircuitOpenError extends Error {
  constructor(readonly circuit: string) {
    super(`circuit ${circuit} is open after repeated failures; calls are rejected until a probe succeeds`);
    this.name = 'CircuitOpenError';
  }
}

export type CircuitState = 'closed' | 'open' | 'half_open';

export interface CircuitBreakerOptions {
  /** Names the protected dependency in errors. */
  name: string;
  /** Consecutive failures that open the circuit. Default 5. */
  failureThreshold?: number;
  /** Time in ms the circuit stays open before one probe call may run. Default 1000. */
  resetTimeoutMs?: number;
  /** Called on every state change, for logging. */
  onStateChange?: (state: CircuitState, previous: CircuitState) => void;
  now?: () => number;
}

/**
 * Circuit breaker for calls to one dependency. After `failureThreshold` consecutive failures the
 * circuit opens and every call fails at once with `CircuitOpenError`. Once `resetTimeoutMs` has
 * passed, the next call runs as the only probe, in the half-open state. Its success closes the
 * circuit, and its failure opens it for another `resetTimeoutMs`. The breaker sets no deadline of
 * its own, so the operation must be bounded, for example by a Redis client's `commandTimeout`.
 */
export class CircuitBreaker {
  private current: CircuitState = 'closed';
  private failures = 0;
  private openedAt = 0;
  private readonly failureThreshold: number;
  private readonly resetTimeoutMs: number;
  private readonly now: () => number;

  constructor(private readonly options: CircuitBreakerOptions) {
    this.failureThreshold = options.failureThreshold ?? 5;
    this.resetTimeoutMs = options.resetTimeoutMs ?? 1000;
    this.now = options.now ?? Date.now;
  }

  get state(): CircuitState {
    return this.current;
  }

  async run<T>(operation: () => Promise<T>): Promise<T> {
    if (this.current === 'half_open') throw new CircuitOpenError(this.options.name);
    if (this.current === 'open') {
      if (this.now() - this.openedAt < this.resetTimeoutMs) throw new CircuitOpenError(this.options.name);
      this.transition('half_open');
    }

    let result: T;
    try {
      result = await operation();
    } catch (error) {
      this.recordFailure();
      throw error;
    }
    this.failures = 0;
    if (this.current !== 'closed') this.transition('closed');
    return result;
  }

  private recordFailure(): void {
    this.failures++;
    // A failed probe reopens the circuit at once. In the closed state a call that started before
    // the circuit opened may fail later, and it must not move the open time forward.
    if (this.current === 'half_open' || (this.current === 'closed' && this.failures >= this.failureThreshold)) {
      this.openedAt = this.now();
      this.transition('open');
    }
  }

  private transition(next: CircuitState): void {
    const previous = this.current;
    this.current = next;
    this.options.onStateChange?.(next, previous);
  }
}
