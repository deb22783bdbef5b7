import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { hashToken, looksLikeToken, tokenHint } from '../../src/actors/tokens.ts';
import { databasePath, openSqliteStore } from '../../src/storage/sqlite.ts';
import type { UsageEvent } from '../../src/usage/event.ts';
import { makeEvent as baseEvent, SPARSE_EVENT } from '../helpers/events.ts';
import { cli, type CliResult } from '../helpers/cli.ts';

const BIN = fileURLToPath(new URL('../../bin/llm-proxy.js', import.meta.url));

let dataDir: string;

beforeEach(() => {
  dataDir = mkdtempSync(join(tmpdir(), 'llm-proxy-cli-'));
});

afterEach(() => {
  rmSync(dataDir, { recursive: true, force: true });
});

/** Runs a command against the test data directory. */
async function cliIn(...args: string[]): Promise<CliResult> {
  return cli([...args, '--data-dir', dataDir]);
}

function assertOneLineError(result: CliResult, code: number, pattern: RegExp): void {
  assert.equal(result.code, code, `exit code, stderr: ${result.stderr}`);
  assert.equal(result.stdout, '');
  assert.match(result.stderr, /^llm-proxy: [^\n]+\n$/);
  assert.match(result.stderr, pattern);
}

async function createActor(...args: string[]): Promise<{ id: string; name: string }> {
  const result = await cliIn('actors', 'create', '--json', ...args);
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as { id: string; name: string };
}

async function withStore<T>(work: (store: ReturnType<typeof openSqliteStore>) => Promise<T>): Promise<T> {
  const store = openSqliteStore(dataDir);
  try {
    return await work(store);
  } finally {
    await store.close();
  }
}

const COMMAND_NAMES = [
  'serve',
  'actors create',
  'actors list',
  'actors disable',
  'actors enable',
  'tokens create',
  'tokens list',
  'tokens revoke',
  'usage',
];

describe('help', () => {
  it('prints top-level help', async () => {
    const result = await cli(['--help']);
    assert.equal(result.code, 0);
    assert.equal(result.stderr, '');
    assert.match(result.stdout, /^Usage: llm-proxy /);
    for (const name of COMMAND_NAMES) assert.match(result.stdout, new RegExp(`\\n  ${name} `), name);
  });

  it('prints usage without arguments', async () => {
    const result = await cli([]);
    assert.equal(result.code, 2);
    assert.equal(result.stdout, '');
    assert.match(result.stderr, /^Usage: llm-proxy /);
  });

  it('prints help for every command', async () => {
    for (const name of COMMAND_NAMES) {
      for (const flag of ['--help', '-h']) {
        const result = await cli([...name.split(' '), flag]);
        assert.equal(result.code, 0, `${name} ${flag}`);
        assert.ok(result.stdout.startsWith(`Usage: llm-proxy ${name}`), `${name} ${flag}: ${result.stdout}`);
        assert.match(result.stdout, /--data-dir DIR/);
        assert.ok(result.stdout.endsWith('\n'));
      }
    }
  });

  it('prints help before checking options', async () => {
    const result = await cli(['actors', 'create', '--bogus', '--help']);
    assert.equal(result.code, 0);
    assert.match(result.stdout, /^Usage: llm-proxy actors create/);
  });

  it('prints group help', async () => {
    const requested = await cli(['actors', '--help']);
    assert.equal(requested.code, 0);
    assert.match(requested.stdout, /^Usage: llm-proxy actors SUBCOMMAND/);
    assert.match(requested.stdout, /actors disable/);

    const missing = await cli(['tokens']);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /^Usage: llm-proxy tokens SUBCOMMAND/);
    assert.match(missing.stderr, /tokens revoke/);
  });

  it('rejects unknown commands', async () => {
    assertOneLineError(await cli(['launch']), 2, /unknown command "launch" \(see "llm-proxy --help"\)/);
    assertOneLineError(await cli(['actors', 'rename']), 2, /unknown command "actors rename" \(see "llm-proxy actors --help"\)/);
    assertOneLineError(await cli(['--verbose', 'usage']), 2, /unknown option "--verbose" before the command/);
  });
});

