import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import Database from 'better-sqlite3';
import { loadConfig } from '../config/config.ts';
import {
  actorFromSqliteRow,
  databasePath,
  eventFromSqliteRow,
  storedTokenFromSqliteRow,
  type SqliteActorRow,
  type SqliteEventRow,
  type SqliteTokenRow,
} from '../storage/sqlite.ts';
import type { PostgresStore } from '../storage/postgres.ts';
import { validateSchemaName } from '../storage/postgres-schema.ts';
import {
  CommandError,
  expectPositionals,
  formatOptionsHelp,
  resolveDataDir,
  stringOption,
  UsageError,
  type CliIo,
  type OptionValues,
  type CliCommand,
} from './args.ts';

/** SQLite schema versions whose tables this command reads; version 2 added only a change counter. */
const SUPPORTED_SQLITE_VERSIONS = [1, 2];
const EVENTS_PER_PAGE = 1000;
const PROGRESS_EVERY_EVENTS = 100_000;

/** A usage_events row read with its rowid, which pages the copy. */
type PagedEventRow = SqliteEventRow & { rowid: number };

interface CopyCounts {
  copied: number;
  total: number;
}

/** Returns the `--to` URL, or the databaseUrl setting when the option is absent. */
function resolveTargetUrl(values: OptionValues, io: CliIo, command: string): string {
  const url = stringOption(values, 'to') ?? loadConfig(io.env, stringOption(values, 'config')).databaseUrl;
  if (url === null) {
    throw new UsageError('missing --to: give the postgres:// URL of the target database, or set LLM_PROXY_DATABASE_URL', command);
  }
  let protocol: string | undefined;
  try {
    protocol = new URL(url).protocol;
  } catch {
    protocol = undefined;
  }
  if (protocol !== 'postgres:' && protocol !== 'postgresql:') {
    // The URL can contain a password, so it is not repeated in the message.
    throw new UsageError('invalid --to: expected a URL such as postgres://user@127.0.0.1:5432/llm_proxy', command);
  }
  return url;
}

/** Opens the SQLite database read-only and checks that its schema is the one this command reads. */
function openSqliteReadOnly(path: string): Database.Database {
  if (!existsSync(path)) {
    throw new CommandError(`no database at ${resolve(path)}. Set --data-dir or LLM_PROXY_DATA_DIR to the gateway's data directory`);
  }
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare('SELECT MAX(version) AS version FROM schema_migrations').get() as { version: number | null };
    if (row.version === null || !SUPPORTED_SQLITE_VERSIONS.includes(row.version)) {
      throw new CommandError(
        `database ${resolve(path)} has schema version ${row.version ?? 'none'}, but this llm-proxy copies only versions ${SUPPORTED_SQLITE_VERSIONS.join(' and ')}. Run migrate-sqlite from the llm-proxy release that last opened the database`,
      );
    }
  } catch (error) {
    db.close();
    if (error instanceof CommandError) throw error;
    throw new CommandError(`failed to read database ${resolve(path)}: ${(error as Error).message}`);
  }
  return db;
}

async function copyEvents(db: Database.Database, store: PostgresStore, io: CliIo): Promise<CopyCounts> {
  const total = (db.prepare('SELECT COUNT(*) AS count FROM usage_events').get() as { count: number }).count;
  const page = db.prepare('SELECT rowid, * FROM usage_events WHERE rowid > ? ORDER BY rowid LIMIT ?');
  let copied = 0;
  let read = 0;
  let lastRowid = 0;
  let nextProgress = PROGRESS_EVERY_EVENTS;
  // Bounded by the row count: every page advances lastRowid past the rows it read.
  for (;;) {
    const rows = page.all(lastRowid, EVENTS_PER_PAGE) as PagedEventRow[];
    if (rows.length === 0) break;
    copied += await store.insertEventsCounted(rows.map(eventFromSqliteRow));
    read += rows.length;
    lastRowid = rows[rows.length - 1].rowid;
    if (read >= nextProgress) {
      io.stderr.write(`usage events: ${read} of ${total} read\n`);
      nextProgress += PROGRESS_EVERY_EVENTS;
    }
  }
  return { copied, total: read };
}

