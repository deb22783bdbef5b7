import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BOOLEAN_EVENT_INDEXES, EVENT_COLUMNS, eventValues } from '../../src/storage/rows.ts';
import { makeEvent } from '../helpers/events.ts';

test('eventValues lists every field in EVENT_COLUMNS order', () => {
  // Every field gets a value no other field has, so a swapped pair cannot go unnoticed.
  // The two booleans get opposite values for the same reason.
  const event = makeEvent();
  let booleans = 0;
  const distinct = Object.fromEntries(Object.keys(event).map((field, index) => [field, typeof event[field as keyof typeof event] === 'boolean' ? booleans++ % 2 === 0 : `value-${index}`]));
  const values = eventValues(distinct as unknown as typeof event);
  assert.deepEqual(values, EVENT_COLUMNS.map(([field]) => distinct[field]));
  assert.equal(values.length, Object.keys(event).length, 'every UsageEvent field has a column');
});

test('BOOLEAN_EVENT_INDEXES points at the boolean fields', () => {
  assert.deepEqual(BOOLEAN_EVENT_INDEXES.map((index) => EVENT_COLUMNS[index][0]), ['stream', 'tokensEstimated']);
});
