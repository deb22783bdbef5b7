import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hashToken } from '../../src/actors/tokens.ts';
import { runCli } from '../../src/cli/main.ts';
import { openPostgresStore } from '../../src/storage/postgres.ts';
import { openSqliteStore } from '../../src/storage/sqlite.ts';
import type { UsageEvent } from '../../src/usage/event.ts';
import { dropSchema, SHARED_POSTGRES_URL, sharedPostgresSkipReason, uniqueSchemaName } from './shared-postgres.ts';

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

async function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const code = await runCli(args, {
    stdout: { write: (text: string) => stdout.push(text) },
    stderr: { write: (text: string) => stderr.push(text) },
    env,
  });
  return { code, stdout: stdout.join(''), stderr: stderr.join('') };
}

function makeEvent(index: number, actorId: string): UsageEvent {
  return {
    id: `evt_migrate_${index}`,
    // Every tenth event shares a timestamp with the one before, so the copy must keep insertion order.
    timestamp: new Date(Date.UTC(2030, 5, 1) + (index - (index % 10 === 1 ? 1 : 0)) * 1000).toISOString(),
    requestId: `req_migrate_${index}`,
    actorId,
    actorName: actorId,
    feature: index % 3 === 0 ? null : 'embeddings',
    provider: 'openai',
    route: '/v1/embeddings',
    requestedModel: 'text-embedding-3-small',
    upstreamModel: index % 2 === 0 ? null : 'text-embedding-3-small',
    stream: index % 2 === 0,
    upstreamStatus: index % 5 === 0 ? null : 200,
    status: index % 5 === 0 ? 429 : 200,
    outcome: index % 5 === 0 ? 'rejected' : 'completed',
    errorCode: index % 5 === 0 ? 'rate_limited' : null,
    inputTokens: index,
    outputTokens: null,
    cacheCreationInputTokens: null,
    cacheReadInputTokens: null,
    reasoningTokens: null,
    tokensEstimated: index % 4 === 0,
    durationMs: index + 0.25,
    upstreamTtfbMs: null,
    upstreamDurationMs: null,
    overheadMs: 1.5,
    promptChars: 20,
    completionChars: null,
    clientIp: '10.0.0.1',
    userAgent: 'migrate-test/1.0',
    sgActorUid: null,
    sgActorAnonymousUid: null,
  };
}

const skip = await sharedPostgresSkipReason();