describe('actors create', () => {
  it('prints the actor block', async () => {
    const result = await cliIn(
      'actors',
      'create',
      '--name',
      'Research bot',
      '--limit',
      'chat_completions=100/1h',
      '--limit',
      'embeddings=100000/24h:text-embedding-3-small,OpenAI/Text-Embedding-3-Large',
    );
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stderr, '');
    const id = /^Created actor (act_[0-9a-f]{16})\n/.exec(result.stdout)?.[1];
    assert.ok(id, result.stdout);
    assert.match(result.stdout, new RegExp(`\\n  id        ${id}\\n`));
    assert.match(result.stdout, /\n  name      Research bot\n/);
    assert.match(result.stdout, /\n  enabled   yes\n/);
    assert.match(result.stdout, /\n  limits    chat_completions  100 per 1h0m0s, models: \*\n/);
    assert.match(
      result.stdout,
      /\n            embeddings        100000 per 24h0m0s, models: text-embedding-3-small, openai\/text-embedding-3-large\n/,
    );
    assert.match(result.stdout, new RegExp(`llm-proxy tokens create ${id}\\n$`));

    const stored = await withStore((store) => store.getActor(id));
    assert.equal(stored?.name, 'Research bot');
    assert.equal(stored?.enabled, true);
    assert.deepEqual(stored?.limits, {
      chat_completions: { limit: 100, intervalSeconds: 3600, allowedModels: ['*'] },
      embeddings: { limit: 100000, intervalSeconds: 86400, allowedModels: ['text-embedding-3-small', 'openai/text-embedding-3-large'] },
    });
  });

  it('prints JSON and honours --disabled', async () => {
    const result = await cliIn('actors', 'create', '--name', 'off', '--disabled', '--json', '--limit', 'code_completions=5/30s');
    assert.equal(result.code, 0, result.stderr);
    const actor = JSON.parse(result.stdout);
    assert.match(actor.id, /^act_/);
    assert.equal(actor.enabled, false);
    assert.deepEqual(actor.limits, { code_completions: { limit: 5, interval: '30s', intervalSeconds: 30, allowedModels: ['*'] } });
  });

  it('notes an actor without limits', async () => {
    const result = await cliIn('actors', 'create', '--name', 'bare');
    assert.equal(result.code, 0);
    assert.match(result.stdout, /\n  limits    none\n/);
    assert.match(result.stdout, /has no --limit, so it cannot use any feature/);
  });

  it('rejects invalid --limit values', async () => {
    const cases: [string, RegExp][] = [
      ['chat=1/1h', /invalid --limit "chat=1\/1h": unknown feature "chat"; expected one of chat_completions, code_completions, embeddings/],
      ['chat_completions', /invalid --limit "chat_completions": expected FEATURE=LIMIT\/INTERVAL/],
      ['chat_completions=100', /expected FEATURE=LIMIT\/INTERVAL/],
      ['chat_completions=ten/1h', /limit "ten" is not a whole number/],
      ['chat_completions=-1/1h', /limit "-1" is not a whole number/],
      ['chat_completions=10/1x', /interval "1x" is not a duration of at least 1s/],
      ['chat_completions=10/500ms', /interval "500ms" is not a duration of at least 1s/],
      ['chat_completions=10/1h:', /the model list after ":" is empty/],
      ['chat_completions=10/1h: , ', /the model list after ":" is empty/],
    ];
    for (const [value, pattern] of cases) {
      const result = await cliIn('actors', 'create', '--name', 'x', '--limit', value);
      assertOneLineError(result, 2, pattern);
      assert.match(result.stderr, /\(see "llm-proxy actors create --help"\)\n$/);
    }
    assert.equal(existsSync(databasePath(dataDir)), false, 'no database is created for invalid input');
  });

  it('rejects a feature given twice', async () => {
    const result = await cliIn('actors', 'create', '--name', 'x', '--limit', 'embeddings=1/1h', '--limit', 'embeddings=2/1h');
    assertOneLineError(result, 2, /embeddings is already limited by an earlier --limit/);
  });

  it('rejects invalid names and options', async () => {
    assertOneLineError(await cliIn('actors', 'create'), 2, /missing --name/);
    assertOneLineError(await cliIn('actors', 'create', '--name', '  '), 2, /the name is empty/);
    assertOneLineError(await cliIn('actors', 'create', '--name', 'x'.repeat(201)), 2, /201 characters long; expected at most 200/);
    assertOneLineError(await cliIn('actors', 'create', '--name', 'x', '--bogus'), 2, /unknown option '--bogus'/);
    assertOneLineError(await cliIn('actors', 'create', '--name', 'x', 'extra'), 2, /unexpected argument "extra"/);
    assertOneLineError(await cli(['--data-dir', dataDir, 'actors', 'create', '--name']), 2, /option --name requires a value \(see/);
    assertOneLineError(
      await cliIn('actors', 'create', '--name', '-dash'),
      2,
      /option --name requires a value; write --name=VALUE if the value starts with "-"/,
    );
    assertOneLineError(await cliIn('actors', 'create', '--name', 'x', '--disabled=yes'), 2, /option '--disabled' does not take an argument/);
  });
});

