import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import type { UsageStore } from '../../src/storage/store.ts';
import type { UsageEvent, UsageQuery } from '../../src/usage/event.ts';
import { isInvalidDataError, openSpoolingUsageStore, SpoolingUsageStore, usageSpoolDir, type UsageSpoolOptions } from '../../src/usage/spool.ts';
import { capturingLogger } from './shared-postgres.ts';

/** An in-memory UsageStore that fails on demand, like a database that is down. */
class FakeUsageStore implements UsageStore {
  readonly stored = new Map<string, UsageEvent>();
  /** Event ids in the order they were first stored. */
  readonly order: string[] = [];
  /** Thrown by every insertEvents call while set. */
  failure: Error | undefined;
  /** Batches containing one of these ids fail with a not-null violation, as invalid data does. */
  readonly invalidIds = new Set<string>();
  insertCalls = 0;

  async insertEvents(events: UsageEvent[]): Promise<void> {
    this.insertCalls += 1;
    if (this.failure !== undefined) throw this.failure;
    if (events.some((event) => this.invalidIds.has(event.id))) {
      throw Object.assign(new Error('null value in column "route" violates not-null constraint'), { code: '23502' });
    }
    for (const event of events) {
      if (this.stored.has(event.id)) continue;
      this.stored.set(event.id, event);
      this.order.push(event.id);
    }
  }

  async queryEvents(query: UsageQuery): Promise<UsageEvent[]> {
    return [...this.stored.values()].reverse().slice(0, query.limit);
  }
}

const connectionRefused = () => Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });

let eventCounter = 0;

function makeEvents(count: number): UsageEvent[] {
  return Array.from({ length: count }, () => {
    eventCounter += 1;
    return {
      id: `evt_spool_${eventCounter}`,
      timestamp: new Date(Date.UTC(2030, 0, 1) + eventCounter).toISOString(),
      requestId: `req_${eventCounter}`,
      actorId: 'act_0000000000000001',
      actorName: 'first',
      feature: 'chat_completions',
      provider: 'anthropic',
      route: '/v1/messages',
      requestedModel: 'claude-sonnet-4-5',
      upstreamModel: 'claude-sonnet-4-5-20250929',
      stream: false,
      upstreamStatus: 200,
      status: 200,
      outcome: 'completed',
      errorCode: null,
      inputTokens: 10,
      outputTokens: 20,
      cacheCreationInputTokens: null,
      cacheReadInputTokens: null,
      reasoningTokens: null,
      tokensEstimated: false,
      durationMs: 100.5,
      upstreamTtfbMs: 50,
      upstreamDurationMs: 90,
      overheadMs: 10.5,
      promptChars: 40,
      completionChars: 80,
      clientIp: '127.0.0.1',
      userAgent: 'spool-test/1.0',
      sgActorUid: null,
      sgActorAnonymousUid: null,
    };
  });
}

const SPOOL_FILE = /^\d{13}-\d{9}-\d+-\d+\.jsonl$/;

async function waitFor(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

let root: string;
let dir: string;
let inner: FakeUsageStore;
let log: ReturnType<typeof capturingLogger>;
const opened: SpoolingUsageStore[] = [];

async function openSpool(overrides: Partial<UsageSpoolOptions> = {}, store: UsageStore = inner): Promise<SpoolingUsageStore> {
  // A long interval keeps the timer out of tests that call drain() themselves.
  const spool = await openSpoolingUsageStore(store, { dir, maxBytes: 1024 * 1024, logger: log.logger, drainIntervalMs: 60_000, ...overrides });
  opened.push(spool);
  return spool;
}

function spoolFiles(): string[] {
  return readdirSync(dir).filter((name) => SPOOL_FILE.test(name));
}

function messages(level: string): string[] {
  return log.lines.filter((line) => line.level === level).map((line) => String(line.msg));
}

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'llm-proxy-spool-'));
  dir = usageSpoolDir(root);
  inner = new FakeUsageStore();
  log = capturingLogger('debug');
});

afterEach(async () => {
  for (const spool of opened.splice(0)) await spool.close();
  rmSync(root, { recursive: true, force: true });
});

