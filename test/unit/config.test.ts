import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ConfigError, loadConfig, parseFeatureLimits } from '../../src/config/config.ts';

let dir: string;
let fileCounter = 0;

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'llm-proxy-config-'));
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Writes a YAML config file into the temp dir and returns its path. */
function writeConfig(yaml: string): string {
  fileCounter += 1;
  const path = join(dir, `config-${fileCounter}.yaml`);
  writeFileSync(path, yaml);
  return path;
}

/** Runs `load`, expects a ConfigError and returns its message. */
function configErrorMessage(load: () => unknown): string {
  let caught: unknown;
  try {
    load();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof ConfigError, `expected ConfigError, got ${String(caught)}`);
  return caught.message;
}

describe('loadConfig defaults', () => {
  const config = loadConfig({});

  it('listens on 127.0.0.1:9992', () => {
    assert.equal(config.port, 9992);
    assert.equal(config.host, '127.0.0.1');
  });

  it('stores data in ./data', () => {
    assert.equal(config.dataDir, './data');
  });

  it('disables both providers', () => {
    assert.equal(config.providers.anthropic.apiKey, null);
    assert.equal(config.providers.openai.apiKey, null);
  });

  it('uses official base URLs', () => {
    assert.equal(config.providers.anthropic.baseUrl, 'https://api.anthropic.com');
    assert.equal(config.providers.openai.baseUrl, 'https://api.openai.com/v1');
  });

  it('allows every model', () => {
    assert.deepEqual(config.providers.anthropic.allowedModels, ['*']);
    assert.deepEqual(config.providers.openai.allowedModels, ['*']);
  });

  it('has no admin token', () => {
    assert.equal(config.adminToken, null);
  });

  it('denies anonymous access', () => {
    assert.equal(config.allowAnonymous, false);
  });

  it('sets timeouts in milliseconds', () => {
    assert.equal(config.upstreamTimeoutMs, 60_000);
    assert.equal(config.streamIdleTimeoutMs, 60_000);
    assert.equal(config.shutdownGraceMs, 30_000);
  });

  it('sets default anonymous limits', () => {
    assert.deepEqual(config.anonymousLimits.chat_completions, { limit: 50, intervalSeconds: 86_400, allowedModels: ['*'] });
  });
});

describe('loadConfig environment', () => {
  const config = loadConfig({
    LLM_PROXY_HOST: '0.0.0.0',
    LLM_PROXY_PORT: '8080',
    LLM_PROXY_DATA_DIR: '/var/lib/llm-proxy',
    LLM_PROXY_LOG_LEVEL: 'DEBUG',
    LLM_PROXY_ADMIN_TOKEN: 'a'.repeat(32),
    LLM_PROXY_ALLOW_ANONYMOUS: 'yes',
    LLM_PROXY_UPSTREAM_TIMEOUT: '2m',
    LLM_PROXY_STREAM_IDLE_TIMEOUT: '90',
    LLM_PROXY_ANTHROPIC_API_KEY: 'sk-ant-api03-test',
    LLM_PROXY_OPENAI_BASE_URL: 'http://127.0.0.1:4000/v1/',
    LLM_PROXY_OPENAI_ALLOWED_MODELS: 'GPT-4o, gpt-4o-mini,',
    LLM_PROXY_OPENAI_RETRY_AFTER: '1m',
    LLM_PROXY_OPENAI_ORGANIZATION: 'org-test',
  });

  it('overrides host and port', () => {
    assert.equal(config.host, '0.0.0.0');
    assert.equal(config.port, 8080);
  });

  it('overrides data dir', () => {
    assert.equal(config.dataDir, '/var/lib/llm-proxy');
  });

  it('lower-cases log level', () => {
    assert.equal(config.logLevel, 'debug');
  });

  it('reads admin token and anonymous flag', () => {
    assert.equal(config.adminToken, 'a'.repeat(32));
    assert.equal(config.allowAnonymous, true);
  });

  it('parses durations', () => {
    assert.equal(config.upstreamTimeoutMs, 120_000);
    assert.equal(config.streamIdleTimeoutMs, 90_000);
    assert.equal(config.providers.openai.retryAfterSeconds, 60);
  });

  it('enables provider with key', () => {
    assert.equal(config.providers.anthropic.apiKey, 'sk-ant-api03-test');
    assert.equal(config.providers.openai.apiKey, null);
  });

  it('strips base URL trailing slash', () => {
    assert.equal(config.providers.openai.baseUrl, 'http://127.0.0.1:4000/v1');
  });

  it('splits and lower-cases model list', () => {
    assert.deepEqual(config.providers.openai.allowedModels, ['gpt-4o', 'gpt-4o-mini']);
  });

  it('reads OpenAI organization', () => {
    assert.equal(config.providers.openai.organization, 'org-test');
    assert.equal(config.providers.anthropic.organization, null);
  });

  it('treats empty variable as unset', () => {
    assert.equal(loadConfig({ LLM_PROXY_PORT: '' }).port, 9992);
  });

  it('parses anonymous limits JSON', () => {
    const limits = loadConfig({ LLM_PROXY_ANONYMOUS_LIMITS: '{"chat_completions":{"limit":5,"interval":"1h","allowedModels":["gpt-4o-mini"]}}' }).anonymousLimits;
    assert.deepEqual(limits, { chat_completions: { limit: 5, intervalSeconds: 3600, allowedModels: ['gpt-4o-mini'] } });
  });
});

