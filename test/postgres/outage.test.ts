/**
 * Usage recording while the database goes away: UsageRecorder, SpoolingUsageStore and
 * PostgresStore against a private Postgres that the test stops and starts.
 *
 * Production outages of 30 to 60 seconds are the case this protects. The test stops Postgres
 * for about 5 seconds of an 8-second recording run to keep CI quick. Nothing in the spool
 * depends on the outage length except the spool size, which maxBytes bounds.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openPostgresStore } from '../../src/storage/postgres.ts';
import type { UsageEvent } from '../../src/usage/event.ts';
import { UsageRecorder } from '../../src/usage/recorder.ts';
import { openSpoolingUsageStore, usageSpoolDir } from '../../src/usage/spool.ts';
import { findPostgresBinDir, startPrivatePostgres, type PrivatePostgres } from '../helpers/private-postgres.ts';
import { capturingLogger } from './shared-postgres.ts';

const RECORD_FOR_MS = 8000;
const STOP_AFTER_MS = 1500;
const DOWN_FOR_MS = 5000;
const EVENTS_PER_TICK = 5;
const TICK_MS = 10;
const RECOVERY_TIMEOUT_MS = 20_000;

function skipReason(): string | undefined {
  if (findPostgresBinDir() !== undefined) return undefined;
  const reason = 'no Postgres server binaries under /usr/lib/postgresql to start a private instance';
  if (process.env.CI) throw new Error(`${reason}. CI requires them`);
  console.log(`# skipping the outage test: ${reason}`);
  return reason;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function makeEvent(index: number): UsageEvent {
  return {
    id: `evt_outage_${index}`,
    timestamp: new Date().toISOString(),
    requestId: `req_outage_${index}`,
    actorId: 'act_outage',
    actorName: 'outage',
    feature: 'chat_completions',
    provider: 'anthropic',
    route: '/v1/messages',
    requestedModel: 'claude-sonnet-4-5',
    upstreamModel: 'claude-sonnet-4-5-20250929',
    stream: true,
    upstreamStatus: 200,
    status: 200,
    outcome: 'completed',
    errorCode: null,
    inputTokens: 100,
    outputTokens: 200,
    cacheCreationInputTokens: null,
    cacheReadInputTokens: null,
    reasoningTokens: null,
    tokensEstimated: false,
    durationMs: 900,
    upstreamTtfbMs: 300,
    upstreamDurationMs: 880,
    overheadMs: 20,
    promptChars: 400,
    completionChars: 800,
    clientIp: '127.0.0.1',
    userAgent: 'outage-test/1.0',
    sgActorUid: null,
    sgActorAnonymousUid: null,
  };
}

describe('usage recording through a Postgres outage', { skip: skipReason() }, () => {
  let server: PrivatePostgres;
  let dataDir: string;

  before(async () => {
    server = await startPrivatePostgres();
    dataDir = mkdtempSync(join(tmpdir(), 'llm-proxy-outage-'));
  });

  after(async () => {
    await server?.destroy();
    if (dataDir !== undefined) rmSync(dataDir, { recursive: true, force: true });
  });

  it('keeps every event across a restart', async () => {
    const log = capturingLogger('info');
    const store = await openPostgresStore(server.url, { logger: log.logger });
    const spool = await openSpoolingUsageStore(store, { dir: usageSpoolDir(dataDir), maxBytes: 64 * 1024 * 1024, logger: log.logger });
    const recorder = new UsageRecorder(spool, log.logger, 200);

    try {
      let recorded = 0;
      let maxSpooled = 0;
      const started = Date.now();
      const recording = (async () => {
        // Bounded by RECORD_FOR_MS.
        while (Date.now() - started < RECORD_FOR_MS) {
          for (let i = 0; i < EVENTS_PER_TICK; i++) recorder.record(makeEvent(recorded++));
          maxSpooled = Math.max(maxSpooled, spool.spooledCount());
          await sleep(TICK_MS);
        }
      })();

      await sleep(STOP_AFTER_MS);
      await server.stop();
      await sleep(DOWN_FOR_MS);
      await server.start();
      await recording;

      await recorder.flush();
      const deadline = Date.now() + RECOVERY_TIMEOUT_MS;
      while ((spool.spooledCount() > 0 || recorder.pendingCount() > 0) && Date.now() < deadline) {
        await recorder.flush();
        await sleep(100);
      }

      assert.ok(maxSpooled > 0, 'no event went through the spool, so the outage was not exercised');
      assert.equal(recorder.pendingCount(), 0);
      assert.equal(spool.spooledCount(), 0);
      assert.equal(spool.droppedCount(), 0);
      assert.deepEqual(readdirSync(usageSpoolDir(dataDir)).filter((name) => name.endsWith('.jsonl')), []);

      const stored = await store.queryEvents({ actorId: 'act_outage', limit: recorded + 1000 });
      assert.equal(stored.length, recorded);
      const storedIds = new Set(stored.map((event) => event.id));
      const missing = Array.from({ length: recorded }, (_, index) => `evt_outage_${index}`).filter((id) => !storedIds.has(id));
      assert.deepEqual(missing, []);

      const messages = log.lines.map((line) => line.msg);
      assert.ok(messages.includes('failed to write usage events to the store, spooling them to disk until it recovers'));
      assert.ok(messages.includes('moved spooled usage events into the store'));
    } finally {
      await recorder.close();
      await spool.close();
      await store.close();
    }
  });
});
