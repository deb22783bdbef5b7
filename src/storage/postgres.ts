import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { CustomTypesConfig, Pool, PoolClient, PoolConfig, QueryConfig, QueryResultRow } from 'pg';
import type { Actor, ActorPatch, FeatureLimits, NewActor, TokenRecord } from '../actors/types.ts';
import type { Logger } from '../logging/logger.ts';
import type { UsageEvent, UsageQuery } from '../usage/event.ts';
import { MIGRATION_TIMEOUT_MS, MIGRATIONS_TABLE, migrate, validateSchemaName } from './postgres-schema.ts';
import { EVENT_COLUMNS, eventValues, tokenFromRow, type EventValue, type StoredToken, type TokenRow } from './rows.ts';
import { validateActorName } from './sqlite.ts';
import type { Store, TokenLookup } from './store.ts';

export interface PostgresStoreOptions {
  /** Schema that contains every table, created when missing. Default: the connection's search_path. */
  schema?: string;
  /** Receives errors of idle pool connections. Without a logger they are ignored. */
  logger?: Logger;
  /** Maximum number of pooled connections. Default 10. */
  maxConnections?: number;
  /** Time allowed to open one connection, in milliseconds. Default 2000. */
  connectionTimeoutMs?: number;
  /** Server-side limit for one statement, in milliseconds. Default 5000. */
  statementTimeoutMs?: number;
  /** Shown in pg_stat_activity. Default `llm-proxy`. */
  applicationName?: string;
}

const DEFAULT_MAX_CONNECTIONS = 10;
const DEFAULT_CONNECTION_TIMEOUT_MS = 2000;
const DEFAULT_STATEMENT_TIMEOUT_MS = 5000;
/**
 * Added to the statement timeout to get the client-side query timeout. The server cancels slow
 * statements itself. The client-side limit catches a server that stopped answering, for example
 * behind a network partition, which would otherwise hold a query until TCP gives up.
 */
const CLIENT_TIMEOUT_MARGIN_MS = 2000;
const PING_TIMEOUT_MS = 1500;

/** Postgres accepts at most 65535 bind parameters per statement, and 1000 rows of 31 columns use 31000. */
const MAX_ROWS_PER_INSERT = 1000;

const INT8_OID = 20;
const TIMESTAMPTZ_OID = 1184;
const FOREIGN_KEY_VIOLATION = '23503';

const defaultTimestampParser = pg.types.getTypeParser(TIMESTAMPTZ_OID, 'text') as (value: string) => Date | number;

/**
 * Type parsers for this store's connections only, leaving the process-wide pg defaults alone.
 * bigint columns (counts, the change version) become numbers, which is exact up to 2^53.
 * timestamptz columns become ISO 8601 strings, the shape SqliteStore returns. Postgres stores
 * microseconds, but the strings keep milliseconds, which is all that Date.prototype.toISOString
 * writes.
 */
const TYPE_PARSERS: CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') => {
    if (oid === INT8_OID) return (value: string) => Number(value);
    if (oid === TIMESTAMPTZ_OID) {
      return (value: string) => {
        const parsed = defaultTimestampParser(value);
        return parsed instanceof Date ? parsed.toISOString() : String(parsed);
      };
    }
    return pg.types.getTypeParser(oid, format);
  }) as CustomTypesConfig['getTypeParser'],
};

const ACTOR_COLUMNS = 'id, name, enabled, limits, created_at, updated_at';
const TOKEN_COLUMNS = 'id, actor_id, hint, created_at, expires_at, revoked_at';
const EVENT_COLUMN_LIST = EVENT_COLUMNS.map(([, column]) => column).join(', ');

interface ActorRow {
  id: string;
  name: string;
  enabled: boolean;
  limits: FeatureLimits;
  created_at: string;
  updated_at: string;
}

type EventRow = Record<string, unknown>;

function newId(prefix: string): string {
  return prefix + randomBytes(8).toString('hex');
}

