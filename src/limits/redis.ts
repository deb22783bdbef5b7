/**
 * Limiter shared by every gateway replica, stored in Redis.
 *
 * Key layout. Every key starts with the configured prefix (`llmp:` by default):
 *
 *   <prefix>{<actorId>}:q:<feature>:<counter>
 *       String holding the integer units used in the current window. The first charge creates it
 *       with `SET ... PX <intervalMs>`, so the key's expiry is the end of the window. Later charges
 *       and refunds use INCRBY, which keeps the TTL, so a window is never extended. No key is
 *       written without a TTL. `counter` is requests, tokens, input_tokens or output_tokens.
 *   <prefix>{<actorId>}:lease:<feature>
 *       Sorted set of in-flight requests. Member: lease id (the request id). Score: the lease's
 *       expiry in epoch milliseconds on the Redis server clock. Expired members are removed
 *       before the set is counted. The key's TTL is raised to at least the longest lease TTL, so
 *       the set of an idle actor disappears.
 *   <prefix>actor-changes
 *       Pub/sub channel of `RedisChangeBus`, not a key.
 *
 * The `{<actorId>}` hash tag puts all keys of one actor into one Redis Cluster slot, so each
 * script touches one slot. All times come from the Redis server clock.
 *
 * Each `admit` is one Lua script that checks every counter and the lease and charges all or
 * nothing. `settle`, `renewLease` and `usage` are one script each.
 */
import { Redis } from 'ioredis';
import type { Feature } from '../actors/types.ts';
import { GatewayError } from '../errors/errors.ts';
import type { Logger } from '../logging/logger.ts';
import { CircuitBreaker, type CircuitState } from './breaker.ts';
import type { Adjustment, AdmitResult, CounterState, LeaseRequest, LimitKey, Limiter, QuotaCheck, WindowUsage } from './limiter.ts';
import { ADMIT_SCRIPT, RENEW_SCRIPT, SETTLE_SCRIPT, USAGE_SCRIPT } from './redis-scripts.ts';

export const DEFAULT_COMMAND_TIMEOUT_MS = 50;
/** Repeated warnings about the same failure are logged at most this often. */
const WARNING_INTERVAL_MS = 10_000;
/** A TCP connect that takes longer fails, and the client retries with backoff. */
const CONNECT_TIMEOUT_MS = 2000;
/**
 * A connection that delivers no byte for this long while commands wait is destroyed and
 * reconnected. Command timeouts alone leave a half-dead socket open until TCP gives up.
 */
const SOCKET_TIMEOUT_MS = 5000;
const MAX_RECONNECT_DELAY_MS = 2000;
const UNAVAILABLE_MESSAGE = 'the rate limiter (Redis) is unavailable; retry shortly';

/** Returns the delay in ms before reconnect attempt `attempt` (counted from 1), doubling from 50 ms up to 2 s, plus jitter. */
export function reconnectDelay(attempt: number): number {
  return Math.min(50 * 2 ** (attempt - 1), MAX_RECONNECT_DELAY_MS) + Math.floor(Math.random() * 100);
}

/**
 * Creates a client for request-path commands. Every command fails after `commandTimeoutMs`, and
 * commands fail at once while the connection is down instead of waiting in a queue.
 */
export function createRedisClient(url: string, options: { commandTimeoutMs: number; connectionName: string }): Redis {
  return new Redis(url, {
    commandTimeout: options.commandTimeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    connectTimeout: CONNECT_TIMEOUT_MS,
    socketTimeout: SOCKET_TIMEOUT_MS,
    retryStrategy: reconnectDelay,
    connectionName: options.connectionName,
    // Maintenance notifications would relax command timeouts to 10 s during a server handoff
    // (`maintRelaxedCommandTimeout` in ioredis 6.1).
    maintNotifications: 'disabled',
  });
}

/** Resolves once the client is connected. Rejects after `timeoutMs`, or at once when the client was closed. */
export function waitForReady(client: Redis, timeoutMs: number): Promise<void> {
  if (client.status === 'ready') return Promise.resolve();
  if (client.status === 'end') return Promise.reject(new Error('the Redis client was closed'));
  return new Promise((resolve, reject) => {
    const onReady = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      client.off('ready', onReady);
      reject(new Error(`Redis did not become ready within ${timeoutMs} ms`));
    }, timeoutMs);
    client.once('ready', onReady);
  });
}