function formatCounts(rows: [label: string, counts: CopyCounts][]): string {
  const width = Math.max(...rows.map(([, counts]) => String(counts.copied).length));
  return rows
    .map(([label, counts]) => `  ${label.padEnd(12)}  ${String(counts.copied).padStart(width)} copied, ${counts.total - counts.copied} already present\n`)
    .join('');
}

function parseSchema(values: OptionValues, io: CliIo, command: string): string | undefined {
  const schema = stringOption(values, 'schema') ?? loadConfig(io.env, stringOption(values, 'config')).databaseSchema ?? undefined;
  if (schema === undefined) return undefined;
  try {
    return validateSchemaName(schema);
  } catch (error) {
    throw new UsageError((error as Error).message, command);
  }
}

const migrateSqliteCommand: CliCommand = {
  name: 'migrate-sqlite',
  summary: 'Copy actors, tokens and usage events from SQLite into Postgres',
  help: `Usage: llm-proxy migrate-sqlite --to URL [--schema NAME] [--data-dir DIR]

Copies every actor, token and usage event from llm-proxy.db in the data directory into
Postgres, keeping ids, token hashes and timestamps, and creates the Postgres tables when they
are missing. Rows whose id is already in Postgres are skipped, so running the command again
copies only rows added since. The SQLite database is opened read-only.

Stop the gateways that write to the SQLite database first: events they record during the copy
are copied only by a later run.

Options:
${formatOptionsHelp([
  ['--to URL', 'postgres:// URL of the target database (default: LLM_PROXY_DATABASE_URL,\nthen databaseUrl from the config file)'],
  ['--schema NAME', "Postgres schema for the tables, created when missing (default: the\nfirst schema in the database user's search_path)"],
])}
`,
  options: {
    to: { type: 'string' },
    schema: { type: 'string' },
  },
  async run({ values, positionals }, io) {
    expectPositionals(this.name, positionals, []);
    const url = resolveTargetUrl(values, io, this.name);
    const schema = parseSchema(values, io, this.name);
    const path = databasePath(resolveDataDir(values, io.env));

    // Imported here so that the other commands do not load pg.
    const { describePostgresUrl, openPostgresStore } = await import('../storage/postgres.ts');
    const db = openSqliteReadOnly(path);
    let store: PostgresStore | undefined;
    try {
      try {
        store = await openPostgresStore(url, { schema });
      } catch (error) {
        throw new CommandError((error as Error).message);
      }

      // One read transaction, so that the copy is a consistent snapshot of the SQLite file.
      db.exec('BEGIN');
      const actorRows = db.prepare('SELECT * FROM actors ORDER BY created_at, rowid').all() as SqliteActorRow[];
      const tokenRows = db.prepare('SELECT * FROM tokens ORDER BY created_at, rowid').all() as SqliteTokenRow[];
      const actors = { copied: await store.importActors(actorRows.map(actorFromSqliteRow)), total: actorRows.length };
      const tokens = { copied: await store.importTokens(tokenRows.map(storedTokenFromSqliteRow)), total: tokenRows.length };
      const events = await copyEvents(db, store, io);
      db.exec('COMMIT');

      const target = `${describePostgresUrl(url)}${schema === undefined ? '' : ` (schema ${schema})`}`;
      io.stdout.write(`Copied ${resolve(path)} to ${target}:\n`);
      io.stdout.write(formatCounts([['actors', actors], ['tokens', tokens], ['usage events', events]]));
      return 0;
    } finally {
      db.close();
      await store?.close();
    }
  },
};

export const MIGRATE_COMMANDS: CliCommand[] = [migrateSqliteCommand];
