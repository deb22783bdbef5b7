/**
 * Input-token estimates for responses that report no usage. The gateway keeps only the raw
 * request body while a request runs and reads the prompt out of it again at the end, so each
 * route's estimate is checked against the tokenizer's count of that route's prompt text.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { countTokens } from '../../src/usage/tokenizer.ts';
import { anthropicCompletion, openaiChatStream, splitSseEvents } from '../helpers/upstream-server.ts';
import { bearer, eventFor, post, useProxyTestBed } from './client.ts';

const SSE_HEADERS = { 'content-type': 'text/event-stream' };
const SYSTEM = 'You answer in one short sentence.';
const QUESTION = 'How many moons does Mars have, and what are they called?';

const bed = useProxyTestBed();

interface EstimateCase {
  name: string;
  path: string;
  request: object;
  /** The prompt's text pieces, which the estimate counts joined with newlines. */
  parts: string[];
  /** The upstream's response, which carries no usage. */
  response: Parameters<typeof bed.upstream.enqueue>[0];
}

const CASES: EstimateCase[] = [
  {
    name: 'Anthropic Text Completions',
    path: '/v1/complete',
    request: { model: 'claude-test', prompt: `\n\nHuman: ${QUESTION}\n\nAssistant:`, max_tokens_to_sample: 64 },
    parts: [`\n\nHuman: ${QUESTION}\n\nAssistant:`],
    response: { body: anthropicCompletion(' Two: Phobos and Deimos.') },
  },
  {
    // The gateway adds include_usage and strips the `openai/` prefix, so the body it keeps is a rewritten one.
    name: 'OpenAI chat stream cut before usage',
    path: '/v1/chat/completions',
    request: { model: 'openai/gpt-test', stream: true, messages: [{ role: 'system', content: SYSTEM }, { role: 'user', content: [{ type: 'text', text: QUESTION }] }] },
    parts: [SYSTEM, QUESTION],
    response: { headers: SSE_HEADERS, chunks: splitSseEvents(openaiChatStream('Two moons.')).slice(0, 2) },
  },
  {
    name: 'OpenAI completions with suffix',
    path: '/v1/completions',
    request: { model: 'gpt-test', prompt: ['def add(a, b):', '    return'], suffix: '\n\nprint(add(1, 2))' },
    parts: ['def add(a, b):', '    return', '\n\nprint(add(1, 2))'],
    response: { body: { id: 'cmpl_1', object: 'text_completion', created: 1, model: 'gpt-test', choices: [{ index: 0, text: ' a + b', finish_reason: 'stop' }] } },
  },
  {
    name: 'Anthropic Messages without usage',
    path: '/v1/messages',
    request: { model: 'claude-test', max_tokens: 64, system: SYSTEM, messages: [{ role: 'user', content: QUESTION }] },
    parts: [SYSTEM, QUESTION],
    response: { body: { id: 'msg_1', type: 'message', role: 'assistant', model: 'claude-test', content: [{ type: 'text', text: 'Two.' }], stop_reason: 'end_turn' } },
  },
];

for (const testCase of CASES) {
  test(`input estimate: ${testCase.name}`, async () => {
    const { agent, gateway, upstream } = bed;
    const actor = await gateway.createActor();
    upstream.enqueue(testCase.response);

    const response = await post(agent, gateway.url + testCase.path, testCase.request, { headers: bearer(actor.token) });
    assert.equal(response.status, 200, `status, body ${response.body.toString('utf8')}`);
    const event = await eventFor(gateway, actor.id, 1, response);

    const expected = await countTokens(testCase.parts.join('\n'));
    assert.ok(expected > 10, 'the prompt is long enough for a wrong text to give another count');
    assert.equal(event.tokensEstimated, true);
    assert.equal(event.inputTokens, expected, 'estimated input tokens');
    assert.equal(event.promptChars, testCase.parts.join('').length, 'prompt characters');
  });
}