describe('loadConfig file', () => {
  const yaml = [
    'port: 8000',
    'host: 0.0.0.0',
    'upstreamTimeout: 45s',
    'providers:',
    '  anthropic:',
    '    apiKey: sk-ant-from-file',
    '    allowedModels: [Claude-Sonnet-4-5, anthropic/claude-haiku-4-5]',
    '  openai:',
    '    baseUrl: http://127.0.0.1:5000/v1',
    '    allowedModels:',
    '      - gpt-4o-mini',
    'anonymousLimits:',
    '  embeddings:',
    '    limit: 1000',
    '    interval: 10m',
    '',
  ].join('\n');

  it('reads settings and allowed models', () => {
    const config = loadConfig({}, writeConfig(yaml));
    assert.equal(config.port, 8000);
    assert.equal(config.host, '0.0.0.0');
    assert.equal(config.upstreamTimeoutMs, 45_000);
    assert.equal(config.providers.anthropic.apiKey, 'sk-ant-from-file');
    assert.deepEqual(config.providers.anthropic.allowedModels, ['claude-sonnet-4-5', 'anthropic/claude-haiku-4-5']);
    assert.equal(config.providers.openai.baseUrl, 'http://127.0.0.1:5000/v1');
    assert.deepEqual(config.providers.openai.allowedModels, ['gpt-4o-mini']);
    assert.deepEqual(config.anonymousLimits, { embeddings: { limit: 1000, intervalSeconds: 600, allowedModels: ['*'] } });
  });

  it('keeps defaults for missing keys', () => {
    const config = loadConfig({}, writeConfig(yaml));
    assert.equal(config.dataDir, './data');
    assert.equal(config.providers.anthropic.baseUrl, 'https://api.anthropic.com');
  });

  it('is overridden by environment', () => {
    const config = loadConfig({ LLM_PROXY_PORT: '8001', LLM_PROXY_ANTHROPIC_ALLOWED_MODELS: 'claude-opus-4-1' }, writeConfig(yaml));
    assert.equal(config.port, 8001);
    assert.deepEqual(config.providers.anthropic.allowedModels, ['claude-opus-4-1']);
    assert.equal(config.host, '0.0.0.0');
  });

  it('is found through LLM_PROXY_CONFIG', () => {
    const config = loadConfig({ LLM_PROXY_CONFIG: writeConfig('port: 8123\n') });
    assert.equal(config.port, 8123);
  });

  it('accepts empty file', () => {
    assert.equal(loadConfig({}, writeConfig('')).port, 9992);
  });

  it('rejects unknown top-level key', () => {
    const path = writeConfig('prot: 8000\n');
    const message = configErrorMessage(() => loadConfig({}, path));
    assert.match(message, /\bprot\b/);
    assert.ok(message.includes(path), message);
    assert.ok(!message.includes('\n'), message);
  });

  it('rejects unknown nested key', () => {
    const path = writeConfig('providers:\n  anthropic:\n    apikey: sk-ant-x\n');
    const message = configErrorMessage(() => loadConfig({}, path));
    assert.ok(message.includes('providers.anthropic.apikey'), message);
    assert.ok(!message.includes('sk-ant-x'), message);
  });

  it('escapes line break in key', () => {
    const message = configErrorMessage(() => loadConfig({}, writeConfig('"bad\\nkey": 1\n')));
    assert.ok(!message.includes('\n'), message);
  });

  it('rejects invalid YAML on one line', () => {
    const path = writeConfig('port: [8000\nhost: x\n');
    const message = configErrorMessage(() => loadConfig({}, path));
    assert.ok(message.includes(path), message);
    assert.ok(!message.includes('\n'), message);
  });

  it('rejects non-mapping document', () => {
    const message = configErrorMessage(() => loadConfig({}, writeConfig('- port\n- host\n')));
    assert.match(message, /mapping/);
  });

  it('rejects missing file', () => {
    const path = join(dir, 'missing.yaml');
    const message = configErrorMessage(() => loadConfig({}, path));
    assert.ok(message.includes(path), message);
    assert.match(message, /ENOENT/);
  });

  const invalidFileValues: Array<[string, string]> = [
    ['port: abc\n', 'port'],
    ['upstreamTimeout: soon\n', 'upstreamTimeout'],
    ['providers:\n  openai:\n    baseUrl: ftp://x\n', 'providers.openai.baseUrl'],
    ['providers:\n  openai:\n    allowedModels: []\n', 'providers.openai.allowedModels'],
    ['allowAnonymous: maybe\n', 'allowAnonymous'],
    ['anonymousLimits:\n  chat_completions:\n    limit: -1\n    interval: 1h\n', 'anonymousLimits.chat_completions.limit'],
  ];
  for (const [content, key] of invalidFileValues) {
    it(`names file key ${key}`, () => {
      const path = writeConfig(content);
      const message = configErrorMessage(() => loadConfig({}, path));
      assert.ok(message.includes(`${key} in ${path}`), message);
      assert.ok(!message.includes('\n'), message);
    });
  }
});