describe('actors list, enable and disable', () => {
  it('fails without a database', async () => {
    assertOneLineError(await cliIn('actors', 'list'), 1, /no database at .*llm-proxy\.db\. Set --data-dir or LLM_PROXY_DATA_DIR/);
    assert.equal(existsSync(databasePath(dataDir)), false);
  });

  it('lists actors as a table', async () => {
    const first = await createActor('--name', 'first', '--limit', 'chat_completions=100/1h');
    const second = await createActor('--name', 'second actor', '--disabled', '--limit', 'embeddings=100000/24h:text-embedding-3-small');
    const third = await createActor('--name', 'third');

    const result = await cliIn('actors', 'list');
    assert.equal(result.code, 0, result.stderr);
    assert.equal(
      result.stdout,
      [
        'ID                    NAME          ENABLED  LIMITS',
        `${first.id}  first         yes      chat_completions=100/1h0m0s`,
        `${second.id}  second actor  no       embeddings=100000/24h0m0s:text-embedding-3-small`,
        `${third.id}  third         yes      none`,
        '',
      ].join('\n'),
    );

    const json = await cliIn('actors', 'list', '--json');
    assert.equal(json.code, 0);
    assert.deepEqual(
      JSON.parse(json.stdout).map((actor: { id: string }) => actor.id),
      [first.id, second.id, third.id],
    );
  });

  it('reports an empty list', async () => {
    await withStore(async () => undefined);
    const result = await cliIn('actors', 'list');
    assert.equal(result.code, 0);
    assert.match(result.stdout, /^No actors\. Create one with: llm-proxy actors create/);
  });

  it('disables and enables an actor', async () => {
    const actor = await createActor('--name', 'toggled');

    const disabled = await cliIn('actors', 'disable', actor.id);
    assert.equal(disabled.code, 0, disabled.stderr);
    assert.equal(disabled.stdout, `Disabled actor ${actor.id} (toggled)\n`);
    assert.equal((await withStore((store) => store.getActor(actor.id)))?.enabled, false);

    const enabled = await cliIn('actors', 'enable', actor.id, '--json');
    assert.equal(enabled.code, 0, enabled.stderr);
    assert.equal(JSON.parse(enabled.stdout).enabled, true);
    assert.equal((await withStore((store) => store.getActor(actor.id)))?.enabled, true);
  });

  it('rejects unknown or missing ids', async () => {
    await createActor('--name', 'exists');
    assertOneLineError(await cliIn('actors', 'disable', 'act_missing'), 1, /actor act_missing not found; run "llm-proxy actors list"/);
    assertOneLineError(await cliIn('actors', 'enable'), 2, /missing ACTOR_ID/);
  });
});