function toActor(row: ActorRow): Actor {
  return {
    id: row.id,
    name: row.name,
    enabled: row.enabled,
    limits: row.limits,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function toEvent(row: EventRow): UsageEvent {
  const event: Record<string, unknown> = {};
  for (const [field, column] of EVENT_COLUMNS) event[field] = row[column];
  return event as unknown as UsageEvent;
}

/**
 * Returns the event's values in column order. Postgres text cannot hold NUL characters, which a
 * caller can put in a header, so they are dropped.
 */
function postgresEventValues(event: UsageEvent): EventValue[] {
  const values = eventValues(event);
  for (let index = 0; index < values.length; index++) {
    const value = values[index];
    if (typeof value === 'string' && value.includes('\u0000')) values[index] = value.replaceAll('\u0000', '');
  }
  return values;
}

/** Returns `host:port/database` from a connection URL, leaving out the user and password. */
export function describePostgresUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.hostname}:${parsed.port || '5432'}${parsed.pathname}`;
  } catch {
    return 'the configured database';
  }
}

function buildPoolConfig(url: string, options: PostgresStoreOptions, schema: string | undefined): PoolConfig {
  const statementTimeoutMs = options.statementTimeoutMs ?? DEFAULT_STATEMENT_TIMEOUT_MS;
  return {
    connectionString: url,
    max: options.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
    connectionTimeoutMillis: options.connectionTimeoutMs ?? DEFAULT_CONNECTION_TIMEOUT_MS,
    statement_timeout: statementTimeoutMs,
    query_timeout: statementTimeoutMs + CLIENT_TIMEOUT_MARGIN_MS,
    application_name: options.applicationName ?? 'llm-proxy',
    keepAlive: true,
    types: TYPE_PARSERS,
    // NOTE: options given in the URL itself (`?options=...`) take precedence over this one in pg 8.
    options: schema === undefined ? undefined : `-c search_path=${schema}`,
  };
}

/**
 * A Store on a pg connection pool, shared by any number of gateway replicas. Timestamps are
 * timestamptz columns but are returned as ISO 8601 strings, like SqliteStore returns them.
 */
export class PostgresStore implements Store {
  private closed = false;

  constructor(private readonly pool: Pool) {}

  private async query<R extends QueryResultRow>(text: string, values?: unknown[]): Promise<R[]> {
    const result = await this.pool.query<R>(text, values);
    return result.rows;
  }

  /** Runs `work` in one transaction on one pooled connection. */
  private async transaction<T>(work: (client: PoolClient) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    // pg emits 'error' on a checked-out client whose connection fails, which would crash the
    // process without a listener. The failed query rejects as well, so the listener only records it.
    let connectionError: Error | undefined;
    const onError = (error: Error) => {
      connectionError = error;
    };
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      const result = await work(client);
      await client.query('COMMIT');
      return result;
    } catch (error) {
      connectionError ??= await client.query('ROLLBACK').then(
        () => undefined,
        (rollbackError: Error) => rollbackError,
      );
      throw error;
    } finally {
      client.off('error', onError);
      // Passing an error destroys the connection instead of returning it to the pool.
      client.release(connectionError);
    }
  }

  /** Returns the versions recorded in the migrations table, in ascending order. */
  async appliedMigrations(): Promise<number[]> {
    const rows = await this.query<{ version: number }>(`SELECT version FROM ${MIGRATIONS_TABLE} ORDER BY version`);
    return rows.map((row) => row.version);
  }

  async createActor(input: NewActor): Promise<Actor> {
    const name = validateActorName(input.name);
    const now = new Date().toISOString();
    const rows = await this.query<ActorRow>(
      `INSERT INTO actors (id, name, enabled, limits, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)
       RETURNING ${ACTOR_COLUMNS}`,
      [newId('act_'), name, input.enabled ?? true, JSON.stringify(input.limits ?? {}), now],
    );
    return toActor(rows[0]);
  }

  async getActor(id: string): Promise<Actor | undefined> {
    const rows = await this.query<ActorRow>(`SELECT ${ACTOR_COLUMNS} FROM actors WHERE id = $1`, [id]);
    return rows.length === 0 ? undefined : toActor(rows[0]);
  }

  /** Returns every actor, oldest first. */
  async listActors(): Promise<Actor[]> {
    const rows = await this.query<ActorRow>(`SELECT ${ACTOR_COLUMNS} FROM actors ORDER BY created_at, seq`);
    return rows.map(toActor);
  }

  /** Changes the patched fields in one statement and sets `updatedAt` to now. */
  async updateActor(id: string, patch: ActorPatch): Promise<Actor | undefined> {
    const name = patch.name === undefined ? null : validateActorName(patch.name);
    const limits = patch.limits === undefined ? null : JSON.stringify(patch.limits);
    const rows = await this.query<ActorRow>(
      `UPDATE actors
       SET name = COALESCE($2, name), enabled = COALESCE($3, enabled), limits = COALESCE($4::jsonb, limits), updated_at = $5
       WHERE id = $1
       RETURNING ${ACTOR_COLUMNS}`,
      [id, name, patch.enabled ?? null, limits, new Date().toISOString()],
    );
    return rows.length === 0 ? undefined : toActor(rows[0]);
  }

  /** Deletes the actor and, by the foreign key's cascade, its tokens. Usage events are kept. */
  async deleteActor(id: string): Promise<boolean> {
    const result = await this.pool.query('DELETE FROM actors WHERE id = $1', [id]);
    return (result.rowCount ?? 0) > 0;
  }

  /** Throws when the actor does not exist, and a unique violation when the hash is already stored. */
  async createToken(actorId: string, tokenHash: string, hint: string, expiresAt: string | null): Promise<TokenRecord> {
    try {
      const rows = await this.query<TokenRow>(
        `INSERT INTO tokens (id, actor_id, token_hash, hint, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING ${TOKEN_COLUMNS}`,
        [newId('tok_'), actorId, tokenHash, hint, new Date().toISOString(), expiresAt],
      );
      return tokenFromRow(rows[0]);
    } catch (error) {
      if ((error as { code?: unknown }).code === FOREIGN_KEY_VIOLATION) {
        throw new Error(`actor ${actorId} not found`, { cause: error });
      }
      throw error;
    }
  }

  /**
   * Sets `revokedAt` to now and returns the token. A token that is already revoked keeps its
   * original `revokedAt` and is not written, so the change version stays. Returns undefined when
   * no token has this id.
   */
  async revokeToken(id: string): Promise<TokenRecord | undefined> {
    // The outer SELECT reads the snapshot from before the UPDATE, which is the stored row
    // whenever the UPDATE matched nothing.
    const rows = await this.query<TokenRow>(
      `WITH revoked AS (
         UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING ${TOKEN_COLUMNS}
       )
       SELECT ${TOKEN_COLUMNS} FROM revoked
       UNION ALL
       SELECT ${TOKEN_COLUMNS} FROM tokens WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM revoked)`,
      [id, new Date().toISOString()],
    );
    return rows.length === 0 ? undefined : tokenFromRow(rows[0]);
  }

  /** Returns the actor's tokens, oldest first, including revoked and expired ones. */
  async listTokens(actorId: string): Promise<TokenRecord[]> {
    const rows = await this.query<TokenRow>(`SELECT ${TOKEN_COLUMNS} FROM tokens WHERE actor_id = $1 ORDER BY created_at, seq`, [
      actorId,
    ]);
    return rows.map(tokenFromRow);
  }

  /** Returns revoked and expired tokens too, so that the caller can report why a token fails. */
  async findToken(tokenHash: string): Promise<TokenLookup | undefined> {
    const rows = await this.query<TokenRow & { a_name: string; a_enabled: boolean; a_limits: FeatureLimits; a_created_at: string; a_updated_at: string }>(
      `SELECT t.id, t.actor_id, t.hint, t.created_at, t.expires_at, t.revoked_at,
              a.name AS a_name, a.enabled AS a_enabled, a.limits AS a_limits,
              a.created_at AS a_created_at, a.updated_at AS a_updated_at
       FROM tokens t JOIN actors a ON a.id = t.actor_id
       WHERE t.token_hash = $1`,
      [tokenHash],
    );
    if (rows.length === 0) return undefined;
    const row = rows[0];
    const actor = toActor({
      id: row.actor_id,
      name: row.a_name,
      enabled: row.a_enabled,
      limits: row.a_limits,
      created_at: row.a_created_at,
      updated_at: row.a_updated_at,
    });
    return { token: tokenFromRow(row), actor };
  }

  /**
   * Returns the counter that a trigger bumps on every committed change to actors or tokens, made
   * through any store instance or by any other client of the database. One query on a one-row table.
   */
  async changeVersion(): Promise<number> {
    const rows = await this.query<{ version: number }>('SELECT version FROM llm_proxy_change_version');
    return rows[0].version;
  }

  /**
   * Inserts the batch with one multi-row INSERT per 1000 events, in one transaction when there
   * is more than one. Events whose id is already stored are skipped.
   */
  async insertEvents(events: UsageEvent[]): Promise<void> {
    await this.insertEventsCounted(events);
  }

  /** Inserts like insertEvents and returns how many events were new. */
  async insertEventsCounted(events: UsageEvent[]): Promise<number> {
    return this.insertRows('usage_events', EVENT_COLUMN_LIST, events.map(postgresEventValues), 'ON CONFLICT (id) DO NOTHING');
  }

  /**
   * Copies actors with their ids and timestamps, for moving data from another store. Actors whose
   * id is already stored are skipped. Returns how many were inserted.
   */
  async importActors(actors: Actor[]): Promise<number> {
    const rows = actors.map((actor) => [
      actor.id,
      actor.name,
      actor.enabled,
      JSON.stringify(actor.limits),
      actor.createdAt,
      actor.updatedAt,
    ]);
    return this.insertRows('actors', ACTOR_COLUMNS, rows, 'ON CONFLICT (id) DO NOTHING');
  }

  /**
   * Copies tokens with their ids, hashes and timestamps. A token whose id or hash is already
   * stored is skipped. Throws when a token's actor is missing. Returns how many were inserted.
   */
  async importTokens(tokens: StoredToken[]): Promise<number> {
    const rows = tokens.map((token) => [
      token.id,
      token.actorId,
      token.tokenHash,
      token.hint,
      token.createdAt,
      token.expiresAt,
      token.revokedAt,
    ]);
    return this.insertRows('tokens', 'id, actor_id, token_hash, hint, created_at, expires_at, revoked_at', rows, 'ON CONFLICT DO NOTHING');
  }

  /** Runs multi-row INSERTs of at most MAX_ROWS_PER_INSERT rows and returns the inserted count. */
  private async insertRows(table: string, columns: string, rows: unknown[][], conflict: string): Promise<number> {
    if (rows.length === 0) return 0;
    const statements: QueryConfig[] = [];
    for (let start = 0; start < rows.length; start += MAX_ROWS_PER_INSERT) {
      const chunk = rows.slice(start, start + MAX_ROWS_PER_INSERT);
      const values: unknown[] = [];
      const tuples = chunk.map((row) => {
        const placeholders = row.map((value) => {
          values.push(value);
          return `$${values.length}`;
        });
        return `(${placeholders.join(', ')})`;
      });
      statements.push({ text: `INSERT INTO ${table} (${columns}) VALUES ${tuples.join(', ')} ${conflict}`, values });
    }

    if (statements.length === 1) {
      const result = await this.pool.query(statements[0]);
      return result.rowCount ?? 0;
    }
    return this.transaction(async (client) => {
      let inserted = 0;
      for (const statement of statements) inserted += (await client.query(statement)).rowCount ?? 0;
      return inserted;
    });
  }

  /** Returns at most `limit` events, newest first, and in reverse insertion order for equal timestamps. */
  async queryEvents(query: UsageQuery): Promise<UsageEvent[]> {
    if (!Number.isInteger(query.limit) || query.limit < 1) {
      throw new RangeError(`invalid usage query limit ${query.limit}; expected a whole number of at least 1`);
    }
    const conditions: string[] = [];
    const values: unknown[] = [];
    if (query.actorId !== undefined) {
      values.push(query.actorId);
      conditions.push(`actor_id = $${values.length}`);
    }
    if (query.since !== undefined) {
      values.push(query.since);
      conditions.push(`timestamp >= $${values.length}`);
    }
    values.push(query.limit);
    const where = conditions.length === 0 ? '' : `WHERE ${conditions.join(' AND ')}`;
    const rows = await this.query<EventRow>(
      `SELECT ${EVENT_COLUMN_LIST} FROM usage_events ${where} ORDER BY timestamp DESC, seq DESC LIMIT $${values.length}`,
      values,
    );
    return rows.map(toEvent);
  }

  /** Throws when no connection can be opened, or `SELECT 1` takes longer than 1.5 s. */
  async ping(): Promise<void> {
    const statement = { text: 'SELECT 1', query_timeout: PING_TIMEOUT_MS } as QueryConfig;
    await this.pool.query(statement);
  }

  /** Closes every pooled connection. Calling it again does nothing. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.end();
  }
}

/**
 * Connects to Postgres, applies pending migrations and returns the store. The migrations run on a
 * separate connection with a longer timeout than request-path queries get.
 */
export async function openPostgresStore(url: string, options: PostgresStoreOptions = {}): Promise<PostgresStore> {
  const schema = options.schema === undefined ? undefined : validateSchemaName(options.schema);
  const config = buildPoolConfig(url, options, schema);

  const migrationClient = new pg.Client({
    ...config,
    statement_timeout: MIGRATION_TIMEOUT_MS,
    query_timeout: MIGRATION_TIMEOUT_MS + CLIENT_TIMEOUT_MARGIN_MS,
  });
  // The failed query rejects too, so the listener only stops pg from crashing the process.
  migrationClient.on('error', () => undefined);
  try {
    await migrationClient.connect();
    await migrate(migrationClient, schema);
  } catch (error) {
    throw new Error(`failed to open the Postgres store at ${describePostgresUrl(url)}: ${(error as Error).message}`, { cause: error });
  } finally {
    await migrationClient.end().catch(() => undefined);
  }

  const pool = new pg.Pool(config);
  // An idle connection fails when the server restarts or the network drops. Without this
  // listener the pool's 'error' event would crash the process. The pool opens a new connection
  // for the next query.
  pool.on('error', (error) => {
    options.logger?.warn({ err: error, database: describePostgresUrl(url) }, 'idle Postgres connection failed, the pool will open a new one');
  });
  return new PostgresStore(pool);
}