describe('loadConfig invalid environment', () => {
  const cases: Array<[string, string]> = [
    ['LLM_PROXY_PORT', 'abc'],
    ['LLM_PROXY_PORT', '65536'],
    ['LLM_PROXY_PORT', '-1'],
    ['LLM_PROXY_PORT', '80\n80'],
    ['LLM_PROXY_LOG_LEVEL', 'verbose'],
    ['LLM_PROXY_UPSTREAM_TIMEOUT', 'soon'],
    ['LLM_PROXY_UPSTREAM_TIMEOUT', '50ms'],
    ['LLM_PROXY_STREAM_IDLE_TIMEOUT', '-1s'],
    ['LLM_PROXY_OPENAI_BASE_URL', 'ftp://x'],
    ['LLM_PROXY_OPENAI_BASE_URL', 'api.openai.com/v1'],
    ['LLM_PROXY_ANTHROPIC_BASE_URL', 'https://api.anthropic.com/?x=1'],
    ['LLM_PROXY_ADMIN_TOKEN', 'short'],
    ['LLM_PROXY_ALLOW_ANONYMOUS', 'maybe'],
    ['LLM_PROXY_TRUST_PROXY', '2'],
    ['LLM_PROXY_MAX_BODY_BYTES', '10'],
    ['LLM_PROXY_ANTHROPIC_ALLOWED_MODELS', ' , '],
    ['LLM_PROXY_ANONYMOUS_LIMITS', '{not json'],
    ['LLM_PROXY_ANONYMOUS_LIMITS', '[]'],
    ['LLM_PROXY_ANONYMOUS_LIMITS', '{"chat_completions":{"limit":-1,"interval":"1h"}}'],
    ['LLM_PROXY_ANONYMOUS_LIMITS', '{"images":{"limit":1,"interval":"1h"}}'],
  ];
  for (const [name, value] of cases) {
    it(`names ${name} for ${JSON.stringify(value)}`, () => {
      const message = configErrorMessage(() => loadConfig({ [name]: value }));
      assert.ok(message.includes(name), message);
      assert.ok(!message.includes('\n'), message);
    });
  }

  it('keeps admin token out of message', () => {
    const message = configErrorMessage(() => loadConfig({ LLM_PROXY_ADMIN_TOKEN: 'tok3n' }));
    assert.ok(!message.includes('tok3n'), message);
  });

  it('keeps API key out of message', () => {
    const message = configErrorMessage(() => loadConfig({ LLM_PROXY_OPENAI_API_KEY: 'sk-proj-abc def' }));
    assert.ok(message.includes('LLM_PROXY_OPENAI_API_KEY'), message);
    assert.ok(!message.includes('sk-proj-abc'), message);
  });

  it('wins over valid file value', () => {
    const path = writeConfig('port: 8000\n');
    const message = configErrorMessage(() => loadConfig({ LLM_PROXY_PORT: 'abc' }, path));
    assert.ok(message.includes('LLM_PROXY_PORT'), message);
  });
});

