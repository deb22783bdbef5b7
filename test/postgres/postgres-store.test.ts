/** PostgresStore behaviour beyond the shared Store contract: migrations, triggers, indexes, pool errors. */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { hashToken } from '../../src/actors/tokens.ts';
import { openPostgresStore, type PostgresStore } from '../../src/storage/postgres.ts';
import { LATEST_SCHEMA_VERSION } from '../../src/storage/postgres-schema.ts';
import type { UsageEvent } from '../../src/usage/event.ts';
import { capturingLogger, dropSchema, SHARED_POSTGRES_URL, sharedPostgresSkipReason, uniqueSchemaName, withSharedClient } from './shared-postgres.ts';

const skip = await sharedPostgresSkipReason();

function makeEvent(index: number, actorId: string, timestamp: string): UsageEvent {
  return {
    id: `evt_bulk_${index}`,
    timestamp,
    requestId: `req_bulk_${index}`,
    actorId,
    actorName: actorId,
    feature: 'code_completions',
    provider: 'openai',
    route: '/v1/completions',
    requestedModel: 'gpt-4o-mini',
    upstreamModel: 'gpt-4o-mini',
    stream: false,
    upstreamStatus: 200,
    status: 200,
    outcome: 'completed',
    errorCode: null,
    inputTokens: index,
    outputTokens: 1,
    cacheCreationInputTokens: null,
    cacheReadInputTokens: null,
    reasoningTokens: null,
    tokensEstimated: false,
    durationMs: 12.5,
    upstreamTtfbMs: 5,
    upstreamDurationMs: 10,
    overheadMs: 2.5,
    promptChars: 10,
    completionChars: 2,
    clientIp: null,
    userAgent: null,
    sgActorUid: null,
    sgActorAnonymousUid: null,
  };
}

/** Returns a loopback port with nothing listening on it. */
async function closedLoopbackPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  assert.ok(address !== null && typeof address === 'object');
  return address.port;
}

