import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { hashToken } from '../../src/actors/tokens.ts';
import { databasePath, openSqliteStore, SqliteStore, validateActorName } from '../../src/storage/sqlite.ts';
import type { UsageEvent } from '../../src/usage/event.ts';
import { makeEvent } from '../helpers/events.ts';

let dataDir: string;
let store: SqliteStore;

beforeEach(() => {
  dataDir = mkdtempSync(join(tmpdir(), 'llm-proxy-sqlite-'));
  store = openSqliteStore(dataDir);
});

afterEach(async () => {
  await store.close();
  rmSync(dataDir, { recursive: true, force: true });
});


describe('openSqliteStore', () => {
  it('creates nested data directories', async () => {
    const nested = join(dataDir, 'a', 'b');
    const other = openSqliteStore(nested);
    try {
      assert.equal(other.path, databasePath(nested));
      assert.ok(existsSync(join(nested, 'llm-proxy.db')));
    } finally {
      await other.close();
    }
  });

  it('uses WAL journal mode', () => {
    const raw = new Database(store.path, { readonly: true });
    try {
      assert.equal(raw.pragma('journal_mode', { simple: true }), 'wal');
    } finally {
      raw.close();
    }
  });

  it('applies migrations once across reopens', async () => {
    const actor = await store.createActor({ name: 'kept' });
    assert.deepEqual(store.appliedMigrations(), [1, 2]);
    await store.close();

    store = openSqliteStore(dataDir);
    assert.deepEqual(store.appliedMigrations(), [1, 2]);
    assert.deepEqual(await store.getActor(actor.id), actor);

    const second = new SqliteStore(store.path);
    try {
      assert.deepEqual(second.appliedMigrations(), [1, 2]);
    } finally {
      await second.close();
    }
  });

  it('rejects a newer schema version', async () => {
    await store.close();
    const raw = new Database(databasePath(dataDir));
    raw.prepare("INSERT INTO schema_migrations (version, description, applied_at) VALUES (99, 'future', '')").run();
    raw.close();

    assert.throws(() => openSqliteStore(dataDir), /schema version 99, newer than/);
    store = openSqliteStore(join(dataDir, 'fresh'));
  });
});

describe('actors', () => {
  it('creates with defaults', async () => {
    const actor = await store.createActor({ name: 'bot' });
    assert.match(actor.id, /^act_[0-9a-f]{16}$/);
    assert.equal(actor.name, 'bot');
    assert.equal(actor.enabled, true);
    assert.deepEqual(actor.limits, {});
    assert.equal(actor.createdAt, actor.updatedAt);
    assert.deepEqual(await store.getActor(actor.id), actor);
  });

  it('stores limits and enabled flag', async () => {
    const limits = {
      chat_completions: { limit: 100, intervalSeconds: 3600, allowedModels: ['*'] },
      embeddings: { limit: 100000, intervalSeconds: 86400, allowedModels: ['openai/text-embedding-3-small'] },
    };
    const actor = await store.createActor({ name: 'limited', enabled: false, limits });
    const loaded = await store.getActor(actor.id);
    assert.equal(loaded?.enabled, false);
    assert.deepEqual(loaded?.limits, limits);
  });

  it('lists in creation order', async () => {
    const first = await store.createActor({ name: 'first' });
    const second = await store.createActor({ name: 'second' });
    const third = await store.createActor({ name: 'third' });
    const ids = (await store.listActors()).map((actor) => actor.id);
    assert.deepEqual(ids, [first.id, second.id, third.id]);
  });

  it('updates only the patched fields', async () => {
    const actor = await store.createActor({ name: 'before', limits: { embeddings: { limit: 1, intervalSeconds: 60, allowedModels: ['*'] } } });
    await new Promise((resolve) => setTimeout(resolve, 5));

    const renamed = await store.updateActor(actor.id, { name: 'after' });
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
  });

  it('returns undefined for unknown ids', async () => {
    assert.equal(await store.getActor('act_missing'), undefined);
    assert.equal(await store.updateActor('act_missing', { enabled: false }), undefined);
    assert.equal(await store.deleteActor('act_missing'), false);
  });

  it('validates names', async () => {
    await assert.rejects(store.createActor({ name: '' }), RangeError);
    await assert.rejects(store.createActor({ name: '   ' }), /the name is empty/);
    await assert.rejects(store.createActor({ name: 'x'.repeat(201) }), /201 characters long; expected at most 200/);
    const longest = await store.createActor({ name: 'x'.repeat(200) });
    assert.equal(longest.name.length, 200);
    await assert.rejects(store.updateActor(longest.id, { name: '' }), RangeError);
    assert.equal(validateActorName('  padded  '), 'padded');
  });
});