describe('SpoolingUsageStore', () => {
  it('writes through while the store works', async () => {
    const spool = await openSpool();
    const events = makeEvents(3);
    await spool.insertEvents(events);
    assert.deepEqual(inner.order, events.map((event) => event.id));
    assert.deepEqual(spoolFiles(), []);
    assert.equal(spool.spooledCount(), 0);
    assert.deepEqual(await spool.queryEvents({ limit: 1 }), [events[2]]);
  });

  it('spools a batch when the store fails', async () => {
    const spool = await openSpool();
    inner.failure = connectionRefused();
    const events = makeEvents(4);
    await spool.insertEvents(events);

    const files = spoolFiles();
    assert.equal(files.length, 1);
    assert.match(files[0], /-4\.jsonl$/);
    const lines = readFileSync(join(dir, files[0]), 'utf8').trimEnd().split('\n');
    assert.deepEqual(lines.map((line) => JSON.parse(line)), events);
    assert.equal(spool.spooledCount(), 4);
    assert.ok(spool.spooledBytes() > 0);
    assert.deepEqual(messages('warn'), ['failed to write usage events to the store, spooling them to disk until it recovers']);
  });

  it('spools new batches while files exist', async () => {
    const spool = await openSpool();
    inner.failure = connectionRefused();
    const first = makeEvents(2);
    await spool.insertEvents(first);
    inner.failure = undefined;
    const callsBefore = inner.insertCalls;

    const second = makeEvents(2);
    await spool.insertEvents(second);
    assert.equal(inner.insertCalls, callsBefore);
    assert.equal(spoolFiles().length, 2);
    assert.equal(spool.spooledCount(), 4);

    await spool.drain();
    assert.deepEqual(inner.order, [...first, ...second].map((event) => event.id));
    assert.deepEqual(spoolFiles(), []);
    assert.equal(spool.spooledCount(), 0);
    assert.equal(spool.spooledBytes(), 0);
    assert.ok(messages('info').includes('moved spooled usage events into the store'));

    const third = makeEvents(1);
    await spool.insertEvents(third);
    assert.equal(inner.stored.has(third[0].id), true);
    assert.deepEqual(spoolFiles(), []);
  });

  it('keeps files while the drain fails', async () => {
    const spool = await openSpool();
    inner.failure = connectionRefused();
    await spool.insertEvents(makeEvents(2));
    await spool.drain();
    await spool.drain();
    assert.equal(spoolFiles().length, 1);
    assert.equal(spool.spooledCount(), 2);
    const drainWarnings = messages('warn').filter((message) => message.startsWith('failed to move spooled'));
    assert.equal(drainWarnings.length, 1);
  });

  it('drains on the interval', async () => {
    const spool = await openSpool({ drainIntervalMs: 50 });
    inner.failure = connectionRefused();
    const events = makeEvents(3);
    await spool.insertEvents(events);
    inner.failure = undefined;
    await waitFor(() => spool.spooledCount() === 0, 2000);
    assert.deepEqual(inner.order, events.map((event) => event.id));
    assert.deepEqual(spoolFiles(), []);
  });

  it('drops the newest batch beyond maxBytes', async () => {
    const eventBytes = Buffer.byteLength(JSON.stringify(makeEvents(1)[0])) + 1;
    const spool = await openSpool({ maxBytes: eventBytes * 5 });
    inner.failure = connectionRefused();
    const kept = makeEvents(3);
    await spool.insertEvents(kept);
    await spool.insertEvents(makeEvents(3));
    await spool.insertEvents(makeEvents(2));

    assert.equal(spool.spooledCount(), 5);
    assert.equal(spool.droppedCount(), 3);
    assert.ok(spool.spooledBytes() <= eventBytes * 5);
    const drops = log.lines.filter((line) => line.level === 'error');
    assert.equal(drops.length, 1);
    assert.equal(drops[0].dropped, 3);
    assert.match(String(drops[0].msg), /usage spool is full, dropping the newest usage events/);

    inner.failure = undefined;
    await spool.drain();
    assert.equal(inner.stored.size, 5);
    assert.deepEqual(inner.order.slice(0, 3), kept.map((event) => event.id));
  });

  it('drains files left by an earlier run', async () => {
    const first = await openSpool();
    inner.failure = connectionRefused();
    const events = makeEvents(5);
    await first.insertEvents(events.slice(0, 2));
    await first.insertEvents(events.slice(2));
    await first.close();
    assert.equal(spoolFiles().length, 2);
    assert.ok(messages('warn').includes('usage events remain in the spool and will be written after the next start'));

    writeFileSync(join(dir, '0000000000001-000000001-1-1.jsonl.tmp'), '{"id":"half written');
    writeFileSync(join(dir, 'notes.txt'), 'not a spool file');
    const restarted = new FakeUsageStore();
    const second = await openSpool({}, restarted);
    assert.equal(second.spooledCount(), 5);
    await second.drain();

    assert.deepEqual(restarted.order, events.map((event) => event.id));
    assert.deepEqual(spoolFiles(), []);
    assert.equal(existsSync(join(dir, '0000000000001-000000001-1-1.jsonl.tmp')), false);
    assert.equal(existsSync(join(dir, 'notes.txt')), true);
  });

  it('inserts a spooled file again after a lost delete', async () => {
    const spool = await openSpool();
    inner.failure = connectionRefused();
    const events = makeEvents(2);
    await spool.insertEvents(events);
    inner.failure = undefined;
    // The store already has the events, as after a crash between insert and delete.
    await inner.insertEvents(events);
    await spool.drain();
    assert.equal(inner.stored.size, 2);
    assert.deepEqual(spoolFiles(), []);
  });

  it('sets invalid events aside', async () => {
    const spool = await openSpool();
    const [valid, invalid, alsoValid] = makeEvents(3);
    inner.invalidIds.add(invalid.id);
    await spool.insertEvents([valid, invalid, alsoValid]);

    assert.deepEqual(inner.order, [valid.id, alsoValid.id]);
    assert.deepEqual(spoolFiles(), []);
    const rejectedDir = join(dir, 'rejected');
    const rejectedFiles = readdirSync(rejectedDir);
    assert.equal(rejectedFiles.length, 1);
    assert.deepEqual(JSON.parse(readFileSync(join(rejectedDir, rejectedFiles[0]), 'utf8')), invalid);
    const errors = log.lines.filter((line) => line.level === 'error');
    assert.equal(errors.length, 1);
    assert.equal(errors[0].rejected, 1);
    assert.equal(errors[0].inserted, 2);
  });

  it('sets invalid spooled events aside', async () => {
    const spool = await openSpool();
    inner.failure = connectionRefused();
    const [valid, invalid] = makeEvents(2);
    await spool.insertEvents([valid, invalid]);
    inner.failure = undefined;
    inner.invalidIds.add(invalid.id);
    await spool.drain();

    assert.deepEqual(inner.order, [valid.id]);
    assert.deepEqual(spoolFiles(), []);
    assert.equal(readdirSync(join(dir, 'rejected')).length, 1);
  });

  it('moves an unparsable file aside', async () => {
    mkdirSync(dir, { recursive: true });
    const name = '0000000000001-000000001-1-2.jsonl';
    writeFileSync(join(dir, name), '{"id":"evt_ok"}\nnot json\n');
    const spool = await openSpool();
    await spool.drain();

    assert.deepEqual(spoolFiles(), []);
    assert.deepEqual(readdirSync(join(dir, 'rejected')), [`${name}.unparsable`]);
    assert.equal(inner.insertCalls, 0);
    assert.ok(messages('error').includes('a usage spool file is not valid JSON lines, moved it to the rejected folder'));
  });

  it('rejects when the spool cannot be written', async () => {
    const spool = await openSpool();
    rmSync(dir, { recursive: true });
    writeFileSync(dir, 'a file where the spool directory was');
    inner.failure = connectionRefused();
    await assert.rejects(spool.insertEvents(makeEvents(1)), { code: 'ENOTDIR' });
    assert.equal(spool.spooledCount(), 0);
    assert.equal(spool.spooledBytes(), 0);
    assert.ok(messages('error').includes('failed to write the usage spool file, the events stay in memory'));
  });

  it('rejects inserts after close', async () => {
    const spool = await openSpool();
    await spool.close();
    await assert.rejects(spool.insertEvents(makeEvents(1)), /the usage spool is closed/);
    await spool.close();
  });
});

describe('isInvalidDataError', () => {
  const cases: [string, unknown, boolean][] = [
    ['not-null violation', { code: '23502' }, true],
    ['unique violation', { code: '23505' }, true],
    ['invalid text representation', { code: '22P02' }, true],
    ['numeric out of range', { code: '22003' }, true],
    ['SQLite constraint', { code: 'SQLITE_CONSTRAINT_NOTNULL' }, true],
    ['admin shutdown', { code: '57P01' }, false],
    ['connection refused', { code: 'ECONNREFUSED' }, false],
    ['undefined table', { code: '42P01' }, false],
    ['no code', new Error('Query read timeout'), false],
    ['null', null, false],
  ];
  for (const [name, error, expected] of cases) {
    it(`classifies ${name}`, () => {
      assert.equal(isInvalidDataError(error), expected);
    });
  }
});
