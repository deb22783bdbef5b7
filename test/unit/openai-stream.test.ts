import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { OpenAiTap } from '../../src/providers/openai/stream.ts';

const HEAD = '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1"';

/** The stream the upstream sends when the gateway asked for `stream_options.include_usage`. */
const WITH_USAGE = [
  `data: ${HEAD},"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}\n\n`,
  `data: ${HEAD},"choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}\n\n`,
  `data: ${HEAD},"choices":[{"index":0,"delta":{"content":" there, \\"usage\\":null"},"logprobs":null,"finish_reason":null}],"usage":null}\n\n`,
  `data: ${HEAD},"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}\n\n`,
  `data: ${HEAD},"choices":[],"usage":{"prompt_tokens":21,"completion_tokens":7,"total_tokens":28,"prompt_tokens_details":{"cached_tokens":16,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":2,"audio_tokens":0}}}\n\n`,
  'data: [DONE]\n\n',
].join('');

/** The same stream as the upstream sends it without `include_usage`. */
const WITHOUT_USAGE = [
  `data: ${HEAD},"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n`,
  `data: ${HEAD},"choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}\n\n`,
  `data: ${HEAD},"choices":[{"index":0,"delta":{"content":" there, \\"usage\\":null"},"logprobs":null,"finish_reason":null}]}\n\n`,
  `data: ${HEAD},"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n`,
  'data: [DONE]\n\n',
].join('');

/** Feeds the chunks to the tap and returns everything it forwarded, end included. */
function run(tap: OpenAiTap, chunks: Buffer[]): string {
  const out: Buffer[] = [];
  for (const chunk of chunks) {
    const forwarded = tap.streamChunk(chunk);
    if (forwarded !== undefined) out.push(forwarded);
  }
  const rest = tap.streamEnd();
  if (rest !== undefined) out.push(rest);
  return Buffer.concat(out).toString('utf8');
}

function byteChunks(text: string): Buffer[] {
  return Array.from(Buffer.from(text, 'utf8'), (byte) => Buffer.of(byte));
}

describe('OpenAiTap rewrite', () => {
  it('removes usage null and usage chunk', () => {
    assert.equal(run(new OpenAiTap(true), [Buffer.from(WITH_USAGE)]), WITHOUT_USAGE);
  });

  it('gives same output byte by byte', () => {
    assert.equal(run(new OpenAiTap(true), byteChunks(WITH_USAGE)), WITHOUT_USAGE);
  });

  it('gives same output at every split', () => {
    const bytes = Buffer.from(WITH_USAGE);
    for (let offset = 0; offset <= bytes.length; offset += 7) {
      const output = run(new OpenAiTap(true), [bytes.subarray(0, offset), bytes.subarray(offset)]);
      assert.equal(output, WITHOUT_USAGE, `split at byte ${offset}`);
    }
  });

  it('handles CRLF byte by byte', () => {
    const withUsage = WITH_USAGE.replaceAll('\n', '\r\n');
    const withoutUsage = WITHOUT_USAGE.replaceAll('\n', '\r\n');
    assert.equal(run(new OpenAiTap(true), byteChunks(withUsage)), withoutUsage);
  });

  it('keeps DONE', () => {
    assert.ok(run(new OpenAiTap(true), [Buffer.from(WITH_USAGE)]).endsWith('data: [DONE]\n\n'));
  });

  it('holds back unfinished event', () => {
    const tap = new OpenAiTap(true);
    const forwarded = tap.streamChunk(Buffer.from('data: {"choices":[],'));
    assert.equal(forwarded, undefined);
  });

  it('forwards unfinished event at end', () => {
    const tail = `data: ${HEAD},"choices":[{"index":0,"delta":{"content":"cut"}}]}`;
    assert.equal(run(new OpenAiTap(true), [Buffer.from(tail)]), tail);
  });

  it('removes leading usage null', () => {
    const chunk = `data: ${HEAD},"usage":null,"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n`;
    const expected = `data: ${HEAD},"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n`;
    assert.equal(run(new OpenAiTap(true), [Buffer.from(chunk)]), expected);
  });

  it('forwards non-JSON event untouched', () => {
    const stream = ': keep-alive\n\ndata: not json\n\n';
    assert.equal(run(new OpenAiTap(true), [Buffer.from(stream)]), stream);
  });
});

