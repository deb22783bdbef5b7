import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ProviderConfig } from '../../src/config/config.ts';
import { maskKeyInChunk, sanitizeUpstreamText, StreamKeyMask } from '../../src/pipeline/sanitize.ts';

const openai: ProviderConfig = {
  name: 'openai',
  apiKey: 'sk-upstream-secret-0123456789WXYZ',
  baseUrl: 'http://llm-relay.internal:8443/v1',
  allowedModels: ['*'],
  retryAfterSeconds: 30,
  organization: null,
};

/** A key without the `sk-` prefix, as issued by an internal relay. */
const relay: ProviderConfig = { ...openai, apiKey: 'relay-key-0123456789abcdef' };

const anthropic: ProviderConfig = {
  name: 'anthropic',
  apiKey: 'sk-ant-api03-AbCdEf_0123456789-xyzXYZ-AA',
  baseUrl: 'https://api.anthropic.com',
  allowedModels: ['*'],
  retryAfterSeconds: 2,
  organization: null,
};

describe('sanitizeUpstreamText', () => {
  it('removes masked key', () => {
    const text = '{"error":{"message":"Incorrect API key provided: sk-up****WXYZ. You can find your API key at https://platform.openai.com/account/api-keys."}}';
    const result = sanitizeUpstreamText(text, openai);
    assert.ok(!result.includes('sk-up****WXYZ'), result);
    assert.ok(!result.includes('WXYZ'), result);
  });

  it('removes full key', () => {
    const result = sanitizeUpstreamText(`key ${openai.apiKey} is invalid`, openai);
    assert.ok(!result.includes(openai.apiKey as string), result);
  });

  it('removes key without sk- prefix', () => {
    const result = sanitizeUpstreamText('invalid key relay-key-0123456789abcdef for project', relay);
    assert.ok(!result.includes('relay-key-0123456789abcdef'), result);
  });

  it('removes Anthropic key', () => {
    const result = sanitizeUpstreamText('invalid x-api-key sk-ant-api03-ZZZ_999-other-key', anthropic);
    assert.ok(!result.includes('sk-ant-api03'), result);
    assert.ok(!result.includes('ZZZ_999'), result);
  });

  it('removes base URL', () => {
    const result = sanitizeUpstreamText('POST http://llm-relay.internal:8443/v1/chat/completions failed', openai);
    assert.ok(!result.includes('llm-relay.internal'), result);
    assert.ok(!result.includes('/v1/chat/completions'), result);
  });

  it('removes host with port', () => {
    const result = sanitizeUpstreamText('upstream llm-relay.internal:8443 refused the connection', openai);
    assert.ok(!result.includes('llm-relay.internal'), result);
  });

  it('removes host name without port', () => {
    const result = sanitizeUpstreamText('no route to host llm-relay.internal', openai);
    assert.ok(!result.includes('llm-relay.internal'), result);
  });

  it('removes URL on other scheme', () => {
    const result = sanitizeUpstreamText('see https://llm-relay.internal:8443/status', openai);
    assert.ok(!result.includes('llm-relay.internal'), result);
  });

  const ordinary: Array<[string, string]> = [
    ['Anthropic error body', '{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}'],
    ['OpenAI error body', '{"error":{"message":"The model `gpt-5` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}'],
    ['words containing sk-', 'a task-based risk-free ask-me answer'],
    ['other host on same domain', 'see https://docs.anthropic.com/en/api/errors'],
    ['empty text', ''],
  ];
  for (const [name, text] of ordinary) {
    it(`keeps ${name}`, () => {
      for (const provider of [anthropic, openai]) {
        assert.equal(sanitizeUpstreamText(text, provider), text, `with ${provider.name} config`);
      }
    });
  }
});

describe('StreamKeyMask', () => {
  const key = Buffer.from('sk-stream-secret-0123456789');
  const text = `data: {"message":"key ${key} leaked"}\n\n`;
  const expected = text.replace(key.toString(), '*'.repeat(key.length));

  function run(chunks: string[]): { output: string; sizes: number[] } {
    const mask = new StreamKeyMask(key);
    const parts = chunks.map((chunk) => mask.push(Buffer.from(chunk)));
    assert.equal(mask.end(), undefined, 'bytes still kept back at the end');
    return { output: Buffer.concat(parts).toString(), sizes: parts.map((part) => part.length) };
  }

  it('masks a key split at every position', () => {
    const start = text.indexOf(key.toString());
    for (let cut = start; cut <= start + key.length; cut++) {
      assert.equal(run([text.slice(0, cut), text.slice(cut)]).output, expected, `split at ${cut}`);
    }
  });

  it('masks a key split over three chunks', () => {
    const start = text.indexOf(key.toString());
    const chunks = [text.slice(0, start + 2), text.slice(start + 2, start + 9), text.slice(start + 9)];
    assert.equal(run(chunks).output, expected);
  });

  it('holds back nothing when no key starts', () => {
    const chunks = ['data: {"a":"s"}\n\n', 'data: {"b":"sk"}\n\n', 'data: {"c":"d"}\n\n'];
    const { output, sizes } = run(chunks);
    assert.equal(output, chunks.join(''));
    assert.deepEqual(sizes, chunks.map((chunk) => chunk.length), 'each chunk is forwarded whole');
  });

  it('holds a key start until the next chunk', () => {
    const mask = new StreamKeyMask(key);
    const first = mask.push(Buffer.from('data: sk-str'));
    assert.equal(first.toString(), 'data: ');
    const second = mask.push(Buffer.from('ing\n\n'));
    assert.equal(second.toString(), 'sk-string\n\n', 'the kept bytes were not the key');
    assert.equal(mask.end(), undefined);
  });

  it('returns an unfinished key start at the end', () => {
    const mask = new StreamKeyMask(key);
    assert.equal(mask.push(Buffer.from('data: sk-stream-sec')).toString(), 'data: ');
    assert.equal(mask.end()?.toString(), 'sk-stream-sec');
  });
});

describe('maskKeyInChunk', () => {
  it('masks every copy and keeps the length', () => {
    const key = Buffer.from('sk-chunk-secret-000');
    const chunk = Buffer.from(`${key} and ${key}`);
    const masked = maskKeyInChunk(chunk, key);
    assert.equal(masked.toString(), `${'*'.repeat(key.length)} and ${'*'.repeat(key.length)}`);
    assert.equal(chunk.toString(), `${key} and ${key}`, 'the input buffer is left as it was');
  });
});