describe('tokens', () => {
  it('finds a token by hash', async () => {
    const actor = await store.createActor({ name: 'owner' });
    const hash = hashToken('llmp_secret');
    const record = await store.createToken(actor.id, hash, 'llmp_secret', '2031-01-01T00:00:00.000Z');
    assert.match(record.id, /^tok_[0-9a-f]{16}$/);
    assert.equal(record.actorId, actor.id);
    assert.equal(record.expiresAt, '2031-01-01T00:00:00.000Z');
    assert.equal(record.revokedAt, null);

    const lookup = await store.findToken(hash);
    assert.deepEqual(lookup, { token: record, actor });
    assert.equal(await store.findToken(hashToken('llmp_other')), undefined);
  });

  it('rejects an unknown actor', async () => {
    await assert.rejects(store.createToken('act_missing', hashToken('x'), 'x', null), /actor act_missing not found/);
  });

  it('rejects a duplicate hash', async () => {
    const actor = await store.createActor({ name: 'owner' });
    await store.createToken(actor.id, hashToken('same'), 'same', null);
    await assert.rejects(store.createToken(actor.id, hashToken('same'), 'same', null), /UNIQUE/);
  });

  it('revokes once and keeps the first time', async () => {
    const actor = await store.createActor({ name: 'owner' });
    const hash = hashToken('llmp_revoked');
    const record = await store.createToken(actor.id, hash, 'llmp_revoked', null);

    const revoked = await store.revokeToken(record.id);
    assert.ok(revoked?.revokedAt);
    assert.equal(revoked?.id, record.id);
    await new Promise((resolve) => setTimeout(resolve, 5));
    const again = await store.revokeToken(record.id);
    assert.equal(again?.revokedAt, revoked?.revokedAt);

    const lookup = await store.findToken(hash);
    assert.equal(lookup?.token.revokedAt, revoked?.revokedAt);
    assert.equal(lookup?.actor.id, actor.id);
    assert.equal(await store.revokeToken('tok_missing'), undefined);
  });

  it('lists tokens of one actor', async () => {
    const owner = await store.createActor({ name: 'owner' });
    const other = await store.createActor({ name: 'other' });
    const first = await store.createToken(owner.id, hashToken('a'), 'a', null);
    const second = await store.createToken(owner.id, hashToken('b'), 'b', null);
    await store.createToken(other.id, hashToken('c'), 'c', null);
    await store.revokeToken(first.id);

    const tokens = await store.listTokens(owner.id);
    assert.deepEqual(tokens.map((token) => token.id), [first.id, second.id]);
    assert.ok(tokens[0].revokedAt);
    assert.deepEqual(await store.listTokens('act_missing'), []);
  });

  it('deletes tokens with their actor', async () => {
    const actor = await store.createActor({ name: 'doomed' });
    const hash = hashToken('llmp_doomed');
    await store.createToken(actor.id, hash, 'llmp_doomed', null);
    await store.insertEvents([makeEvent({ actorId: actor.id })]);

    assert.equal(await store.deleteActor(actor.id), true);
    assert.equal(await store.getActor(actor.id), undefined);
    assert.equal(await store.findToken(hash), undefined);
    assert.deepEqual(await store.listTokens(actor.id), []);
    assert.equal((await store.queryEvents({ actorId: actor.id, limit: 10 })).length, 1);
  });
});

