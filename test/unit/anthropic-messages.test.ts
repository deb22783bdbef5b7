import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { GatewayError } from '../../src/errors/errors.ts';
import { anthropicMessages } from '../../src/providers/anthropic/messages.ts';
import type { ResponseTap } from '../../src/providers/types.ts';

const REQUEST = { model: 'claude-haiku-4-5', max_tokens: 64, stream: true, system: 'Be brief.', messages: [{ role: 'user', content: 'Hi' }] };

function createTap(): ResponseTap {
  const raw = Buffer.from(JSON.stringify(REQUEST));
  return anthropicMessages.createTap(anthropicMessages.prepare(JSON.parse(raw.toString()) as Record<string, unknown>, raw));
}

function sse(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

const MESSAGE_START = sse('message_start', {
  type: 'message_start',
  message: {
    id: 'msg_1',
    type: 'message',
    role: 'assistant',
    model: 'claude-haiku-4-5-20251001',
    content: [],
    stop_reason: null,
    usage: { input_tokens: 10, cache_creation_input_tokens: 3, cache_read_input_tokens: 5, output_tokens: 1 },
  },
});

const STREAM = [
  MESSAGE_START,
  sse('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }),
  sse('ping', { type: 'ping' }),
  sse('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Hello' } }),
  sse('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: ' world' } }),
  sse('content_block_stop', { type: 'content_block_stop', index: 0 }),
  sse('message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: 4 } }),
  sse('message_stop', { type: 'message_stop' }),
].join('');

function feed(tap: ResponseTap, text: string): void {
  for (const byte of Buffer.from(text)) tap.streamChunk(Buffer.of(byte));
  tap.streamEnd();
}

describe('anthropicMessages stream tap', () => {
  const tap = createTap();
  feed(tap, STREAM);

  it('reads input and output tokens', () => {
    assert.equal(tap.meter.inputTokens, 10);
    assert.equal(tap.meter.outputTokens, 4);
  });

  it('reads cache tokens', () => {
    assert.equal(tap.meter.cacheCreationInputTokens, 3);
    assert.equal(tap.meter.cacheReadInputTokens, 5);
  });

  it('reads model and text', () => {
    assert.equal(tap.meter.upstreamModel, 'claude-haiku-4-5-20251001');
    assert.equal(tap.meter.completionChars, 'Hello world'.length);
  });

  it('marks usage reported and finished', () => {
    assert.equal(tap.meter.usageReported, true);
    assert.equal(tap.meter.finished, true);
    assert.equal(tap.meter.errorEvent, false);
  });

  it('forwards chunk unchanged', () => {
    const chunk = Buffer.from(MESSAGE_START);
    assert.equal(createTap().streamChunk(chunk), chunk);
  });

  it('keeps last cumulative output', () => {
    const twoDeltas = createTap();
    feed(twoDeltas, [
      MESSAGE_START,
      sse('message_delta', { type: 'message_delta', delta: { stop_reason: null }, usage: { output_tokens: 4 } }),
      sse('message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 9 } }),
      sse('message_stop', { type: 'message_stop' }),
    ].join(''));
    assert.equal(twoDeltas.meter.outputTokens, 9);
    assert.equal(twoDeltas.meter.inputTokens, 10);
  });

  it('takes input from message_delta', () => {
    const withInput = createTap();
    feed(withInput, MESSAGE_START + sse('message_delta', { type: 'message_delta', delta: {}, usage: { input_tokens: 12, output_tokens: 4 } }));
    assert.equal(withInput.meter.inputTokens, 12);
  });

  it('leaves usage unreported without message_delta', () => {
    const cut = createTap();
    feed(cut, MESSAGE_START);
    assert.equal(cut.meter.usageReported, false);
    assert.equal(cut.meter.finished, false);
    assert.equal(cut.meter.outputTokens, 1);
  });

  it('marks error event', () => {
    const failed = createTap();
    feed(failed, MESSAGE_START + sse('error', { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }));
    assert.equal(failed.meter.errorEvent, true);
    assert.equal(failed.meter.finished, false);
  });
});

describe('anthropicMessages JSON tap', () => {
  const tap = createTap();
  tap.jsonBody(Buffer.from(JSON.stringify({
    id: 'msg_2',
    type: 'message',
    role: 'assistant',
    model: 'claude-haiku-4-5-20251001',
    content: [{ type: 'text', text: 'Hi there' }],
    stop_reason: 'end_turn',
    usage: { input_tokens: 7, cache_creation_input_tokens: 0, cache_read_input_tokens: 2, output_tokens: 3 },
  })));

  it('reads usage', () => {
    assert.equal(tap.meter.inputTokens, 7);
    assert.equal(tap.meter.outputTokens, 3);
    assert.equal(tap.meter.cacheCreationInputTokens, 0);
    assert.equal(tap.meter.cacheReadInputTokens, 2);
  });

  it('reads model and text', () => {
    assert.equal(tap.meter.upstreamModel, 'claude-haiku-4-5-20251001');
    assert.equal(tap.meter.completionChars, 'Hi there'.length);
  });

  it('marks usage reported and finished', () => {
    assert.equal(tap.meter.usageReported, true);
    assert.equal(tap.meter.finished, true);
  });
});

describe('anthropicMessages prepare', () => {
  function catchError(run: () => unknown): unknown {
    try {
      run();
    } catch (error) {
      return error;
    }
    return undefined;
  }

  function prepare(json: Record<string, unknown>) {
    return anthropicMessages.prepare(json, Buffer.from(JSON.stringify(json)));
  }

  it('reads model, stream and prompt size', () => {
    const raw = Buffer.from(JSON.stringify(REQUEST));
    const prepared = anthropicMessages.prepare(JSON.parse(raw.toString()) as Record<string, unknown>, raw);
    assert.equal(prepared.model, 'claude-haiku-4-5');
    assert.equal(prepared.stream, true);
    assert.equal(prepared.body, raw);
    assert.equal(prepared.promptChars, 'Be brief.'.length + 'Hi'.length);
    assert.equal(prepared.injectedUsage, false);
  });

  const invalid: Array<[string, Record<string, unknown>, string]> = [
    ['missing model', { messages: [] }, 'model'],
    ['empty model', { model: ' ', messages: [] }, 'model'],
    ['numeric model', { model: 3, messages: [] }, 'model'],
    ['missing messages', { model: 'claude-haiku-4-5' }, 'messages'],
    ['object messages', { model: 'claude-haiku-4-5', messages: { role: 'user' } }, 'messages'],
    ['string stream flag', { model: 'claude-haiku-4-5', messages: [], stream: 'yes' }, 'stream'],
  ];
  for (const [name, json, param] of invalid) {
    it(`rejects ${name}`, () => {
      const error = catchError(() => prepare(json));
      assert.ok(error instanceof GatewayError, `expected GatewayError, got ${String(error)}`);
      assert.equal(error.code, 'invalid_request');
      assert.equal(error.status, 400);
      assert.equal(error.param, param);
    });
  }
});