/** Logger for a repeated warning: one line per interval at most, carrying the count of repeats left out since the last line. */
export class ThrottledWarning {
  private lastAt = -Infinity;
  private suppressed = 0;

  constructor(
    private readonly logger: Logger,
    private readonly intervalMs = WARNING_INTERVAL_MS,
    private readonly now: () => number = Date.now,
  ) {}

  warn(fields: Record<string, unknown>, message: string): void {
    const now = this.now();
    if (now - this.lastAt < this.intervalMs) {
      this.suppressed++;
      return;
    }
    this.logger.warn({ ...fields, suppressed: this.suppressed }, message);
    this.lastAt = now;
    this.suppressed = 0;
  }
}

export interface RedisLimiterOptions {
  url: string;
  keyPrefix: string;
  /** Deadline of every Redis command, in ms. Default 50. */
  commandTimeoutMs?: number;
  /** `open` admits requests unchecked while Redis fails; `closed` rejects them with `store_unavailable`. */
  failureMode: 'open' | 'closed';
  logger: Logger;
}

export interface RedisLimiterClientOptions {
  /**
   * A client the caller owns and closes, mostly for tests. It must set `commandTimeout`, and it
   * must not set `keyPrefix` because the limiter builds whole keys itself.
   */
  client: Redis;
  keyPrefix: string;
  failureMode: 'open' | 'closed';
  logger: Logger;
}

export interface RedisLimiterStats {
  /** Admissions granted without a check because Redis failed, in `open` mode. */
  failOpenAdmissions: number;
  /** Failed limiter operations, including calls rejected at once by the open circuit. */
  errors: number;
  /** The circuit rejects calls (open, or half-open while a probe runs). */
  breakerOpen: boolean;
}

type Operation = 'admit' | 'settle' | 'renewLease';

interface LimiterScripts {
  llmProxyAdmit(numKeys: number, ...keysAndArgs: (string | number)[]): Promise<number[]>;
  llmProxySettle(numKeys: number, ...keysAndArgs: (string | number)[]): Promise<number>;
  llmProxyRenewLease(numKeys: number, ...keysAndArgs: (string | number)[]): Promise<number>;
  llmProxyUsage(numKeys: number, ...keysAndArgs: (string | number)[]): Promise<number[]>;
}

/** Registers the scripts; ioredis sends EVALSHA and falls back to EVAL when the server lacks one. */
function defineScripts(client: Redis): Redis & LimiterScripts {
  client.defineCommand('llmProxyAdmit', { lua: ADMIT_SCRIPT });
  client.defineCommand('llmProxySettle', { lua: SETTLE_SCRIPT });
  client.defineCommand('llmProxyRenewLease', { lua: RENEW_SCRIPT });
  client.defineCommand('llmProxyUsage', { lua: USAGE_SCRIPT });
  return client as Redis & LimiterScripts;
}

/**
 * `Limiter` over Redis, with the same results as `MemoryLimiter`. Every call is bounded by the
 * command timeout and guarded by a circuit breaker, so a dead Redis costs a request at most
 * one timeout, and nothing once the circuit is open. Limits are enforced again as soon as a
 * probe succeeds, without a restart.
 *
 * Costs, deltas, intervals and lease TTLs must be integers because INCRBY and PX take integers,
 * so other values throw a RangeError before Redis is called.
 *
 * NOTE: a script that timed out on the client may still run when a stalled Redis resumes. Its
 * charges then count although the request was admitted unchecked or rejected, and its lease is
 * held until its TTL. The breaker bounds this to the 5 calls that open the circuit plus one probe
 * per second of the stall. A 2.5 s SIGSTOP with an admit every 10 ms left 7 late charges.
 */
export class RedisLimiter implements Limiter {
  private readonly client: Redis & LimiterScripts;
  private readonly ownsClient: boolean;
  private readonly keyPrefix: string;
  private readonly failureMode: 'open' | 'closed';
  private readonly logger: Logger;
  private readonly breaker: CircuitBreaker;
  private readonly warnings: Record<Operation | 'connection', ThrottledWarning>;
  private readonly onConnectionError: (error: Error) => void;
  private failOpenAdmissions = 0;
  private errors = 0;

