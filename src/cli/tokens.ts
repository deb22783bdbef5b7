import { generateToken, hashToken, tokenHint } from '../actors/tokens.ts';
import type { TokenRecord } from '../actors/types.ts';
import { parseDuration } from '../config/duration.ts';
import {
  CommandError,
  expectPositionals,
  flagOption,
  formatOptionsHelp,
  openStore,
  stringOption,
  UsageError,
  type CliCommand,
  type OptionValues,
} from './args.ts';
import { formatJson, formatTime, renderTable } from './format.ts';

const ISO_DATE_START = /^\d{4}-\d{2}-\d{2}/;

/** Returns the expiry from `--expires-in` or `--expires-at` as an ISO timestamp, or null for none. */
function parseExpiry(values: OptionValues, command: string, now: number): string | null {
  const expiresIn = stringOption(values, 'expires-in');
  const expiresAt = stringOption(values, 'expires-at');
  if (expiresIn !== undefined && expiresAt !== undefined) {
    throw new UsageError('give either --expires-in or --expires-at, not both', command);
  }

  if (expiresIn !== undefined) {
    const ms = parseDuration(expiresIn);
    if (ms === undefined || ms <= 0) {
      throw new UsageError(`invalid --expires-in ${JSON.stringify(expiresIn)}: expected a positive duration such as 90m or 720h`, command);
    }
    return new Date(now + ms).toISOString();
  }

  if (expiresAt !== undefined) {
    const time = ISO_DATE_START.test(expiresAt) ? Date.parse(expiresAt) : Number.NaN;
    if (Number.isNaN(time)) {
      throw new UsageError(`invalid --expires-at ${JSON.stringify(expiresAt)}: expected an ISO 8601 time such as 2030-01-31T00:00:00Z`, command);
    }
    if (time <= now) {
      throw new UsageError(`invalid --expires-at ${JSON.stringify(expiresAt)}: the time is in the past`, command);
    }
    return new Date(time).toISOString();
  }

  return null;
}

function tokenStatus(token: TokenRecord, now: number): string {
  if (token.revokedAt !== null) return 'revoked';
  if (token.expiresAt !== null && Date.parse(token.expiresAt) <= now) return 'expired';
  return 'active';
}

const createCommand: CliCommand = {
  name: 'tokens create',
  summary: "Issue a new token for an actor",
  help: `Usage: llm-proxy tokens create ACTOR_ID [--expires-in DURATION | --expires-at TIME] [--json]

Issues a new API token for the actor and prints it. Only the token's SHA-256 hash is stored,
so the token cannot be shown again.

Options:
${formatOptionsHelp([
  ['--expires-in DURATION', 'Expire the token after this duration, such as 90m or 720h'],
  ['--expires-at TIME', 'Expire the token at this ISO 8601 time, such as 2030-01-31T00:00:00Z.\nWithout either option, the token does not expire.'],
  ['--json', 'Print the token and its record as JSON'],
])}
`,
  options: {
    'expires-in': { type: 'string' },
    'expires-at': { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values, positionals }, io) {
    const [actorId] = expectPositionals(this.name, positionals, ['ACTOR_ID']);
    const expiresAt = parseExpiry(values, this.name, Date.now());

    const store = await openStore(values, io, { create: false });
    try {
      const actor = await store.getActor(actorId);
      if (actor === undefined) {
        throw new CommandError(`actor ${actorId} not found; run "llm-proxy actors list" to see actor ids`);
      }
      const token = generateToken();
      const record = await store.createToken(actor.id, hashToken(token), tokenHint(token), expiresAt);

      if (flagOption(values, 'json')) {
        io.stdout.write(formatJson({ token, ...record }));
        return 0;
      }
      const expiry = record.expiresAt === null ? 'never' : `${formatTime(record.expiresAt)} UTC`;
      io.stdout.write(
        `Created token ${record.id} for actor ${actor.id} (${actor.name}), expires: ${expiry}\n\n` +
          `  ${token}\n\n` +
          'Copy this token now. It is shown only once, because only its hash is stored.\n',
      );
      if (!actor.enabled) {
        io.stdout.write(`Actor ${actor.id} is disabled, so the token is rejected until "llm-proxy actors enable ${actor.id}".\n`);
      }
      return 0;
    } finally {
      await store.close();
    }
  },
};

const revokeCommand: CliCommand = {
  name: 'tokens revoke',
  summary: 'Revoke a token',
  help: `Usage: llm-proxy tokens revoke TOKEN_ID [--json]

Revokes the token, so that the gateway rejects it. Revoking cannot be undone.
TOKEN_ID is the tok_ id from "llm-proxy tokens list", not the secret token.

Options:
${formatOptionsHelp([['--json', 'Print the token record as JSON']])}
`,
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }, io) {
    const [tokenId] = expectPositionals(this.name, positionals, ['TOKEN_ID']);
    const store = await openStore(values, io, { create: false });
    try {
      const startedAt = new Date().toISOString();
      const record = await store.revokeToken(tokenId);
      if (record === undefined) {
        throw new CommandError(`token ${tokenId} not found; run "llm-proxy tokens list ACTOR_ID" to see token ids`);
      }
      if (flagOption(values, 'json')) {
        io.stdout.write(formatJson(record));
      } else if (record.revokedAt !== null && record.revokedAt < startedAt) {
        io.stdout.write(`Token ${record.id} (${record.hint}...) was already revoked at ${formatTime(record.revokedAt)} UTC\n`);
      } else {
        io.stdout.write(`Revoked token ${record.id} (${record.hint}...) of actor ${record.actorId}\n`);
      }
      return 0;
    } finally {
      await store.close();
    }
  },
};

const listCommand: CliCommand = {
  name: 'tokens list',
  summary: "List an actor's tokens",
  help: `Usage: llm-proxy tokens list ACTOR_ID [--json]

Lists the actor's tokens, oldest first, including revoked and expired ones.
HINT is the first 12 characters of the token.

Options:
${formatOptionsHelp([['--json', 'Print the token records as a JSON array']])}
`,
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }, io) {
    const [actorId] = expectPositionals(this.name, positionals, ['ACTOR_ID']);
    const store = await openStore(values, io, { create: false });
    try {
      const actor = await store.getActor(actorId);
      if (actor === undefined) {
        throw new CommandError(`actor ${actorId} not found; run "llm-proxy actors list" to see actor ids`);
      }
      const tokens = await store.listTokens(actor.id);
      if (flagOption(values, 'json')) {
        io.stdout.write(formatJson(tokens));
        return 0;
      }
      if (tokens.length === 0) {
        io.stdout.write(`Actor ${actor.id} (${actor.name}) has no tokens. Create one with: llm-proxy tokens create ${actor.id}\n`);
        return 0;
      }
      const now = Date.now();
      const rows = tokens.map((token) => [
        token.id,
        token.hint,
        formatTime(token.createdAt),
        token.expiresAt === null ? 'never' : formatTime(token.expiresAt),
        tokenStatus(token, now),
      ]);
      io.stdout.write(renderTable(['ID', 'HINT', 'CREATED (UTC)', 'EXPIRES (UTC)', 'STATUS'], rows));
      return 0;
    } finally {
      await store.close();
    }
  },
};

export const TOKEN_COMMANDS: CliCommand[] = [createCommand, listCommand, revokeCommand];
