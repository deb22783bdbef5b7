/**
 * The resolver cache under a flood of unknown tokens, driven on the resolver itself because the
 * flood needs more requests than a gateway test can send quickly. The remote source is a stub
 * that stores one token and can be switched to fail.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { RemoteActorSource } from '../../src/actors/remote-source.ts';
import { ActorResolver } from '../../src/actors/resolver.ts';
import { generateToken, hashToken } from '../../src/actors/tokens.ts';
import { createLogger } from '../../src/logging/logger.ts';
import { openSqliteStore } from '../../src/storage/sqlite.ts';
import type { TokenLookup } from '../../src/storage/store.ts';

/** More unknown tokens than the resolver caches (50,000 entries when this test was written). */
const GUESSES = 60_000;

test('keeps valid token under guess flood', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'llm-proxy-pressure-'));
  const store = openSqliteStore(dataDir);
  t.after(() => {
    store.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  const valid = generateToken();
  const now = new Date().toISOString();
  const stored: TokenLookup = {
    token: { id: 'remote_tok_pressure', actorId: 'remote_act_pressure', hint: '', createdAt: now, expiresAt: null, revokedAt: null },
    actor: { id: 'remote_act_pressure', name: 'pressure', enabled: true, limits: {}, createdAt: now, updatedAt: now },
  };
  let failing = false;
  let lookups = 0;
  const stub = {
    async lookup(hash: string): Promise<TokenLookup | undefined> {
      lookups++;
      if (failing) throw new Error('the stub actor source is failing');
      return hash === hashToken(valid) ? stored : undefined;
    },
  };
  const resolver = new ActorResolver(store, createLogger('silent'), {
    allowAnonymous: false,
    anonymousLimits: {},
    remote: stub as unknown as RemoteActorSource,
    remoteTtlMs: 60_000,
    remoteNegativeTtlMs: 60_000,
  });
  t.after(() => resolver.close());
  await resolver.start();
  const headers = (token: string) => ({ authorization: `Bearer ${token}` });

  assert.equal((await resolver.resolve(headers(valid))).actor.id, 'remote_act_pressure');
  let rejected = 0;
  for (let i = 0; i < GUESSES; i++) {
    await resolver.resolve(headers(generateToken())).catch(() => rejected++);
  }
  assert.equal(rejected, GUESSES);
  assert.equal(lookups, GUESSES + 1);

  // The valid token is still within its 60 s TTL, so an outage must not reject it.
  failing = true;
  const resolved = await resolver.resolve(headers(valid)).catch((error: unknown) => error);
  assert.ok(!(resolved instanceof Error), `the cached valid token was rejected during an outage: ${String(resolved)}`);
});
