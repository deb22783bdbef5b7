import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatDuration, parseDuration } from '../../src/config/duration.ts';

describe('parseDuration', () => {
  const accepted: Array<[string | number, number]> = [
    ['30s', 30_000],
    ['10m', 600_000],
    ['24h', 86_400_000],
    ['1h30m', 5_400_000],
    ['1h30m15s', 5_415_000],
    ['250ms', 250],
    ['1s250ms', 1250],
    ['1.5s', 1500],
    ['0s', 0],
    ['90', 90_000],
    ['0', 0],
    [' 30s ', 30_000],
    [90, 90_000],
    [0, 0],
  ];
  for (const [input, expected] of accepted) {
    it(`parses ${JSON.stringify(input)}`, () => {
      assert.equal(parseDuration(input), expected);
    });
  }

  const rejected: Array<string | number> = ['-1s', '1d', 'abc', '', '   ', '-1', '1.5', 's', '10 m', '1h30', 'ms', -1, 1.5, Number.NaN];
  for (const input of rejected) {
    it(`rejects ${JSON.stringify(input)}`, () => {
      assert.equal(parseDuration(input), undefined);
    });
  }
});

describe('formatDuration', () => {
  const cases: Array<[number, string]> = [
    [86_400, '24h0m0s'],
    [5400, '1h30m0s'],
    [3661, '1h1m1s'],
    [90, '1m30s'],
    [60, '1m0s'],
    [5, '5s'],
    [0, '0s'],
  ];
  for (const [seconds, expected] of cases) {
    it(`formats ${seconds} seconds`, () => {
      assert.equal(formatDuration(seconds), expected);
    });
  }

  it('round-trips through parseDuration', () => {
    for (const seconds of [0, 5, 90, 3661, 86_400]) {
      assert.equal(parseDuration(formatDuration(seconds)), seconds * 1000, `seconds ${seconds}`);
    }
  });
});