describe('usage events', () => {
  it('round-trips every field', async () => {
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
    ];
    await store.insertEvents(events);
    const stored = await store.queryEvents({ limit: 10 });
    assert.deepEqual(stored, [events[1], events[0]]);
  });

  it('orders newest first, then by insertion', async () => {
    const early = makeEvent({ timestamp: '2030-01-01T00:00:00.000Z' });
    const tiedFirst = makeEvent({ timestamp: '2030-01-02T00:00:00.000Z' });
    const tiedSecond = makeEvent({ timestamp: '2030-01-02T00:00:00.000Z' });
    const late = makeEvent({ timestamp: '2030-01-03T00:00:00.000Z' });
    await store.insertEvents([tiedFirst, late]);
    await store.insertEvents([early, tiedSecond]);

    const ids = (await store.queryEvents({ limit: 10 })).map((event) => event.id);
    assert.deepEqual(ids, [late.id, tiedSecond.id, tiedFirst.id, early.id]);
  });

  it('filters by actor, since and limit', async () => {
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
  });

  it('skips events already stored', async () => {
    const event = makeEvent();
    await store.insertEvents([event]);
    await store.insertEvents([event, makeEvent()]);
    assert.equal((await store.queryEvents({ limit: 10 })).length, 2);
  });

  it('rolls back a failing batch', async () => {
    const invalid = { ...makeEvent(), route: null } as unknown as UsageEvent;
    await assert.rejects(store.insertEvents([makeEvent(), invalid]), /NOT NULL/);
    assert.deepEqual(await store.queryEvents({ limit: 10 }), []);
  });

  it('accepts an empty batch', async () => {
    await store.insertEvents([]);
    assert.deepEqual(await store.queryEvents({ limit: 10 }), []);
  });

  it('rejects a limit below 1', async () => {
    await assert.rejects(store.queryEvents({ limit: 0 }), RangeError);
    await assert.rejects(store.queryEvents({ limit: 1.5 }), RangeError);
  });
});

describe('changeVersion', () => {
  it('changes when another connection writes', async () => {
    const other = new SqliteStore(store.path);
    try {
      const initial = await store.changeVersion();
      assert.equal(await store.changeVersion(), initial);

      const actor = await other.createActor({ name: 'from elsewhere' });
      const afterActor = await store.changeVersion();
      assert.notEqual(afterActor, initial);
      assert.equal(await store.changeVersion(), afterActor);

      await other.createToken(actor.id, hashToken('t'), 't', null);
      const afterToken = await store.changeVersion();
      assert.notEqual(afterToken, afterActor);

      // Usage writes leave the counter alone, so caches keyed on it survive them.
      await other.insertEvents([makeEvent()]);
      assert.equal(await store.changeVersion(), afterToken);
    } finally {
      await other.close();
    }
  });

  it('changes on own actor and token writes', async () => {
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
  });

  it('ignores own usage writes and no-op changes', async () => {
    const initial = await store.changeVersion();
    await store.insertEvents([makeEvent()]);
    await store.updateActor('act_missing', { enabled: false });
    await store.revokeToken('tok_missing');
    assert.equal(await store.changeVersion(), initial);
  });
});

describe('ping and close', () => {
  it('pings until closed', async () => {
    await store.ping();
    await store.close();
    await assert.rejects(store.ping());
    await store.close();
  });
});

describe('background writer', () => {
  it('writes events on a worker thread', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'llm-proxy-writer-'));
    const writerStore = openSqliteStore(dir, { backgroundWriter: true });
    try {
      const before = await writerStore.changeVersion();
      const events = [makeEvent(), makeEvent(), makeEvent()];
      await writerStore.insertEvents(events);
      await writerStore.insertEvents(events);
      const stored = await writerStore.queryEvents({ limit: 10 });
      assert.equal(stored.length, 3);
      assert.equal(await writerStore.changeVersion(), before);
    } finally {
      await writerStore.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
