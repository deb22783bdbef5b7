import assert from 'node:assert/strict';
import type { IncomingHttpHeaders } from 'node:http';
import { describe, it } from 'node:test';
import type { ProviderConfig } from '../../src/config/config.ts';
import { clientResponseHeaders, retryAfterSeconds, upstreamRequestHeaders } from '../../src/pipeline/upstream.ts';

const NOW = Date.parse('2030-01-01T00:00:00Z');

describe('retryAfterSeconds', () => {
  const cases: Array<[string, string | string[] | undefined, number | undefined]> = [
    ['whole seconds', '30', 30],
    ['zero', '0', 0],
    ['fractional seconds', '1.5', 2],
    ['padded seconds', ' 7 ', 7],
    ['first of list', ['5', '9'], 5],
    ['HTTP date', 'Tue, 01 Jan 2030 00:00:30 GMT', 30],
    ['current HTTP date', 'Tue, 01 Jan 2030 00:00:00 GMT', 0],
    ['past HTTP date', 'Mon, 31 Dec 2029 23:59:00 GMT', 0],
    ['missing', undefined, undefined],
    ['empty', '', undefined],
    ['word', 'soon', undefined],
    ['garbage', '12abc', undefined],
    ['negative seconds', '-5', undefined],
  ];
  for (const [name, value, expected] of cases) {
    it(`reads ${name}`, () => {
      assert.equal(retryAfterSeconds(value, NOW), expected);
    });
  }
});

const anthropic: ProviderConfig = {
  name: 'anthropic',
  apiKey: 'sk-ant-upstream-key',
  baseUrl: 'https://api.anthropic.com',
  allowedModels: ['*'],
  retryAfterSeconds: 2,
  organization: null,
};

const openai: ProviderConfig = {
  name: 'openai',
  apiKey: 'sk-openai-upstream-key',
  baseUrl: 'https://api.openai.com/v1',
  allowedModels: ['*'],
  retryAfterSeconds: 30,
  organization: 'org-gateway',
};

const CLIENT: IncomingHttpHeaders = {
  host: '127.0.0.1:9992',
  authorization: 'Bearer llmp_client_token',
  'x-api-key': 'llmp_client_token',
  cookie: 'session=abc',
  'proxy-authorization': 'Basic eA==',
  'content-type': 'application/json',
  'content-length': '999',
  'accept-encoding': 'gzip',
  'anthropic-beta': 'prompt-caching-2024-07-31',
  'x-stainless-lang': 'js',
  'user-agent': 'Anthropic/JS 0.60.0',
  'x-forwarded-for': '10.0.0.1',
  'openai-organization': 'org-client',
};

describe('upstreamRequestHeaders', () => {
  const headers = upstreamRequestHeaders(CLIENT, anthropic, true, 42);

  for (const name of ['authorization', 'cookie', 'proxy-authorization', 'host', 'x-forwarded-for', 'openai-organization']) {
    it(`drops client ${name}`, () => {
      assert.equal(headers[name], undefined);
    });
  }

  it('replaces client x-api-key', () => {
    assert.equal(headers['x-api-key'], 'sk-ant-upstream-key');
  });

  it('defaults anthropic-version', () => {
    assert.equal(headers['anthropic-version'], '2023-06-01');
  });

  it('keeps client anthropic-version', () => {
    const own = upstreamRequestHeaders({ ...CLIENT, 'anthropic-version': '2024-01-01' }, anthropic, true, 42);
    assert.equal(own['anthropic-version'], '2024-01-01');
  });

  it('keeps anthropic-beta and SDK headers', () => {
    assert.equal(headers['anthropic-beta'], 'prompt-caching-2024-07-31');
    assert.equal(headers['x-stainless-lang'], 'js');
    assert.equal(headers['user-agent'], 'Anthropic/JS 0.60.0');
  });

  it('sets own content-length', () => {
    assert.equal(headers['content-length'], '42');
  });

  it('asks identity encoding for streams', () => {
    assert.equal(headers['accept-encoding'], 'identity');
  });

  it('asks compression for JSON', () => {
    assert.equal(upstreamRequestHeaders(CLIENT, anthropic, false, 42)['accept-encoding'], 'gzip, deflate, br');
  });

  it('defaults content-type', () => {
    assert.equal(upstreamRequestHeaders({}, anthropic, false, 2)['content-type'], 'application/json');
  });

  it('sets OpenAI bearer key', () => {
    const forOpenai = upstreamRequestHeaders(CLIENT, openai, true, 42);
    assert.equal(forOpenai.authorization, 'Bearer sk-openai-upstream-key');
    assert.equal(forOpenai['x-api-key'], undefined);
    assert.equal(forOpenai['anthropic-version'], undefined);
  });

  it('sets configured OpenAI organization', () => {
    assert.equal(upstreamRequestHeaders(CLIENT, openai, true, 42)['openai-organization'], 'org-gateway');
  });
});

describe('clientResponseHeaders', () => {
  const upstream: IncomingHttpHeaders = {
    connection: 'keep-alive, X-Internal-Hop',
    'keep-alive': 'timeout=5',
    'x-internal-hop': 'node-7',
    'transfer-encoding': 'chunked',
    'content-length': '120',
    'content-encoding': 'gzip',
    'set-cookie': ['__cf_bm=abc; path=/', '_cfuvid=def; path=/'],
    'request-id': 'req_upstream_1',
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    'openai-processing-ms': '120',
    'openai-organization': 'org-gateway',
    'anthropic-organization-id': 'org-uuid',
    'x-ratelimit-remaining-requests': '99',
    'anthropic-ratelimit-tokens-remaining': '1000',
    'retry-after': '3',
    'alt-svc': 'h3=":443"',
  };
  const headers = clientResponseHeaders(upstream, 'req_gateway_1');

  const dropped = [
    'connection',
    'keep-alive',
    'x-internal-hop',
    'transfer-encoding',
    'content-length',
    'content-encoding',
    'set-cookie',
    'openai-organization',
    'anthropic-organization-id',
    'x-ratelimit-remaining-requests',
    'anthropic-ratelimit-tokens-remaining',
    'retry-after',
    'alt-svc',
  ];
  for (const name of dropped) {
    it(`drops ${name}`, () => {
      assert.equal(headers[name], undefined);
    });
  }

  it('keeps end-to-end headers', () => {
    assert.equal(headers['content-type'], 'text/event-stream; charset=utf-8');
    assert.equal(headers['cache-control'], 'no-cache');
    assert.equal(headers['openai-processing-ms'], '120');
  });

  it('replaces request-id with own', () => {
    assert.equal(headers['request-id'], 'req_gateway_1');
    assert.equal(headers['x-request-id'], 'req_gateway_1');
  });

  it('keeps upstream request-id', () => {
    assert.equal(headers['upstream-request-id'], 'req_upstream_1');
  });

  it('keeps upstream x-request-id', () => {
    const fromOpenai = clientResponseHeaders({ 'x-request-id': 'req_openai_1' }, 'req_gateway_2');
    assert.equal(fromOpenai['upstream-request-id'], 'req_openai_1');
    assert.equal(fromOpenai['x-request-id'], 'req_gateway_2');
  });

  it('omits upstream-request-id when absent', () => {
    assert.equal(clientResponseHeaders({}, 'req_gateway_3')['upstream-request-id'], undefined);
  });
});