describe('OpenAiTap meter', () => {
  const tap = new OpenAiTap(true);
  run(tap, [Buffer.from(WITH_USAGE)]);

  it('reads prompt and completion tokens', () => {
    assert.equal(tap.meter.inputTokens, 21);
    assert.equal(tap.meter.outputTokens, 7);
    assert.equal(tap.meter.totalTokens, 28);
  });

  it('reads cached and reasoning tokens', () => {
    assert.equal(tap.meter.cacheReadInputTokens, 16);
    assert.equal(tap.meter.reasoningTokens, 2);
  });

  it('marks usage reported and finished', () => {
    assert.equal(tap.meter.usageReported, true);
    assert.equal(tap.meter.finished, true);
  });

  it('reads model and text', () => {
    assert.equal(tap.meter.upstreamModel, 'gpt-4o-mini-2024-07-18');
    assert.equal(tap.meter.completionChars, 'Hello'.length + ' there, "usage":null'.length);
  });

  it('marks error chunk', () => {
    const errorTap = new OpenAiTap(false);
    run(errorTap, [Buffer.from('data: {"error":{"message":"overloaded","type":"server_error"}}\n\n')]);
    assert.equal(errorTap.meter.errorEvent, true);
  });

  it('reads JSON body usage', () => {
    const bodyTap = new OpenAiTap(false);
    bodyTap.jsonBody(Buffer.from('{"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'));
    assert.equal(bodyTap.meter.inputTokens, 5);
    assert.equal(bodyTap.meter.outputTokens, 1);
    assert.equal(bodyTap.meter.upstreamModel, 'gpt-4o');
    assert.equal(bodyTap.meter.finished, true);
  });
});

describe('OpenAiTap pass-through', () => {
  it('returns each chunk as same Buffer', () => {
    const tap = new OpenAiTap(false);
    for (const chunk of byteChunks(WITH_USAGE).slice(0, 50).concat([Buffer.from(WITH_USAGE)])) {
      assert.equal(tap.streamChunk(chunk), chunk);
    }
  });

  it('returns nothing at end', () => {
    const tap = new OpenAiTap(false);
    tap.streamChunk(Buffer.from('data: {"choices":[]'));
    assert.equal(tap.streamEnd(), undefined);
  });

  it('still meters usage', () => {
    const tap = new OpenAiTap(false);
    run(tap, byteChunks(WITH_USAGE));
    assert.equal(tap.meter.inputTokens, 21);
    assert.equal(tap.meter.outputTokens, 7);
    assert.equal(tap.meter.finished, true);
  });
});

describe('OpenAiTap running usage', () => {
  const running = (completion: number, finish: string | null) =>
    `data: ${HEAD},"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":${finish === null ? 'null' : `"${finish}"`}}],"usage":{"prompt_tokens":5,"completion_tokens":${completion},"total_tokens":${5 + completion}}}\n\n`;

  it('treats mid-stream usage as interim', () => {
    const tap = new OpenAiTap(false);
    run(tap, [Buffer.from(running(1, null) + running(2, null))]);
    assert.equal(tap.meter.usageReported, false);
    assert.equal(tap.meter.outputTokens, 2);
  });

  it('treats usage with finish reason as final', () => {
    const tap = new OpenAiTap(false);
    run(tap, [Buffer.from(running(1, null) + running(3, 'stop'))]);
    assert.equal(tap.meter.usageReported, true);
    assert.equal(tap.meter.outputTokens, 3);
  });
});