describe('tokens', () => {
  it('creates a token shown once', async () => {
    const actor = await createActor('--name', 'holder');
    const result = await cliIn('tokens', 'create', actor.id);
    assert.equal(result.code, 0, result.stderr);

    const token = /\n {2}(llmp_\S+)\n/.exec(result.stdout)?.[1];
    assert.ok(token, result.stdout);
    assert.ok(looksLikeToken(token));
    assert.match(result.stdout, /^Created token tok_[0-9a-f]{16} for actor act_[0-9a-f]{16} \(holder\), expires: never\n/);
    assert.match(result.stdout, /It is shown only once/);

    const lookup = await withStore((store) => store.findToken(hashToken(token)));
    assert.equal(lookup?.actor.id, actor.id);
    assert.equal(lookup?.token.hint, tokenHint(token));
    assert.equal(lookup?.token.hint.length, 12);
    assert.equal(lookup?.token.expiresAt, null);
  });

  it('sets expiry from --expires-in and --expires-at', async () => {
    const actor = await createActor('--name', 'expiring');

    const before = Date.now();
    const relative = await cliIn('tokens', 'create', actor.id, '--expires-in', '2h', '--json');
    assert.equal(relative.code, 0, relative.stderr);
    const relativeRecord = JSON.parse(relative.stdout);
    assert.ok(looksLikeToken(relativeRecord.token));
    const expiresIn = Date.parse(relativeRecord.expiresAt) - before;
    assert.ok(expiresIn >= 7_200_000, `expires in ${expiresIn} ms`);
    assert.ok(expiresIn < 7_260_000, `expires in ${expiresIn} ms`);

    const absolute = await cliIn('tokens', 'create', actor.id, '--expires-at', '2099-05-01T12:00:00+02:00', '--json');
    assert.equal(absolute.code, 0, absolute.stderr);
    assert.equal(JSON.parse(absolute.stdout).expiresAt, '2099-05-01T10:00:00.000Z');
  });

  it('rejects invalid expiry options', async () => {
    const actor = await createActor('--name', 'strict');
    assertOneLineError(
      await cliIn('tokens', 'create', actor.id, '--expires-in', '1h', '--expires-at', '2099-01-01T00:00:00Z'),
      2,
      /give either --expires-in or --expires-at, not both/,
    );
    assertOneLineError(await cliIn('tokens', 'create', actor.id, '--expires-in', 'soon'), 2, /invalid --expires-in "soon"/);
    assertOneLineError(await cliIn('tokens', 'create', actor.id, '--expires-in', '0s'), 2, /expected a positive duration/);
    assertOneLineError(await cliIn('tokens', 'create', actor.id, '--expires-at', 'tomorrow'), 2, /invalid --expires-at "tomorrow"/);
    assertOneLineError(await cliIn('tokens', 'create', actor.id, '--expires-at', '2000-01-01T00:00:00Z'), 2, /the time is in the past/);
    assert.deepEqual(await withStore((store) => store.listTokens(actor.id)), []);
  });

  it('rejects an unknown actor', async () => {
    await createActor('--name', 'exists');
    assertOneLineError(await cliIn('tokens', 'create', 'act_missing'), 1, /actor act_missing not found/);
    assertOneLineError(await cliIn('tokens', 'list', 'act_missing'), 1, /actor act_missing not found/);
  });

  it('warns when the actor is disabled', async () => {
    const actor = await createActor('--name', 'off', '--disabled');
    const result = await cliIn('tokens', 'create', actor.id);
    assert.equal(result.code, 0);
    assert.match(result.stdout, new RegExp(`Actor ${actor.id} is disabled, so the token is rejected until "llm-proxy actors enable ${actor.id}"`));
  });

  it('lists and revokes tokens', async () => {
    const actor = await createActor('--name', 'lister');
    const empty = await cliIn('tokens', 'list', actor.id);
    assert.equal(empty.code, 0);
    assert.match(empty.stdout, /has no tokens/);

    const first = JSON.parse((await cliIn('tokens', 'create', actor.id, '--json')).stdout);
    const second = JSON.parse((await cliIn('tokens', 'create', actor.id, '--json', '--expires-in', '24h')).stdout);

    const revoked = await cliIn('tokens', 'revoke', first.id);
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.equal(revoked.stdout, `Revoked token ${first.id} (${first.hint}...) of actor ${actor.id}\n`);

    await new Promise((resolve) => setTimeout(resolve, 5));
    const again = await cliIn('tokens', 'revoke', first.id);
    assert.equal(again.code, 0);
    assert.match(again.stdout, new RegExp(`^Token ${first.id} \\(${first.hint}\\.\\.\\.\\) was already revoked at `));

    const list = await cliIn('tokens', 'list', actor.id);
    assert.equal(list.code, 0, list.stderr);
    const lines = list.stdout.trimEnd().split('\n');
    assert.match(lines[0], /^ID {20}HINT {10}CREATED \(UTC\) {8}EXPIRES \(UTC\) {8}STATUS$/);
    assert.match(lines[1], new RegExp(`^${first.id}  ${first.hint}  \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d  never {16}revoked$`));
    assert.match(lines[2], new RegExp(`^${second.id}  ${second.hint}  \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d  \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d  active$`));
    assert.equal(lines.length, 3);
    assert.ok(!list.stdout.includes(first.token), 'the list never shows the secret');

    const json = await cliIn('tokens', 'list', actor.id, '--json');
    assert.deepEqual(
      JSON.parse(json.stdout).map((token: { id: string; revokedAt: string | null }) => [token.id, token.revokedAt !== null]),
      [
        [first.id, true],
        [second.id, false],
      ],
    );

    assertOneLineError(await cliIn('tokens', 'revoke', 'tok_missing'), 1, /token tok_missing not found/);
  });
});