describe('migrate-sqlite', { skip }, () => {
  const schema = uniqueSchemaName('migrate_cli');
  let dataDir: string;
  const tokenHashes: string[] = [];

  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'llm-proxy-migrate-'));
    const sqlite = openSqliteStore(dataDir);
    try {
      const limits = { chat_completions: { limit: 10, intervalSeconds: 60, allowedModels: ['anthropic/claude-sonnet-4-5'], concurrency: 2 } };
      const first = await sqlite.createActor({ name: 'first', limits });
      const second = await sqlite.createActor({ name: 'second', enabled: false });
      await sqlite.createActor({ name: 'third' });
      for (const [index, actor] of [first, first, second].entries()) {
        const hash = hashToken(`llmp_migrate_${index}`);
        tokenHashes.push(hash);
        const token = await sqlite.createToken(actor.id, hash, `llmp_migr${index}`, index === 1 ? '2031-01-01T00:00:00.000Z' : null);
        if (index === 2) await sqlite.revokeToken(token.id);
      }
      const events = Array.from({ length: 2500 }, (_, index) => makeEvent(index, index % 2 === 0 ? first.id : second.id));
      await sqlite.insertEvents(events);
    } finally {
      await sqlite.close();
    }
  });

  after(async () => {
    await dropSchema(schema);
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('copies everything, then nothing twice', async () => {
    const first = await cli(['migrate-sqlite', '--to', SHARED_POSTGRES_URL, '--schema', schema, '--data-dir', dataDir]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /to 127\.0\.0\.1:5432\/test \(schema llmp_test_migrate_cli_/);
    assert.match(first.stdout, /actors\s+3 copied, 0 already present/);
    assert.match(first.stdout, /tokens\s+3 copied, 0 already present/);
    assert.match(first.stdout, /usage events\s+2500 copied, 0 already present/);

    const sqlite = openSqliteStore(dataDir);
    const postgres = await openPostgresStore(SHARED_POSTGRES_URL, { schema });
    try {
      const actors = await sqlite.listActors();
      assert.deepEqual(await postgres.listActors(), actors);
      for (const actor of actors) assert.deepEqual(await postgres.listTokens(actor.id), await sqlite.listTokens(actor.id));
      for (const hash of tokenHashes) assert.deepEqual(await postgres.findToken(hash), await sqlite.findToken(hash));
      assert.deepEqual(await postgres.queryEvents({ limit: 5000 }), await sqlite.queryEvents({ limit: 5000 }));

      const second = await cli(['migrate-sqlite', '--to', SHARED_POSTGRES_URL, '--schema', schema, '--data-dir', dataDir]);
      assert.equal(second.code, 0, second.stderr);
      assert.match(second.stdout, /actors\s+0 copied, 3 already present/);
      assert.match(second.stdout, /tokens\s+0 copied, 3 already present/);
      assert.match(second.stdout, /usage events\s+0 copied, 2500 already present/);
      assert.equal((await postgres.queryEvents({ limit: 5000 })).length, 2500);

      const added = await sqlite.createActor({ name: 'late' });
      await sqlite.insertEvents([makeEvent(9999, added.id)]);
      const third = await cli(['migrate-sqlite', '--to', SHARED_POSTGRES_URL, '--schema', schema, '--data-dir', dataDir]);
      assert.equal(third.code, 0, third.stderr);
      assert.match(third.stdout, /actors\s+1 copied, 3 already present/);
      assert.match(third.stdout, /usage events\s+1 copied, 2500 already present/);
      assert.deepEqual(await postgres.getActor(added.id), added);
    } finally {
      await sqlite.close();
      await postgres.close();
    }
  });

  it('prints help', async () => {
    const result = await cli(['migrate-sqlite', '--help']);
    assert.equal(result.code, 0);
    assert.match(result.stdout, /^Usage: llm-proxy migrate-sqlite --to URL/);
    assert.match(result.stdout, /--schema NAME/);
  });

  it('is listed in the top-level help', async () => {
    const result = await cli(['--help']);
    assert.match(result.stdout, /migrate-sqlite\s+Copy actors, tokens and usage events from SQLite into Postgres/);
  });

  it('rejects a missing target', async () => {
    const result = await cli(['migrate-sqlite', '--data-dir', dataDir]);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /missing --to/);
  });

  it('takes the target from the environment', async () => {
    const result = await cli(['migrate-sqlite', '--schema', schema, '--data-dir', dataDir], { LLM_PROXY_DATABASE_URL: SHARED_POSTGRES_URL });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /actors\s+0 copied, 4 already present/);
  });

  it('rejects a target that is not a Postgres URL', async () => {
    const result = await cli(['migrate-sqlite', '--to', 'mysql://user:hunter2@127.0.0.1/db', '--data-dir', dataDir]);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /invalid --to/);
    assert.doesNotMatch(result.stderr, /hunter2/);
  });

  it('rejects an invalid schema name', async () => {
    const result = await cli(['migrate-sqlite', '--to', SHARED_POSTGRES_URL, '--schema', 'Mixed-Case', '--data-dir', dataDir]);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /invalid Postgres schema name "Mixed-Case"/);
  });

  it('reports a missing SQLite database', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'llm-proxy-migrate-empty-'));
    try {
      const result = await cli(['migrate-sqlite', '--to', SHARED_POSTGRES_URL, '--schema', schema, '--data-dir', empty]);
      assert.equal(result.code, 1);
      assert.match(result.stderr, /no database at .*llm-proxy\.db/);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});
