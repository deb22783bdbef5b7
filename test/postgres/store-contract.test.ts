/**
 * One table of Store contract cases, run against SqliteStore and PostgresStore, so that both
 * implementations provably return the same shapes and follow the same rules.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { hashToken } from '../../src/actors/tokens.ts';
import { openPostgresStore } from '../../src/storage/postgres.ts';
import { openSqliteStore, SqliteStore } from '../../src/storage/sqlite.ts';
import type { Store } from '../../src/storage/store.ts';
import type { UsageEvent } from '../../src/usage/event.ts';
import { makeEvent } from '../helpers/events.ts';
import { dropSchema, SHARED_POSTGRES_URL, sharedPostgresSkipReason, uniqueSchemaName, withSharedClient } from './shared-postgres.ts';

interface Harness {
  store: Store;
  /** Opens a second store on the same database, closed by the harness. */
  openOther(): Promise<Store>;
}

interface ContractCase {
  name: string;
  run(harness: Harness): Promise<void>;
}


const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const ISO_TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

const CASES: ContractCase[] = [
  {
    name: 'actor created with defaults',
    async run({ store }) {
      const actor = await store.createActor({ name: 'bot' });
      assert.match(actor.id, /^act_[0-9a-f]{16}$/);
      assert.equal(actor.name, 'bot');
      assert.equal(actor.enabled, true);
      assert.deepEqual(actor.limits, {});
      assert.match(actor.createdAt, ISO_TIMESTAMP);
      assert.equal(actor.createdAt, actor.updatedAt);
      assert.deepEqual(await store.getActor(actor.id), actor);
    },
  },
  {
    name: 'actor limits and enabled flag stored',
    async run({ store }) {
      const limits = {
        chat_completions: { limit: 100, intervalSeconds: 3600, allowedModels: ['*'], concurrency: 4, tokenLimit: 100_000 },
        embeddings: { limit: 100000, intervalSeconds: 86400, allowedModels: ['openai/text-embedding-3-small'] },
      };
      const actor = await store.createActor({ name: 'limited', enabled: false, limits });
      const loaded = await store.getActor(actor.id);
      assert.equal(loaded?.enabled, false);
      assert.deepEqual(loaded?.limits, limits);
    },
  },
  {
    name: 'actors listed in creation order',
    async run({ store }) {
      const created = [];
      for (const name of ['first', 'second', 'third', 'fourth', 'fifth']) created.push(await store.createActor({ name }));
      const ids = (await store.listActors()).map((actor) => actor.id);
      assert.deepEqual(ids, created.map((actor) => actor.id));
    },
  },
  {
    name: 'actor update changes only patched fields',
    async run({ store }) {
      const actor = await store.createActor({ name: 'before', limits: { embeddings: { limit: 1, intervalSeconds: 60, allowedModels: ['*'] } } });
      await sleep(5);

      const renamed = await store.updateActor(actor.id, { name: ' after ' });
      assert.equal(renamed?.name, 'after');
      assert.equal(renamed?.enabled, true);
      assert.deepEqual(renamed?.limits, actor.limits);
      assert.equal(renamed?.createdAt, actor.createdAt);
      assert.notEqual(renamed?.updatedAt, actor.updatedAt);

      const disabled = await store.updateActor(actor.id, { enabled: false, limits: {} });
      assert.equal(disabled?.name, 'after');
      assert.equal(disabled?.enabled, false);
      assert.deepEqual(disabled?.limits, {});
      assert.deepEqual(await store.getActor(actor.id), disabled);
    },
  },
  {
    name: 'unknown actor ids return undefined',
    async run({ store }) {
      assert.equal(await store.getActor('act_missing'), undefined);
      assert.equal(await store.updateActor('act_missing', { enabled: false }), undefined);
      assert.equal(await store.deleteActor('act_missing'), false);
    },
  },
  {
    name: 'actor names validated',
    async run({ store }) {
      await assert.rejects(store.createActor({ name: '' }), RangeError);
      await assert.rejects(store.createActor({ name: '   ' }), /the name is empty/);
      await assert.rejects(store.createActor({ name: 'x'.repeat(201) }), /201 characters long; expected at most 200/);
      const longest = await store.createActor({ name: 'x'.repeat(200) });
      assert.equal(longest.name.length, 200);
      await assert.rejects(store.updateActor(longest.id, { name: '' }), RangeError);
      assert.equal((await store.getActor(longest.id))?.name, 'x'.repeat(200));
      assert.deepEqual((await store.listActors()).length, 1);
    },
  },
  {
    name: 'token found by hash',
    async run({ store }) {
      const actor = await store.createActor({ name: 'owner' });
      const hash = hashToken('llmp_secret');
      const record = await store.createToken(actor.id, hash, 'llmp_secret', '2031-01-01T00:00:00.000Z');
      assert.match(record.id, /^tok_[0-9a-f]{16}$/);
      assert.equal(record.actorId, actor.id);
      assert.match(record.createdAt, ISO_TIMESTAMP);
      assert.equal(record.expiresAt, '2031-01-01T00:00:00.000Z');
      assert.equal(record.revokedAt, null);

      assert.deepEqual(await store.findToken(hash), { token: record, actor });
      assert.equal(await store.findToken(hashToken('llmp_other')), undefined);
    },
  },
  {
    name: 'expired token still found',
    async run({ store }) {
      const actor = await store.createActor({ name: 'owner' });
      const hash = hashToken('llmp_expired');
      await store.createToken(actor.id, hash, 'llmp_expired', '2001-01-01T00:00:00.000Z');
      assert.equal((await store.findToken(hash))?.token.expiresAt, '2001-01-01T00:00:00.000Z');
    },
  },
  {
    name: 'token for unknown actor rejected',
    async run({ store }) {
      await assert.rejects(store.createToken('act_missing', hashToken('x'), 'x', null), /actor act_missing not found/);
    },
  },
  {
    name: 'duplicate token hash rejected',
    async run({ store }) {
      const actor = await store.createActor({ name: 'owner' });
      await store.createToken(actor.id, hashToken('same'), 'same', null);
      await assert.rejects(store.createToken(actor.id, hashToken('same'), 'same', null), /unique/i);
      assert.equal((await store.listTokens(actor.id)).length, 1);
    },
  },
  {
    name: 'token revoked once, first time kept',
    async run({ store }) {
      const actor = await store.createActor({ name: 'owner' });
      const hash = hashToken('llmp_revoked');
      const record = await store.createToken(actor.id, hash, 'llmp_revoked', null);

      const revoked = await store.revokeToken(record.id);
      assert.match(revoked?.revokedAt ?? '', ISO_TIMESTAMP);
      assert.equal(revoked?.id, record.id);
      await sleep(5);
      const again = await store.revokeToken(record.id);
      assert.equal(again?.revokedAt, revoked?.revokedAt);

      const lookup = await store.findToken(hash);
      assert.equal(lookup?.token.revokedAt, revoked?.revokedAt);
      assert.equal(lookup?.actor.id, actor.id);
      assert.equal(await store.revokeToken('tok_missing'), undefined);
    },
  },
  {
    name: 'tokens listed per actor',
    async run({ store }) {
      const owner = await store.createActor({ name: 'owner' });
      const other = await store.createActor({ name: 'other' });
      const first = await store.createToken(owner.id, hashToken('a'), 'a', null);
      const second = await store.createToken(owner.id, hashToken('b'), 'b', null);
      const third = await store.createToken(owner.id, hashToken('d'), 'd', null);
      await store.createToken(other.id, hashToken('c'), 'c', null);
      await store.revokeToken(first.id);

      const tokens = await store.listTokens(owner.id);
      assert.deepEqual(tokens.map((token) => token.id), [first.id, second.id, third.id]);
      assert.ok(tokens[0].revokedAt);
      assert.deepEqual(tokens[1], second);
      assert.deepEqual(await store.listTokens('act_missing'), []);
    },
  },
  {
    name: 'actor deletion removes tokens, keeps events',
    async run({ store }) {
      const actor = await store.createActor({ name: 'doomed' });
      const hash = hashToken('llmp_doomed');
      await store.createToken(actor.id, hash, 'llmp_doomed', null);
      await store.insertEvents([makeEvent({ actorId: actor.id })]);

      assert.equal(await store.deleteActor(actor.id), true);
      assert.equal(await store.getActor(actor.id), undefined);
      assert.equal(await store.findToken(hash), undefined);
      assert.deepEqual(await store.listTokens(actor.id), []);
      assert.equal((await store.queryEvents({ actorId: actor.id, limit: 10 })).length, 1);
    },
  },
  {
    name: 'event fields round-trip',
    async run({ store }) {
      const events = [
        makeEvent(),
        makeEvent({
          feature: null,
          provider: null,
          requestedModel: null,
          upstreamModel: null,
          stream: false,
          upstreamStatus: null,
          status: 401,
          outcome: 'rejected',
          errorCode: 'invalid_token',
          inputTokens: null,
          outputTokens: null,
          cacheReadInputTokens: null,
          tokensEstimated: true,
          durationMs: 3,
          upstreamTtfbMs: null,
          upstreamDurationMs: null,
          overheadMs: null,
          promptChars: null,
          completionChars: null,
          clientIp: null,
          userAgent: null,
          sgActorUid: 'uid-1',
          sgActorAnonymousUid: null,
          timestamp: '2030-01-01T00:00:01.000Z',
        }),
        makeEvent({
          timestamp: '2030-01-01T00:00:02.123Z',
          inputTokens: 3_000_000_000,
          cacheCreationInputTokens: 7,
          reasoningTokens: 11,
          durationMs: 0.125,
          userAgent: 'agent with "quotes", commas and ünïcode',
        }),
      ];
      await store.insertEvents(events);
      const stored = await store.queryEvents({ limit: 10 });
      assert.deepEqual(stored, [events[2], events[1], events[0]]);
    },
  },
  {
    name: 'events newest first, then by insertion',
    async run({ store }) {
      const early = makeEvent({ timestamp: '2030-01-01T00:00:00.000Z' });
      const tiedFirst = makeEvent({ timestamp: '2030-01-02T00:00:00.000Z' });
      const tiedSecond = makeEvent({ timestamp: '2030-01-02T00:00:00.000Z' });
      const late = makeEvent({ timestamp: '2030-01-03T00:00:00.000Z' });
      await store.insertEvents([tiedFirst, late]);
      await store.insertEvents([early, tiedSecond]);

      const ids = (await store.queryEvents({ limit: 10 })).map((event) => event.id);
      assert.deepEqual(ids, [late.id, tiedSecond.id, tiedFirst.id, early.id]);
    },
  },
  {
    name: 'events filtered by actor, since and limit',
    async run({ store }) {
      const events = [
        makeEvent({ actorId: 'act_a', timestamp: '2030-01-01T00:00:00.000Z' }),
        makeEvent({ actorId: 'act_b', timestamp: '2030-01-02T00:00:00.000Z' }),
        makeEvent({ actorId: 'act_a', timestamp: '2030-01-03T00:00:00.000Z' }),
        makeEvent({ actorId: 'act_a', timestamp: '2030-01-04T00:00:00.000Z' }),
      ];
      await store.insertEvents(events);

      const ofA = await store.queryEvents({ actorId: 'act_a', limit: 10 });
      assert.deepEqual(ofA.map((event) => event.id), [events[3].id, events[2].id, events[0].id]);

      const sinceSecond = await store.queryEvents({ since: '2030-01-02T00:00:00.000Z', limit: 10 });
      assert.deepEqual(sinceSecond.map((event) => event.id), [events[3].id, events[2].id, events[1].id]);

      const both = await store.queryEvents({ actorId: 'act_a', since: '2030-01-02T00:00:00.000Z', limit: 10 });
      assert.deepEqual(both.map((event) => event.id), [events[3].id, events[2].id]);

      const limited = await store.queryEvents({ limit: 2 });
      assert.deepEqual(limited.map((event) => event.id), [events[3].id, events[2].id]);

      assert.deepEqual(await store.queryEvents({ actorId: 'act_missing', limit: 10 }), []);
    },
  },
  {
    name: 'stored event ids skipped',
    async run({ store }) {
      const event = makeEvent();
      await store.insertEvents([event]);
      await store.insertEvents([event, makeEvent()]);
      assert.equal((await store.queryEvents({ limit: 10 })).length, 2);
    },
  },
  {
    name: 'duplicate ids in one batch skipped',
    async run({ store }) {
      const event = makeEvent();
      await store.insertEvents([event, { ...event, status: 500 }, makeEvent()]);
      const stored = await store.queryEvents({ limit: 10 });
      assert.equal(stored.length, 2);
      assert.equal(stored.find((candidate) => candidate.id === event.id)?.status, 200);
    },
  },
  {
    name: 'batch larger than one insert stored',
    async run({ store }) {
      const start = Date.parse('2030-01-01T00:00:00.000Z');
      const events = Array.from({ length: 2500 }, (_, index) => makeEvent({ timestamp: new Date(start + index * 1000).toISOString() }));
      await store.insertEvents(events);
      const stored = await store.queryEvents({ limit: 5000 });
      assert.equal(stored.length, 2500);
      assert.equal(stored[0].id, events[2499].id);
      assert.equal(stored[2499].id, events[0].id);
    },
  },
  {
    name: 'failing batch rolled back',
    async run({ store }) {
      const invalid = { ...makeEvent(), route: null } as unknown as UsageEvent;
      await assert.rejects(store.insertEvents([makeEvent(), invalid]), /not.null/i);
      assert.deepEqual(await store.queryEvents({ limit: 10 }), []);
    },
  },
  {
    name: 'failing large batch rolled back',
    async run({ store }) {
      const events = Array.from({ length: 1500 }, () => makeEvent());
      events[1400] = { ...events[1400], route: null } as unknown as UsageEvent;
      await assert.rejects(store.insertEvents(events), /not.null/i);
      assert.deepEqual(await store.queryEvents({ limit: 10 }), []);
    },
  },
  {
    name: 'empty batch accepted',
    async run({ store }) {
      await store.insertEvents([]);
      assert.deepEqual(await store.queryEvents({ limit: 10 }), []);
    },
  },
  {
    name: 'query limit below 1 rejected',
    async run({ store }) {
      await assert.rejects(store.queryEvents({ limit: 0 }), RangeError);
      await assert.rejects(store.queryEvents({ limit: 1.5 }), RangeError);
    },
  },
  {
    name: 'change version follows other instance',
    async run({ store, openOther }) {
      const other = await openOther();
      const initial = await store.changeVersion();
      assert.equal(await store.changeVersion(), initial);

      const actor = await other.createActor({ name: 'from elsewhere' });
      const afterCreate = await store.changeVersion();
      assert.notEqual(afterCreate, initial);
      assert.equal(await store.changeVersion(), afterCreate);

      const token = await other.createToken(actor.id, hashToken('t'), 't', null);
      const afterToken = await store.changeVersion();
      assert.notEqual(afterToken, afterCreate);

      // The patch must change the row. When an UPDATE rewrites identical bytes, as a no-op patch
      // within the creation's millisecond does, SQLite leaves the file and data_version unchanged.
      await other.updateActor(actor.id, { enabled: false });
      const afterUpdate = await store.changeVersion();
      assert.notEqual(afterUpdate, afterToken);

      await other.revokeToken(token.id);
      const afterRevoke = await store.changeVersion();
      assert.notEqual(afterRevoke, afterUpdate);

      await other.deleteActor(actor.id);
      assert.notEqual(await store.changeVersion(), afterRevoke);
    },
  },
  {
    name: 'change version follows own writes',
    async run({ store }) {
      const initial = await store.changeVersion();
      const actor = await store.createActor({ name: 'local' });
      const afterCreate = await store.changeVersion();
      assert.notEqual(afterCreate, initial);

      await store.updateActor(actor.id, { enabled: false });
      const afterUpdate = await store.changeVersion();
      assert.notEqual(afterUpdate, afterCreate);

      const token = await store.createToken(actor.id, hashToken('own'), 'own', null);
      const afterToken = await store.changeVersion();
      assert.notEqual(afterToken, afterUpdate);

      await store.revokeToken(token.id);
      const afterRevoke = await store.changeVersion();
      assert.notEqual(afterRevoke, afterToken);

      await store.deleteActor(actor.id);
      assert.notEqual(await store.changeVersion(), afterRevoke);
    },
  },
  {
    name: 'change version ignores usage and no-ops',
    async run({ store }) {
      const initial = await store.changeVersion();
      await store.insertEvents([makeEvent()]);
      await store.updateActor('act_missing', { enabled: false });
      await store.revokeToken('tok_missing');
      await store.deleteActor('act_missing');
      assert.equal(await store.changeVersion(), initial);
    },
  },
  {
    name: 'ping works until closed',
    async run({ store }) {
      await store.ping();
      await store.close();
      await assert.rejects(store.ping());
      await store.close();
    },
  },
];