describe('usage', () => {
  function makeEvent(overrides: Partial<UsageEvent>): UsageEvent {
    return baseEvent({
      ...SPARSE_EVENT,
      actorId: 'act_aaaaaaaaaaaaaaaa',
      actorName: 'alice',
      provider: 'anthropic',
      route: '/v1/messages',
      requestedModel: 'claude-sonnet-4-5',
      inputTokens: 1200,
      outputTokens: 85,
      durationMs: 1534.4,
      ...overrides,
    });
  }

  async function insert(events: UsageEvent[]): Promise<void> {
    await withStore((store) => store.insertEvents(events));
  }

  it('renders an aligned table', async () => {
    await insert([
      makeEvent({ timestamp: '2030-01-01T10:00:00.000Z' }),
      makeEvent({
        timestamp: '2030-01-01T10:05:30.250Z',
        actorId: 'act_bbbbbbbbbbbbbbbb',
        actorName: 'build-bot',
        feature: 'embeddings',
        provider: 'openai',
        requestedModel: 'text-embedding-3-small',
        upstreamModel: 'text-embedding-3-small-v2',
        inputTokens: 42,
        outputTokens: null,
        tokensEstimated: true,
        durationMs: 12,
      }),
      makeEvent({
        timestamp: '2030-01-01T10:07:00.000Z',
        feature: null,
        requestedModel: null,
        status: 429,
        upstreamStatus: null,
        outcome: 'rejected',
        errorCode: 'rate_limited',
        inputTokens: null,
        outputTokens: null,
        durationMs: 0.4,
      }),
    ]);

    const result = await cliIn('usage');
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stderr, '');
    assert.equal(
      result.stdout,
      [
        'TIME (UTC)           ACTOR      FEATURE           MODEL                      OUTCOME    STATUS  INPUT  OUTPUT  DURATION_MS',
        '2030-01-01 10:07:00  alice      -                 -                          rejected      429      -       -            0',
        '2030-01-01 10:05:30  build-bot  embeddings        text-embedding-3-small-v2  completed     200    ~42       -           12',
        '2030-01-01 10:00:00  alice      chat_completions  claude-sonnet-4-5          completed     200   1200      85         1534',
        '',
      ].join('\n'),
    );
  });

  it('filters by actor, since and limit', async () => {
    const now = Date.now();
    await insert([
      makeEvent({ timestamp: new Date(now - 3 * 3_600_000).toISOString(), requestedModel: 'old-model' }),
      makeEvent({ timestamp: new Date(now - 10 * 60_000).toISOString(), requestedModel: 'recent-model' }),
      makeEvent({ timestamp: new Date(now - 5 * 60_000).toISOString(), actorId: 'act_other', actorName: 'bob', requestedModel: 'bob-model' }),
    ]);

    const recent = await cliIn('usage', '--since', '1h', '--json');
    assert.equal(recent.code, 0, recent.stderr);
    assert.deepEqual(
      JSON.parse(recent.stdout).map((event: Record<string, unknown>) => event.requested_model),
      ['bob-model', 'recent-model'],
    );

    const iso = new Date(now - 4 * 3_600_000).toISOString();
    const ofAlice = await cliIn('usage', '--actor', 'act_aaaaaaaaaaaaaaaa', '--since', iso, '--json');
    assert.deepEqual(
      JSON.parse(ofAlice.stdout).map((event: Record<string, unknown>) => event.requested_model),
      ['recent-model', 'old-model'],
    );

    const limited = await cliIn('usage', '--limit', '1');
    assert.equal(limited.code, 0);
    const lines = limited.stdout.trimEnd().split('\n');
    assert.equal(lines.length, 3);
    assert.match(lines[1], /bob-model/);
    assert.equal(lines[2], 'Showing the newest 1 matching events. Raise --limit to see more.');

    const none = await cliIn('usage', '--actor', 'act_nobody');
    assert.equal(none.code, 0);
    assert.equal(none.stdout, 'No usage events match.\n');
  });

  it('rejects invalid options', async () => {
    await withStore(async () => undefined);
    assertOneLineError(await cliIn('usage', '--since', 'yesterday'), 2, /invalid --since "yesterday": expected a duration such as 30m or 24h/);
    assertOneLineError(await cliIn('usage', '--limit', '0'), 2, /invalid --limit "0": expected a whole number of at least 1/);
    assertOneLineError(await cliIn('usage', '--limit', 'many'), 2, /invalid --limit "many"/);
    assertOneLineError(await cliIn('usage', 'extra'), 2, /unexpected argument "extra" \(see "llm-proxy usage --help"\)/);
  });
});

