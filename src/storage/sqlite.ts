import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import type { Actor, ActorPatch, FeatureLimits, NewActor, TokenRecord } from '../actors/types.ts';
import type { UsageEvent, UsageQuery } from '../usage/event.ts';
import { BOOLEAN_EVENT_INDEXES, EVENT_COLUMNS, eventValues, tokenFromRow, type EventValue, type StoredToken, type TokenRow } from './rows.ts';
import type { Store, TokenLookup } from './store.ts';

/** File name of the database inside the data directory. */
export const DATABASE_FILE_NAME = 'llm-proxy.db';

export const MAX_ACTOR_NAME_LENGTH = 200;

/** Returns the database path for a data directory, without touching the file system. */
export function databasePath(dataDir: string): string {
  return join(dataDir, DATABASE_FILE_NAME);
}

/**
 * Trims an actor name and returns it. Throws RangeError when the name is empty or longer
 * than MAX_ACTOR_NAME_LENGTH characters.
 */
export function validateActorName(name: string): string {
  const trimmed = name.trim();
  if (trimmed === '') {
    throw new RangeError(`invalid actor name: the name is empty; expected 1 to ${MAX_ACTOR_NAME_LENGTH} characters`);
  }
  if (trimmed.length > MAX_ACTOR_NAME_LENGTH) {
    throw new RangeError(`invalid actor name: the name is ${trimmed.length} characters long; expected at most ${MAX_ACTOR_NAME_LENGTH}`);
  }
  return trimmed;
}

interface Migration {
  version: number;
  description: string;
  sql: string;
}

/**
 * Schema changes in order. Each runs once, inside the transaction that records its version in
 * `schema_migrations`. Append new versions and never edit an applied one.
 */
const MIGRATIONS: Migration[] = [
  {
    version: 1,
    description: 'actors, tokens and usage events',
    sql: `
      CREATE TABLE actors (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        limits TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
      );

      CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        actor_id TEXT NOT NULL REFERENCES actors(id) ON DELETE CASCADE,
        token_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        revoked_at TEXT
      );
      CREATE INDEX tokens_actor_id ON tokens (actor_id);

      CREATE TABLE usage_events (
        id TEXT PRIMARY KEY,
        timestamp TEXT NOT NULL,
        request_id TEXT NOT NULL,
        actor_id TEXT NOT NULL,
        actor_name TEXT NOT NULL,
        feature TEXT,
        provider TEXT,
        route TEXT NOT NULL,
        requested_model TEXT,
        upstream_model TEXT,
        stream INTEGER NOT NULL,
        upstream_status INTEGER,
        status INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        error_code TEXT,
        input_tokens INTEGER,
        output_tokens INTEGER,
        cache_creation_input_tokens INTEGER,
        cache_read_input_tokens INTEGER,
        reasoning_tokens INTEGER,
        tokens_estimated INTEGER NOT NULL,
        duration_ms REAL NOT NULL,
        upstream_ttfb_ms REAL,
        upstream_duration_ms REAL,
        overhead_ms REAL,
        prompt_chars INTEGER,
        completion_chars INTEGER,
        client_ip TEXT,
        user_agent TEXT,
        sg_actor_uid TEXT,
        sg_actor_anonymous_uid TEXT
      );
      CREATE INDEX usage_events_actor_timestamp ON usage_events (actor_id, timestamp);
      CREATE INDEX usage_events_timestamp ON usage_events (timestamp);
    `,
  },
  {
    version: 2,
    description: 'change counter for actors and tokens',
    sql: `
      CREATE TABLE change_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
      );
      INSERT INTO change_version (id, version) VALUES (1, 0);
      CREATE TRIGGER actors_insert_version AFTER INSERT ON actors BEGIN UPDATE change_version SET version = version + 1; END;
      CREATE TRIGGER actors_update_version AFTER UPDATE ON actors BEGIN UPDATE change_version SET version = version + 1; END;
      CREATE TRIGGER actors_delete_version AFTER DELETE ON actors BEGIN UPDATE change_version SET version = version + 1; END;
      CREATE TRIGGER tokens_insert_version AFTER INSERT ON tokens BEGIN UPDATE change_version SET version = version + 1; END;
      CREATE TRIGGER tokens_update_version AFTER UPDATE ON tokens BEGIN UPDATE change_version SET version = version + 1; END;
      CREATE TRIGGER tokens_delete_version AFTER DELETE ON tokens BEGIN UPDATE change_version SET version = version + 1; END;
    `,
  },
];

/** UsageEvent fields stored as 0 or 1. */
const BOOLEAN_EVENT_FIELDS = new Set<keyof UsageEvent>(['stream', 'tokensEstimated']);