interface Backend {
  name: string;
  skip: string | undefined;
  /** Runs once before the cases. */
  setUp(): Promise<void>;
  /** Returns a store on an empty database, and the cleanup that closes it. */
  open(): Promise<{ harness: Harness; cleanUp(): Promise<void> }>;
  tearDown(): Promise<void>;
}

function sqliteBackend(): Backend {
  return {
    name: 'SqliteStore',
    skip: undefined,
    async setUp() {},
    async open() {
      const dataDir = mkdtempSync(join(tmpdir(), 'llm-proxy-contract-'));
      const store = openSqliteStore(dataDir);
      const others: Store[] = [];
      return {
        harness: {
          store,
          async openOther() {
            const other = new SqliteStore(store.path);
            others.push(other);
            return other;
          },
        },
        async cleanUp() {
          for (const other of others) await other.close();
          await store.close();
          rmSync(dataDir, { recursive: true, force: true });
        },
      };
    },
    async tearDown() {},
  };
}

function postgresBackend(skip: string | undefined): Backend {
  const schema = uniqueSchemaName('contract');
  return {
    name: 'PostgresStore',
    skip,
    async setUp() {
      await (await openPostgresStore(SHARED_POSTGRES_URL, { schema })).close();
    },
    async open() {
      // TRUNCATE fires no row triggers, so the change version keeps counting across cases.
      await withSharedClient(schema, (client) => client.query('TRUNCATE actors, tokens, usage_events'));
      const store = await openPostgresStore(SHARED_POSTGRES_URL, { schema });
      const others: Store[] = [];
      return {
        harness: {
          store,
          async openOther() {
            const other = await openPostgresStore(SHARED_POSTGRES_URL, { schema });
            others.push(other);
            return other;
          },
        },
        async cleanUp() {
          for (const other of others) await other.close();
          await store.close();
        },
      };
    },
    async tearDown() {
      await dropSchema(schema);
    },
  };
}

const postgresSkip = await sharedPostgresSkipReason();

for (const backend of [sqliteBackend(), postgresBackend(postgresSkip)]) {
  describe(`${backend.name} contract`, { skip: backend.skip }, () => {
    let opened: Awaited<ReturnType<Backend['open']>>;

    before(() => backend.setUp());
    after(() => backend.tearDown());
    beforeEach(async () => {
      opened = await backend.open();
    });
    afterEach(() => opened.cleanUp());

    for (const contractCase of CASES) {
      it(contractCase.name, () => contractCase.run(opened.harness));
    }
  });
}