describe('parseFeatureLimits', () => {
  it('parses limit, interval and models', () => {
    const limits = parseFeatureLimits({ chat_completions: { limit: 10, interval: '1h30m', allowedModels: ['GPT-4o'] } }, 'limits');
    assert.deepEqual(limits, { chat_completions: { limit: 10, intervalSeconds: 5400, allowedModels: ['gpt-4o'] } });
  });

  it('accepts intervalSeconds', () => {
    const limits = parseFeatureLimits({ embeddings: { limit: 0, intervalSeconds: 60 } }, 'limits');
    assert.deepEqual(limits, { embeddings: { limit: 0, intervalSeconds: 60, allowedModels: ['*'] } });
  });

  it('parses optional limits', () => {
    const limits = parseFeatureLimits({ chat_completions: { limit: 10, interval: '1h', concurrency: 2, tokenLimit: 5000, inputTokenLimit: 4000, outputTokenLimit: 1000 } }, 'limits');
    assert.deepEqual(limits.chat_completions, {
      limit: 10,
      intervalSeconds: 3600,
      allowedModels: ['*'],
      concurrency: 2,
      tokenLimit: 5000,
      inputTokenLimit: 4000,
      outputTokenLimit: 1000,
    });
  });

  it('accepts embeddings concurrency', () => {
    const limits = parseFeatureLimits({ embeddings: { limit: 1000, interval: '1h', concurrency: 3 } }, 'limits');
    assert.equal(limits.embeddings?.concurrency, 3);
  });

  it('accepts empty object', () => {
    assert.deepEqual(parseFeatureLimits({}, 'limits'), {});
  });

  const invalid: Array<[string, unknown, string]> = [
    ['unknown feature', { images: { limit: 1, interval: '1h' } }, 'limits'],
    ['negative limit', { chat_completions: { limit: -1, interval: '1h' } }, 'limits.chat_completions.limit'],
    ['fractional limit', { chat_completions: { limit: 1.5, interval: '1h' } }, 'limits.chat_completions.limit'],
    ['missing limit', { chat_completions: { interval: '1h' } }, 'limits.chat_completions.limit'],
    ['bad interval', { chat_completions: { limit: 1, interval: 'daily' } }, 'limits.chat_completions.interval'],
    ['interval under 1s', { chat_completions: { limit: 1, interval: '500ms' } }, 'limits.chat_completions.interval'],
    ['missing interval', { chat_completions: { limit: 1 } }, 'limits.chat_completions.interval'],
    ['empty model list', { chat_completions: { limit: 1, interval: '1h', allowedModels: [] } }, 'limits.chat_completions.allowedModels'],
    ['entry not object', { chat_completions: 5 }, 'limits.chat_completions'],
    ['unknown field', { chat_completions: { limit: 1, interval: '1h', limt: 2 } }, 'limits.chat_completions.limt'],
    ['zero concurrency', { chat_completions: { limit: 1, interval: '1h', concurrency: 0 } }, 'limits.chat_completions.concurrency'],
    ['fractional token limit', { chat_completions: { limit: 1, interval: '1h', tokenLimit: 2.5 } }, 'limits.chat_completions.tokenLimit'],
    ['embeddings token limit', { embeddings: { limit: 1, interval: '1h', outputTokenLimit: 5 } }, 'limits.embeddings.outputTokenLimit'],
    ['array', [], 'limits'],
    ['null', null, 'limits'],
  ];
  for (const [name, raw, setting] of invalid) {
    it(`rejects ${name}`, () => {
      const message = configErrorMessage(() => parseFeatureLimits(raw, 'limits'));
      assert.ok(message.startsWith(`invalid setting ${setting}:`), message);
      assert.ok(!message.includes('\n'), message);
    });
  }

  it('names unknown feature', () => {
    const message = configErrorMessage(() => parseFeatureLimits({ images: { limit: 1, interval: '1h' } }, 'limits'));
    assert.ok(message.includes('"images"'), message);
  });
});