describe('PostgresStore', { skip }, () => {
  const schemas: string[] = [];

  function freshSchema(label: string): string {
    const schema = uniqueSchemaName(label);
    schemas.push(schema);
    return schema;
  }

  after(async () => {
    for (const schema of schemas) await dropSchema(schema);
  });

  describe('migrations', () => {
    it('apply once under concurrent opens', async () => {
      const schema = freshSchema('migrate');
      const stores = await Promise.all(Array.from({ length: 4 }, () => openPostgresStore(SHARED_POSTGRES_URL, { schema })));
      try {
        const rows = await withSharedClient(schema, async (client) => {
          const result = await client.query<{ version: number; count: string }>(
            'SELECT version, count(*) AS count FROM llm_proxy_schema_migrations GROUP BY version ORDER BY version',
          );
          return result.rows;
        });
        assert.equal(rows.length, LATEST_SCHEMA_VERSION);
        for (const row of rows) assert.equal(Number(row.count), 1, `migration ${row.version} recorded ${row.count} times`);
        for (const store of stores) assert.deepEqual(await store.appliedMigrations(), [1]);

        const actor = await stores[0].createActor({ name: 'shared' });
        assert.deepEqual(await stores[3].getActor(actor.id), actor);
      } finally {
        for (const store of stores) await store.close();
      }

      const reopened = await openPostgresStore(SHARED_POSTGRES_URL, { schema });
      try {
        assert.deepEqual(await reopened.appliedMigrations(), [1]);
        assert.equal((await reopened.listActors()).length, 1);
      } finally {
        await reopened.close();
      }
    });

    it('reject a newer schema version', async () => {
      const schema = freshSchema('newer');
      await (await openPostgresStore(SHARED_POSTGRES_URL, { schema })).close();
      await withSharedClient(schema, (client) =>
        client.query("INSERT INTO llm_proxy_schema_migrations (version, description) VALUES (99, 'future')"),
      );
      await assert.rejects(openPostgresStore(SHARED_POSTGRES_URL, { schema }), /schema has version 99, newer than the 1/);
    });

    it('reject an invalid schema name', async () => {
      await assert.rejects(openPostgresStore(SHARED_POSTGRES_URL, { schema: 'Bad-Name; DROP' }), /invalid Postgres schema name/);
    });
  });

  it('open fails with the address when unreachable', async () => {
    const port = await closedLoopbackPort();
    const url = `postgres://postgres:secret-password@127.0.0.1:${port}/test`;
    await assert.rejects(openPostgresStore(url), (error: Error) => {
      assert.match(error.message, new RegExp(`failed to open the Postgres store at 127\\.0\\.0\\.1:${port}/test`));
      assert.doesNotMatch(error.message, /secret-password/);
      return true;
    });
  });

  describe('with one schema', () => {
    const schema = uniqueSchemaName('store');
    const log = capturingLogger('debug');
    const applicationName = `llm-proxy-test-${process.pid}`;
    let store: PostgresStore;

    before(async () => {
      schemas.push(schema);
      store = await openPostgresStore(SHARED_POSTGRES_URL, { schema, logger: log.logger, applicationName });
    });
    after(() => store.close());

    it('change version follows raw SQL writes', async () => {
      const actor = await store.createActor({ name: 'raw' });
      const token = await store.createToken(actor.id, hashToken('raw'), 'raw', null);
      const initial = await store.changeVersion();

      await withSharedClient(schema, (client) => client.query("UPDATE actors SET name = 'renamed' WHERE id = $1", [actor.id]));
      const afterActor = await store.changeVersion();
      assert.notEqual(afterActor, initial);

      await withSharedClient(schema, (client) => client.query('UPDATE tokens SET revoked_at = now() WHERE id = $1', [token.id]));
      const afterToken = await store.changeVersion();
      assert.notEqual(afterToken, afterActor);

      await store.revokeToken(token.id);
      assert.equal(await store.changeVersion(), afterToken);
    });

    it('change version ignores uncommitted writes', async () => {
      const actor = await store.createActor({ name: 'pending' });
      const initial = await store.changeVersion();
      await withSharedClient(schema, async (client) => {
        await client.query('BEGIN');
        await client.query('UPDATE actors SET enabled = false WHERE id = $1', [actor.id]);
        assert.equal(await store.changeVersion(), initial);
        await client.query('COMMIT');
      });
      assert.notEqual(await store.changeVersion(), initial);
    });

    it('stores 10k events newest first, using the index', async () => {
      const actors = Array.from({ length: 20 }, (_, index) => `act_bulk_${index}`);
      const start = Date.parse('2031-01-01T00:00:00.000Z');
      const events = Array.from({ length: 10_000 }, (_, index) =>
        // Timestamps repeat every 5000 events, so ties are ordered by insertion.
        makeEvent(index, actors[index % actors.length], new Date(start + (index % 5000) * 1000).toISOString()),
      );
      for (let offset = 0; offset < events.length; offset += 500) await store.insertEvents(events.slice(offset, offset + 500));

      const all = await store.queryEvents({ limit: 20_000 });
      assert.equal(all.length, 10_000);
      for (let index = 1; index < all.length; index++) {
        assert.ok(all[index - 1].timestamp >= all[index].timestamp, `event ${index} is newer than the one before it`);
      }
      assert.equal(all[0].id, 'evt_bulk_9999');
      assert.equal(all[1].id, 'evt_bulk_4999');

      const ofOne = await store.queryEvents({ actorId: actors[7], since: '2031-01-01T00:30:00.000Z', limit: 50 });
      assert.equal(ofOne.length, 50);
      assert.ok(ofOne.every((event) => event.actorId === actors[7] && event.timestamp >= '2031-01-01T00:30:00.000Z'));
      assert.equal(ofOne[0].id, 'evt_bulk_9987');

      const plan = await withSharedClient(schema, async (client) => {
        await client.query('ANALYZE usage_events');
        const result = await client.query<{ 'QUERY PLAN': string }>(
          `EXPLAIN SELECT * FROM usage_events WHERE actor_id = $1 AND timestamp >= $2 ORDER BY timestamp DESC, seq DESC LIMIT 50`,
          [actors[7], '2031-01-01T00:30:00.000Z'],
        );
        return result.rows.map((row) => row['QUERY PLAN']).join('\n');
      });
      assert.match(plan, /Index (Only )?Scan .*usage_events_actor_timestamp/);
      assert.doesNotMatch(plan, /Seq Scan/);
    });

    it('survives an idle connection failing', async () => {
      await store.ping();
      await store.ping();
      const terminated = await withSharedClient(undefined, async (client) => {
        const result = await client.query(
          'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()',
          [applicationName],
        );
        return result.rowCount ?? 0;
      });
      assert.ok(terminated >= 1);

      const deadline = Date.now() + 5000;
      while (!log.lines.some((line) => line.msg === 'idle Postgres connection failed, the pool will open a new one') && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      assert.ok(log.lines.some((line) => line.msg === 'idle Postgres connection failed, the pool will open a new one'));
      await store.ping();
      assert.equal((await store.queryEvents({ limit: 1 })).length, 1);
    });
  });
});