  constructor(options: RedisLimiterOptions | RedisLimiterClientOptions) {
    this.keyPrefix = options.keyPrefix;
    this.failureMode = options.failureMode;
    this.logger = options.logger;
    if ('client' in options) {
      if (typeof options.client.options.commandTimeout !== 'number') throw new TypeError('the Redis client given to RedisLimiter must set commandTimeout');
      if (options.client.options.keyPrefix) throw new TypeError('the Redis client given to RedisLimiter must not set keyPrefix; pass keyPrefix to RedisLimiter');
      this.client = defineScripts(options.client);
      this.ownsClient = false;
    } else {
      const commandTimeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
      this.client = defineScripts(createRedisClient(options.url, { commandTimeoutMs, connectionName: 'llm-proxy-limiter' }));
      this.ownsClient = true;
    }

    this.warnings = {
      admit: new ThrottledWarning(this.logger),
      settle: new ThrottledWarning(this.logger),
      renewLease: new ThrottledWarning(this.logger),
      connection: new ThrottledWarning(this.logger),
    };
    this.onConnectionError = (error) => this.warnings.connection.warn({ err: error }, 'Redis limiter connection failed, reconnecting');
    this.client.on('error', this.onConnectionError);
    this.breaker = new CircuitBreaker({ name: 'redis-limiter', onStateChange: (state, previous) => this.logStateChange(state, previous) });
  }

  async admit(checks: QuotaCheck[], lease?: LeaseRequest): Promise<AdmitResult> {
    if (checks.length === 0 && lease === undefined) return { allowed: true, counters: [], inFlight: undefined };
    const keys: string[] = [];
    const args: (string | number)[] = [checks.length, lease === undefined ? 0 : 1];
    for (const check of checks) {
      requireInteger(check.cost, 'check cost');
      requirePositiveInteger(check.intervalMs, 'check intervalMs');
      keys.push(this.counterKey(check.key));
      args.push(check.limit, check.intervalMs, check.cost, check.mode);
    }
    if (lease !== undefined) {
      requirePositiveInteger(lease.ttlMs, 'lease ttlMs');
      keys.push(this.leaseKey(lease.actorId, lease.feature));
      args.push(lease.id, lease.max, lease.ttlMs);
    }

    let reply: number[];
    try {
      reply = await this.breaker.run(() => this.client.llmProxyAdmit(keys.length, ...keys, ...args));
    } catch (error) {
      this.recordFailure('admit', error);
      if (this.failureMode === 'closed') {
        throw new GatewayError('store_unavailable', UNAVAILABLE_MESSAGE, { cause: error, headers: { 'retry-after': '1' } });
      }
      this.failOpenAdmissions++;
      return admitUnchecked(checks);
    }
    return parseAdmitReply(checks, reply);
  }

  async settle(adjustments: Adjustment[], lease?: { actorId: string; feature: Feature; id: string }): Promise<void> {
    const changes = adjustments.filter((adjustment) => adjustment.delta !== 0);
    if (changes.length === 0 && lease === undefined) return;
    const keys: string[] = [];
    const args: (string | number)[] = [changes.length];
    for (const adjustment of changes) {
      requireInteger(adjustment.delta, 'adjustment delta');
      requirePositiveInteger(adjustment.intervalMs, 'adjustment intervalMs');
      keys.push(this.counterKey(adjustment.key));
      args.push(adjustment.delta, adjustment.intervalMs);
    }
    if (lease !== undefined) {
      keys.push(this.leaseKey(lease.actorId, lease.feature));
      args.push(lease.id);
    }

    try {
      await this.breaker.run(() => this.client.llmProxySettle(keys.length, ...keys, ...args));
    } catch (error) {
      this.recordFailure('settle', error);
    }
  }

  async renewLease(lease: LeaseRequest): Promise<void> {
    requirePositiveInteger(lease.ttlMs, 'lease ttlMs');
    try {
      await this.breaker.run(() => this.client.llmProxyRenewLease(1, this.leaseKey(lease.actorId, lease.feature), lease.id, lease.ttlMs));
    } catch (error) {
      this.recordFailure('renewLease', error);
    }
  }