/** A row of the SQLite `actors` table: `enabled` is 0 or 1 and `limits` is JSON text. */
export interface SqliteActorRow {
  id: string;
  name: string;
  enabled: number;
  limits: string;
  created_at: string;
  updated_at: string;
}

/** A full row of the SQLite `tokens` table. */
export interface SqliteTokenRow extends TokenRow {
  token_hash: string;
}

/** A row of the SQLite `usage_events` table, keyed by column name. */
export type SqliteEventRow = Record<string, string | number | null>;

function newId(prefix: string): string {
  return prefix + randomBytes(8).toString('hex');
}

export function actorFromSqliteRow(row: SqliteActorRow): Actor {
  return {
    id: row.id,
    name: row.name,
    enabled: row.enabled === 1,
    limits: JSON.parse(row.limits) as FeatureLimits,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

/** Decodes a token row with its hash, for copying the token to another store. */
export function storedTokenFromSqliteRow(row: SqliteTokenRow): StoredToken {
  return { ...tokenFromRow(row), tokenHash: row.token_hash };
}

/** Returns the event's values in column order, with booleans as 0 or 1, the way SQLite stores them. */
function sqliteEventValues(event: UsageEvent): EventValue[] {
  const values = eventValues(event);
  for (const index of BOOLEAN_EVENT_INDEXES) values[index] = values[index] ? 1 : 0;
  return values;
}

export function eventFromSqliteRow(row: SqliteEventRow): UsageEvent {
  const event: Record<string, unknown> = {};
  for (const [field, column] of EVENT_COLUMNS) {
    event[field] = BOOLEAN_EVENT_FIELDS.has(field) ? row[column] === 1 : row[column];
  }
  return event as unknown as UsageEvent;
}

/**
 * The embedded Store: one better-sqlite3 connection to one database file. Every method runs
 * synchronously on the calling thread and returns a settled promise.
 */
export class SqliteStore implements Store {
  readonly path: string;
  private readonly db: Database.Database;
  /** Bumped by this connection's own writes to actors and tokens. */
  /** Writes usage events on a worker thread when the store was opened with a background writer. */
  private readonly writer: BackgroundWriter | undefined;

  private readonly statements: {
    insertActor: Database.Statement;
    selectActor: Database.Statement;
    selectActors: Database.Statement;
    updateActor: Database.Statement;
    deleteActor: Database.Statement;
    insertToken: Database.Statement;
    selectToken: Database.Statement;
    revokeToken: Database.Statement;
    selectTokensOfActor: Database.Statement;
    selectTokenByHash: Database.Statement;
    insertEvent: Database.Statement;
    selectChangeVersion: Database.Statement;
  };

  /** Opens or creates the database file at `path`. The parent directory must exist. */
  constructor(path: string, options: SqliteStoreOptions = {}) {
    this.path = path;
    this.db = new Database(path);
    try {
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('busy_timeout = 5000');
      this.db.pragma('synchronous = NORMAL');
      this.db.pragma('foreign_keys = ON');
      this.migrate();
    } catch (error) {
      this.db.close();
      throw error;
    }

    const columns = EVENT_COLUMNS.map(([, column]) => column);
    // A retried batch skips the events it already stored instead of failing on the primary key.
    const insertEventSql = `INSERT INTO usage_events (${columns.join(', ')}) VALUES (${columns.map(() => '?').join(', ')})
         ON CONFLICT (id) DO NOTHING`;
    this.statements = {
      insertActor: this.db.prepare(
        'INSERT INTO actors (id, name, enabled, limits, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)',
      ),
      selectActor: this.db.prepare('SELECT * FROM actors WHERE id = ?'),
      selectActors: this.db.prepare('SELECT * FROM actors ORDER BY created_at, rowid'),
      updateActor: this.db.prepare('UPDATE actors SET name = ?, enabled = ?, limits = ?, updated_at = ? WHERE id = ?'),
      deleteActor: this.db.prepare('DELETE FROM actors WHERE id = ?'),
      insertToken: this.db.prepare(
        'INSERT INTO tokens (id, actor_id, token_hash, hint, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)',
      ),
      selectToken: this.db.prepare('SELECT * FROM tokens WHERE id = ?'),
      revokeToken: this.db.prepare('UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL'),
      selectTokensOfActor: this.db.prepare('SELECT * FROM tokens WHERE actor_id = ? ORDER BY created_at, rowid'),
      selectTokenByHash: this.db.prepare('SELECT * FROM tokens WHERE token_hash = ?'),
      insertEvent: this.db.prepare(insertEventSql),
      selectChangeVersion: this.db.prepare('SELECT version FROM change_version WHERE id = 1'),
    };
    this.writer = options.backgroundWriter ? new BackgroundWriter(path, insertEventSql) : undefined;
  }

  /** Applies the migrations newer than the recorded schema version, in one immediate transaction. */
  private migrate(): void {
    this.db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version INTEGER PRIMARY KEY,
      description TEXT NOT NULL,
      applied_at TEXT NOT NULL
    )`);
    // IMMEDIATE takes the write lock before reading the version, so two processes that start
    // together cannot both apply the same migration.
    const applyPending = this.db.transaction(() => {
      const row = this.db.prepare('SELECT MAX(version) AS version FROM schema_migrations').get() as { version: number | null };
      const current = row.version ?? 0;
      const latest = MIGRATIONS[MIGRATIONS.length - 1].version;
      if (current > latest) {
        throw new Error(
          `database ${this.path} has schema version ${current}, newer than the ${latest} this llm-proxy supports; upgrade llm-proxy`,
        );
      }
      const record = this.db.prepare('INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)');
      for (const migration of MIGRATIONS) {
        if (migration.version <= current) continue;
        this.db.exec(migration.sql);
        record.run(migration.version, migration.description, new Date().toISOString());
      }
    });
    applyPending.immediate();
  }

  /** Returns the versions recorded in `schema_migrations`, in ascending order. */
  appliedMigrations(): number[] {
    const rows = this.db.prepare('SELECT version FROM schema_migrations ORDER BY version').all() as { version: number }[];
    return rows.map((row) => row.version);
  }


  private getActorSync(id: string): Actor | undefined {
    const row = this.statements.selectActor.get(id) as SqliteActorRow | undefined;
    return row === undefined ? undefined : actorFromSqliteRow(row);
  }

  async createActor(input: NewActor): Promise<Actor> {
    const now = new Date().toISOString();
    const actor: Actor = {
      id: newId('act_'),
      name: validateActorName(input.name),
      enabled: input.enabled ?? true,
      limits: input.limits ?? {},
      createdAt: now,
      updatedAt: now,
    };
    this.statements.insertActor.run(actor.id, actor.name, actor.enabled ? 1 : 0, JSON.stringify(actor.limits), now, now);
    return actor;
  }

  async getActor(id: string): Promise<Actor | undefined> {
    return this.getActorSync(id);
  }

  async listActors(): Promise<Actor[]> {
    return (this.statements.selectActors.all() as SqliteActorRow[]).map(actorFromSqliteRow);
  }

  async updateActor(id: string, patch: ActorPatch): Promise<Actor | undefined> {
    const name = patch.name === undefined ? undefined : validateActorName(patch.name);
    const update = this.db.transaction((): Actor | undefined => {
      const current = this.getActorSync(id);
      if (current === undefined) return undefined;
      const next: Actor = {
        ...current,
        name: name ?? current.name,
        enabled: patch.enabled ?? current.enabled,
        limits: patch.limits ?? current.limits,
        updatedAt: new Date().toISOString(),
      };
      this.statements.updateActor.run(next.name, next.enabled ? 1 : 0, JSON.stringify(next.limits), next.updatedAt, id);
      return next;
    });
    const updated = update.immediate();
    return updated;
  }

  async deleteActor(id: string): Promise<boolean> {
    const deleted = this.statements.deleteActor.run(id).changes > 0;
    return deleted;
  }

  /** Throws when the actor does not exist or when the hash is already stored. */
  async createToken(actorId: string, tokenHash: string, hint: string, expiresAt: string | null): Promise<TokenRecord> {
    const record: TokenRecord = {
      id: newId('tok_'),
      actorId,
      hint,
      createdAt: new Date().toISOString(),
      expiresAt,
      revokedAt: null,
    };
    const insert = this.db.transaction(() => {
      if (this.getActorSync(actorId) === undefined) {
        throw new Error(`actor ${actorId} not found`);
      }
      this.statements.insertToken.run(record.id, actorId, tokenHash, hint, record.createdAt, expiresAt);
    });
    insert.immediate();
    return record;
  }

  /**
   * Sets `revokedAt` to now and returns the token. A token that is already revoked keeps its
   * original `revokedAt`. Returns undefined when no token has this id.
   */
  async revokeToken(id: string): Promise<TokenRecord | undefined> {
    const changes = this.statements.revokeToken.run(new Date().toISOString(), id).changes;
    const row = this.statements.selectToken.get(id) as TokenRow | undefined;
    return row === undefined ? undefined : tokenFromRow(row);
  }

  /** Returns the actor's tokens, oldest first, including revoked and expired ones. */
  async listTokens(actorId: string): Promise<TokenRecord[]> {
    return (this.statements.selectTokensOfActor.all(actorId) as TokenRow[]).map(tokenFromRow);
  }

  /** Returns revoked and expired tokens too, so that the caller can report why a token fails. */
  async findToken(tokenHash: string): Promise<TokenLookup | undefined> {
    const row = this.statements.selectTokenByHash.get(tokenHash) as TokenRow | undefined;
    if (row === undefined) return undefined;
    const actor = this.getActorSync(row.actor_id);
    // Deleting an actor deletes its tokens, so an orphaned token exists only if foreign keys were off.
    if (actor === undefined) return undefined;
    return { token: tokenFromRow(row), actor };
  }

  /**
   * Returns the change counter of actors and tokens. Triggers raise it on every insert, update
   * and delete of those tables, by any connection or process, and usage-event writes leave it
   * alone, so caches keyed on it are dropped only when an actor or token really changed.
   */
  async changeVersion(): Promise<number> {
    return (this.statements.selectChangeVersion.get() as { version: number }).version;
  }

  /** Inserts the batch in one transaction. Events whose id is already stored are skipped. */
  async insertEvents(events: UsageEvent[]): Promise<void> {
    if (events.length === 0) return;
    if (this.writer !== undefined) return this.writer.write(events.map(sqliteEventValues));
    const insertAll = this.db.transaction((batch: UsageEvent[]) => {
      for (const event of batch) this.statements.insertEvent.run(sqliteEventValues(event));
    });
    insertAll(events);
  }

  /**
   * Returns at most `limit` events, newest first. `since` is compared as text, which orders
   * correctly only for timestamps in the same format, such as Date.prototype.toISOString.
   */
  async queryEvents(query: UsageQuery): Promise<UsageEvent[]> {
    if (!Number.isInteger(query.limit) || query.limit < 1) {
      throw new RangeError(`invalid usage query limit ${query.limit}; expected a whole number of at least 1`);
    }
    const conditions: string[] = [];
    const parameters: (string | number)[] = [];
    if (query.actorId !== undefined) {
      conditions.push('actor_id = ?');
      parameters.push(query.actorId);
    }
    if (query.since !== undefined) {
      conditions.push('timestamp >= ?');
      parameters.push(query.since);
    }
    const where = conditions.length === 0 ? '' : `WHERE ${conditions.join(' AND ')}`;
    const sql = `SELECT * FROM usage_events ${where} ORDER BY timestamp DESC, rowid DESC LIMIT ?`;
    const rows = this.db.prepare(sql).all(...parameters, query.limit) as SqliteEventRow[];
    return rows.map(eventFromSqliteRow);
  }

  /** Throws when the connection is closed or the database cannot be read. */
  async ping(): Promise<void> {
    this.db.prepare('SELECT 1').get();
  }

  /** Closes the connection. Calling it again does nothing. */
  async close(): Promise<void> {
    await this.writer?.close();
    if (this.db.open) this.db.close();
  }
}

export interface SqliteStoreOptions {
  /**
   * Write usage events on a worker thread with its own connection. A batch of 500 events takes
   * about 12 ms to insert, which would otherwise stall every request on the event loop.
   */
  backgroundWriter?: boolean;
}

/** Sends event batches to the writer thread and resolves each write when it is committed. */
class BackgroundWriter {
  private readonly worker: Worker;
  private readonly waiting = new Map<number, { resolve: () => void; reject: (error: Error) => void }>();
  private nextId = 1;

  constructor(path: string, insertSql: string) {
    this.worker = new Worker(new URL('./sqlite-writer.mjs', import.meta.url), { workerData: { path, insertSql } });
    this.worker.unref();
    this.worker.on('message', (message: { id: number; error?: { message: string; code?: string } }) => {
      const pending = this.waiting.get(message.id);
      if (pending === undefined) return;
      this.waiting.delete(message.id);
      if (this.waiting.size === 0) this.worker.unref();
      if (message.error === undefined) pending.resolve();
      else pending.reject(Object.assign(new Error(message.error.message), { code: message.error.code }));
    });
    this.worker.on('error', (error) => this.failAll(error));
    this.worker.on('exit', (code) => this.failAll(new Error(`the SQLite writer thread exited with code ${code}`)));
  }

  write(rows: EventValue[][]): Promise<void> {
    const id = this.nextId++;
    // The thread keeps the process alive only while a write is pending, so an unflushed batch is
    // never lost to an event loop that runs out of other work.
    if (this.waiting.size === 0) this.worker.ref();
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ type: 'insert', id, rows });
    });
  }

  private failAll(error: Error): void {
    for (const pending of this.waiting.values()) pending.reject(error);
    this.waiting.clear();
  }

  async close(): Promise<void> {
    const exited = new Promise((resolve) => this.worker.once('exit', resolve));
    this.worker.ref();
    this.worker.postMessage({ type: 'close' });
    await exited;
  }
}

/** Opens `<dataDir>/llm-proxy.db`, creating the directory and the database when missing. */
export function openSqliteStore(dataDir: string, options: SqliteStoreOptions = {}): SqliteStore {
  mkdirSync(dataDir, { recursive: true });
  return new SqliteStore(databasePath(dataDir), options);
}
