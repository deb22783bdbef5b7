import assert from 'node:assert/strict';

/** Awaits a call that must fail and returns its error after checking the error's class. */
export async function rejection<T>(work: Promise<unknown>, type: abstract new (...args: any[]) => T): Promise<T> {
  try {
    await work;
  } catch (error) {
    assert.ok(error instanceof type, `expected ${type.name}, got ${String(error)}`);
    return error;
  }
  assert.fail(`expected ${type.name}, but the call succeeded`);
}

/** Reads a stream to its end and returns its items. */
export async function collect<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of stream) items.push(item);
  return items;
}
