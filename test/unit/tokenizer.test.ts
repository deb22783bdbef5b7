import assert from 'node:assert/strict';
import { test } from 'node:test';
import { countTokens as libraryCount } from 'gpt-tokenizer/encoding/cl100k_base';
import { countTokens, countTokensNow, loadTokenizer } from '../../src/usage/tokenizer.ts';

const ENGLISH = 'The gateway counts tokens locally when a provider reports no usage, such as for legacy completions. ';

test('ordinary text counted exactly', async () => {
  for (const text of [ENGLISH, ENGLISH.repeat(50), `${ENGLISH}\n\n  indented\tline, 12345 numbers`]) {
    assert.equal(await countTokens(text), libraryCount(text), `${text.length} characters`);
  }
});

test('long unbroken runs counted in slices', async () => {
  // Counted in one piece, 200,000 letters take minutes of byte-pair merging on the event loop.
  for (const run of ['a'.repeat(200_000), ' '.repeat(200_000), '=-'.repeat(100_000)]) {
    const count = await countTokens(`start ${run} end`);
    assert.ok(count > run.length / 200, `${count} tokens for a run of ${run.length} characters`);
    assert.ok(count < run.length, `${count} tokens for a run of ${run.length} characters`);
  }
  await loadTokenizer();
  const slicedRun = 'x'.repeat(1000);
  assert.equal(countTokensNow(slicedRun), await countTokens(slicedRun), 'both counters slice alike');
});

test('text beyond 1 MiB extrapolated', async () => {
  const head = ENGLISH.repeat(Math.ceil((1024 * 1024) / ENGLISH.length));
  const counted = await countTokens(head.slice(0, 1024 * 1024));
  const doubled = await countTokens(head.slice(0, 1024 * 1024).repeat(2));
  assert.equal(doubled, counted * 2, 'twice the text, twice the tokens');
});
