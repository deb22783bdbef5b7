/**
 * Regression tests for the command-line fixes of a new-user review: the usage table and its
 * JSON form, and the exit status of `serve` when it cannot listen or open its data folder.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { openSqliteStore } from '../../src/storage/sqlite.ts';
import type { UsageEvent } from '../../src/usage/event.ts';
import { makeEvent as baseEvent, SPARSE_EVENT } from '../helpers/events.ts';
import { cli, type CliResult } from '../helpers/cli.ts';

/** Upper bound for one `serve` run that is expected to fail at startup. */
const SERVE_TIMEOUT_MS = 15_000;

let dataDir: string;

beforeEach(() => {
  dataDir = mkdtempSync(join(tmpdir(), 'llm-proxy-cli-review-'));
});

afterEach(() => {
  rmSync(dataDir, { recursive: true, force: true });
});

/**
 * Runs `serve` and fails when it has not returned within SERVE_TIMEOUT_MS, which means it
 * started listening.
 */
async function serve(env: NodeJS.ProcessEnv): Promise<CliResult> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`serve still running after ${SERVE_TIMEOUT_MS} ms`)), SERVE_TIMEOUT_MS);
  });
  try {
    return await Promise.race([cli(['serve'], { LLM_PROXY_PORT: '0', LLM_PROXY_LOG_LEVEL: 'silent', ...env }), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function insert(events: UsageEvent[]): Promise<void> {
  const store = openSqliteStore(dataDir);
  try {
    await store.insertEvents(events);
  } finally {
    await store.close();
  }
}

test('usage table escapes control characters', async () => {
  await insert([
    makeEvent({ requestedModel: 'gpt-\u001b[2Jtest', userAgent: 'agent\u001b]0;title\u0007', actorName: 'bad\u001b[31mactor' }),
  ]);

  const result = await cli(['usage', '--data-dir', dataDir]);

  assert.equal(result.code, 0, result.stderr);
  assert.ok(!result.stdout.includes('\u001b'), `ESC in ${JSON.stringify(result.stdout)}`);
  assert.ok(result.stdout.includes('gpt-?[2Jtest'), result.stdout);
});

test('usage table cuts long model', async () => {
  const model = 'q'.repeat(100);
  await insert([makeEvent({ requestedModel: model })]);

  const result = await cli(['usage', '--data-dir', dataDir]);
  const cell = /q+…?/.exec(result.stdout)?.[0] ?? '';

  assert.equal(result.code, 0, result.stderr);
  assert.ok(cell.length > 0, `no model cell in ${result.stdout}`);
  assert.ok(cell.length <= 60, `model cell of ${cell.length} characters`);
  assert.ok(!result.stdout.includes(model), 'the whole model is shown');
});

test('usage JSON uses snake_case', async () => {
  const event = makeEvent();
  await insert([event]);

  const result = await cli(['usage', '--json', '--data-dir', dataDir]);
  const [shown] = JSON.parse(result.stdout) as Record<string, unknown>[];

  assert.equal(result.code, 0, result.stderr);
  assert.equal(shown.request_id, event.requestId);
  assert.equal(shown.actor_id, event.actorId);
  assert.equal(shown.requestId, undefined);
  assert.deepEqual(Object.keys(shown).filter((key) => !/^[a-z0-9_]+$/.test(key)), []);
});

test('serve listen failure exits 2', async () => {
  // 192.0.2.1 is reserved for documentation (RFC 5737), so no local interface has it and bind
  // fails with EADDRNOTAVAIL. Node passes a non-IP host such as 256.1.1.1 to getaddrinfo, which
  // may query a DNS server.
  const result = await serve({ LLM_PROXY_HOST: '192.0.2.1', LLM_PROXY_DATA_DIR: dataDir });

  assert.equal(result.code, 2, `stderr: ${result.stderr}`);
  assert.match(result.stderr, /^llm-proxy: [^\n]+\n$/);
  assert.match(result.stderr, /LLM_PROXY_HOST/);
});

test('serve unusable data folder exits 2', async () => {
  const file = join(dataDir, 'not-a-folder');
  writeFileSync(file, 'a file where the data folder should be\n');

  const result = await serve({ LLM_PROXY_DATA_DIR: file });

  assert.equal(result.code, 2, `stderr: ${result.stderr}`);
  assert.match(result.stderr, /^llm-proxy: [^\n]+\n$/);
  assert.match(result.stderr, /LLM_PROXY_DATA_DIR/);
});

function makeEvent(overrides: Partial<UsageEvent> = {}): UsageEvent {
  return baseEvent({ ...SPARSE_EVENT, actorId: 'act_aaaaaaaaaaaaaaaa', actorName: 'alice', requestedModel: 'gpt-test', inputTokens: 10, outputTokens: 5, durationMs: 12, ...overrides });
}