describe('data directory', () => {
  it('comes from LLM_PROXY_DATA_DIR', async () => {
    const created = await cli(['actors', 'create', '--name', 'env'], { LLM_PROXY_DATA_DIR: dataDir });
    assert.equal(created.code, 0, created.stderr);
    assert.ok(existsSync(databasePath(dataDir)));
  });

  it('comes from the config file', async () => {
    const configPath = join(dataDir, 'config.yaml');
    const storeDir = join(dataDir, 'from-config');
    writeFileSync(configPath, `dataDir: ${JSON.stringify(storeDir)}\n`);

    const created = await cli(['--config', configPath, 'actors', 'create', '--name', 'file']);
    assert.equal(created.code, 0, created.stderr);
    assert.ok(existsSync(databasePath(storeDir)));

    const listed = await cli(['actors', 'list'], { LLM_PROXY_CONFIG: configPath });
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /file/);
  });

  it('accepts --data-dir before the command', async () => {
    await createActor('--name', 'leading');
    const result = await cli(['--data-dir', dataDir, 'actors', 'list']);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /leading/);

    const equalsForm = await cli([`--data-dir=${dataDir}`, 'actors', 'list']);
    assert.equal(equalsForm.code, 0, equalsForm.stderr);
  });

  it('reports an invalid config as a usage error', async () => {
    assertOneLineError(await cli(['actors', 'list'], { LLM_PROXY_PORT: 'abc' }), 2, /invalid setting LLM_PROXY_PORT: got "abc"/);
    assertOneLineError(await cli(['actors', 'list', '--config', join(dataDir, 'missing.yaml')]), 2, /cannot be read \(ENOENT\)/);
  });
});

describe('serve', () => {
  it('reports config errors', async () => {
    assertOneLineError(await cli(['serve'], { LLM_PROXY_PORT: 'abc' }), 2, /^llm-proxy: invalid setting LLM_PROXY_PORT/);
    assertOneLineError(await cli(['serve', 'now']), 2, /unexpected argument "now"/);
  });

  it('runs until SIGTERM through the bin script', async () => {
    const child = spawn(process.execPath, [BIN, 'serve', '--data-dir', dataDir], {
      env: { PATH: process.env.PATH, LLM_PROXY_HOST: '127.0.0.1', LLM_PROXY_PORT: '0', LLM_PROXY_LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (chunk: Buffer) => {
          stdout += chunk.toString();
          if (stdout.includes('gateway listening')) resolve();
        });
        child.on('exit', () => reject(new Error(`serve exited before listening: ${stderr}`)));
      });
      child.kill('SIGTERM');
      assert.equal(await exited, 0, stderr);
      assert.match(stdout, /gateway stopped/);
      assert.ok(existsSync(databasePath(dataDir)));
    } finally {
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
});