  /** Reads one counter. Throws `store_unavailable` when Redis fails. */
  async usage(key: LimitKey): Promise<WindowUsage> {
    let reply: number[];
    try {
      reply = await this.breaker.run(() => this.client.llmProxyUsage(1, this.counterKey(key)));
    } catch (error) {
      this.errors++;
      throw new GatewayError('store_unavailable', UNAVAILABLE_MESSAGE, { cause: error, headers: { 'retry-after': '1' } });
    }
    const [used, resetAt] = reply;
    return { used, resetAt: resetAt < 0 ? undefined : resetAt };
  }

  /** Sends PING for health checks. The command timeout bounds it, and the circuit breaker does not apply. */
  async ping(): Promise<void> {
    await this.client.ping();
  }

  /** Resolves once the connection is up, so the first requests after start-up are checked. */
  async waitUntilReady(timeoutMs: number): Promise<void> {
    await waitForReady(this.client, timeoutMs);
  }

  stats(): RedisLimiterStats {
    return { failOpenAdmissions: this.failOpenAdmissions, errors: this.errors, breakerOpen: this.breaker.state !== 'closed' };
  }

  /** Closes the connection the limiter opened. A client given to the constructor stays open. */
  async close(): Promise<void> {
    if (!this.ownsClient) {
      this.client.off('error', this.onConnectionError);
      return;
    }
    try {
      await this.client.quit();
    } catch {
      // QUIT fails within the command timeout when Redis is down, so the connection is dropped instead.
      this.client.disconnect();
    }
  }

  private counterKey(key: LimitKey): string {
    return `${this.keyPrefix}{${key.actorId}}:q:${key.feature}:${key.counter}`;
  }

  private leaseKey(actorId: string, feature: Feature): string {
    return `${this.keyPrefix}{${actorId}}:lease:${feature}`;
  }

  private recordFailure(operation: Operation, error: unknown): void {
    this.errors++;
    let consequence: string;
    if (operation === 'admit') {
      consequence = this.failureMode === 'open' ? 'admitting requests without checking limits' : 'rejecting requests with store_unavailable';
    } else if (operation === 'settle') {
      consequence = 'the adjustments were dropped and the lease stays held until its TTL';
    } else {
      consequence = 'the lease expires after its TTL unless a later renewal succeeds';
    }
    this.warnings[operation].warn({ err: error, operation }, `rate limiter ${operation} on Redis failed: ${consequence}`);
  }

  private logStateChange(state: CircuitState, previous: CircuitState): void {
    if (state === 'open' && previous === 'closed') {
      this.logger.warn({ failureMode: this.failureMode }, 'Redis limiter circuit opened after consecutive failures; calls fail at once, with a probe every second');
    } else if (state === 'closed') {
      this.logger.info('Redis limiter circuit closed: Redis responded to a probe, and limits are enforced again');
    }
  }
}

/** Returns an admission granted without checks, for `open` mode while Redis fails. */
function admitUnchecked(checks: QuotaCheck[]): AdmitResult {
  const now = Date.now();
  const counters = checks.map((check) => ({ key: check.key, limit: check.limit, remaining: check.limit, resetAt: now + check.intervalMs }));
  return { allowed: true, counters, inFlight: undefined };
}

function parseAdmitReply(checks: QuotaCheck[], reply: number[]): AdmitResult {
  const [allowed, rejectedBy, inFlight] = reply;
  const counters: CounterState[] = checks.map((check, i) => ({
    key: check.key,
    limit: check.limit,
    remaining: reply[3 + 2 * i],
    resetAt: reply[4 + 2 * i],
  }));
  const result: AdmitResult = { allowed: allowed === 1, counters };
  if (allowed !== 1) result.rejectedBy = rejectedBy === -2 ? 'concurrency' : rejectedBy;
  result.inFlight = inFlight < 0 ? undefined : inFlight;
  return result;
}

function requireInteger(value: number, name: string): void {
  if (!Number.isSafeInteger(value)) throw new RangeError(`RedisLimiter: ${name} must be an integer, got ${value}`);
}

function requirePositiveInteger(value: number, name: string): void {
  if (!Number.isSafeInteger(value) || value <= 0) throw new RangeError(`RedisLimiter: ${name} must be a positive integer, got ${value}`);
}
