import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CircuitBreaker, CircuitOpenError, type CircuitState } from '../../src/limits/breaker.ts';
import { ThrottledWarning } from '../../src/limits/redis.ts';
import { capturingLogger } from './support.ts';

const fail = (): Promise<never> => Promise.reject(new Error('Command timed out'));
const succeed = (): Promise<string> => Promise.resolve('OK');

function breakerWithClock(): { breaker: CircuitBreaker; clock: { now: number }; changes: string[] } {
  const clock = { now: 0 };
  const changes: string[] = [];
  const breaker = new CircuitBreaker({
    name: 'test',
    failureThreshold: 3,
    resetTimeoutMs: 1000,
    now: () => clock.now,
    onStateChange: (state: CircuitState, previous: CircuitState) => changes.push(`${previous}->${state}`),
  });
  return { breaker, clock, changes };
}

describe('CircuitBreaker', () => {
  it('opens after consecutive failures', async () => {
    const { breaker, changes } = breakerWithClock();
    for (let i = 0; i < 3; i++) await assert.rejects(breaker.run(fail), /Command timed out/);
    assert.equal(breaker.state, 'open');
    assert.deepEqual(changes, ['closed->open']);
  });

  it('resets count on success', async () => {
    const { breaker } = breakerWithClock();
    await assert.rejects(breaker.run(fail));
    await assert.rejects(breaker.run(fail));
    assert.equal(await breaker.run(succeed), 'OK');
    await assert.rejects(breaker.run(fail));
    await assert.rejects(breaker.run(fail));
    assert.equal(breaker.state, 'closed');
  });

  it('rejects without running while open', async () => {
    const { breaker, clock } = breakerWithClock();
    for (let i = 0; i < 3; i++) await assert.rejects(breaker.run(fail));
    let runs = 0;
    clock.now = 999;
    await assert.rejects(
      breaker.run(async () => {
        runs++;
        return 'OK';
      }),
      CircuitOpenError,
    );
    assert.equal(runs, 0);
  });

  it('closes after successful probe', async () => {
    const { breaker, clock, changes } = breakerWithClock();
    for (let i = 0; i < 3; i++) await assert.rejects(breaker.run(fail));
    clock.now = 1000;
    assert.equal(await breaker.run(succeed), 'OK');
    assert.equal(breaker.state, 'closed');
    assert.deepEqual(changes, ['closed->open', 'open->half_open', 'half_open->closed']);
  });

  it('runs one probe at a time', async () => {
    const { breaker, clock } = breakerWithClock();
    for (let i = 0; i < 3; i++) await assert.rejects(breaker.run(fail));
    clock.now = 1000;
    let release!: () => void;
    const probe = breaker.run(() => new Promise<string>((resolve) => (release = () => resolve('OK'))));
    assert.equal(breaker.state, 'half_open');
    await assert.rejects(breaker.run(succeed), CircuitOpenError);
    release();
    assert.equal(await probe, 'OK');
    assert.equal(await breaker.run(succeed), 'OK');
  });

  it('reopens after failed probe', async () => {
    const { breaker, clock, changes } = breakerWithClock();
    for (let i = 0; i < 3; i++) await assert.rejects(breaker.run(fail));
    clock.now = 1000;
    await assert.rejects(breaker.run(fail), /Command timed out/);
    assert.equal(breaker.state, 'open');
    clock.now = 1999;
    await assert.rejects(breaker.run(succeed), CircuitOpenError);
    clock.now = 2000;
    assert.equal(await breaker.run(succeed), 'OK');
    assert.deepEqual(changes, ['closed->open', 'open->half_open', 'half_open->open', 'open->half_open', 'half_open->closed']);
  });
});

describe('ThrottledWarning', () => {
  it('logs once per interval', () => {
    const { logger, lines } = capturingLogger();
    let now = 0;
    const warning = new ThrottledWarning(logger, 10_000, () => now);
    for (let i = 0; i < 5; i++) warning.warn({ operation: 'admit' }, 'Redis call failed');
    now = 9_999;
    warning.warn({ operation: 'admit' }, 'Redis call failed');
    now = 10_000;
    warning.warn({ operation: 'admit' }, 'Redis call failed');
    assert.equal(lines.length, 2);
    assert.equal(lines[0].suppressed, 0);
    assert.equal(lines[1].suppressed, 5);
    assert.equal(lines[1].level, 'warn');
    assert.equal(lines[1].operation, 'admit');
  });
});
