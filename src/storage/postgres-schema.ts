import type { ClientBase } from 'pg';

/** Table that records which migrations a database has applied. */
export const MIGRATIONS_TABLE = 'llm_proxy_schema_migrations';

/**
 * Key of the transaction-level advisory lock taken before migrating. Advisory locks are shared by
 * the whole database, so this one serializes migrations of every schema in it. The value is the
 * ASCII of "llmproxy" read as a 64-bit integer, chosen to be unlikely to collide with other users.
 */
const MIGRATION_LOCK_KEY = '7812739783304640633';

/**
 * Upper bound for the migration transaction, including the wait for another replica's migration.
 * Request-path queries get the much shorter pool statement timeout instead.
 */
export const MIGRATION_TIMEOUT_MS = 10 * 60_000;

interface Migration {
  version: number;
  description: string;
  sql: string;
}

/**
 * Schema changes in order. Each runs once, inside the transaction that records its version in
 * MIGRATIONS_TABLE. Append new versions and never edit an applied one.
 *
 * Every table has a `seq` identity column, which breaks ties between rows with the same timestamp
 * in insertion order, as SQLite's rowid does for the SQLite store.
 *
 * `llm_proxy_change_version` is one row that a trigger bumps on every inserted, updated or deleted
 * actor or token row, whichever process made the change. The counter is an ordinary row rather than
 * a sequence, because a sequence advances before the change commits and a reader could then see the
 * new number while still reading the old rows.
 */
const MIGRATIONS: Migration[] = [
  {
    version: 1,
    description: 'actors, tokens, usage events and the change version',
    sql: `
      CREATE TABLE actors (
        id text PRIMARY KEY,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        name text NOT NULL,
        enabled boolean NOT NULL DEFAULT true,
        limits jsonb NOT NULL DEFAULT '{}',
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL
      );
      CREATE INDEX actors_created_at ON actors (created_at, seq);

      CREATE TABLE tokens (
        id text PRIMARY KEY,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        actor_id text NOT NULL REFERENCES actors (id) ON DELETE CASCADE,
        token_hash text NOT NULL UNIQUE,
        hint text NOT NULL,
        created_at timestamptz NOT NULL,
        expires_at timestamptz,
        revoked_at timestamptz
      );
      CREATE INDEX tokens_actor_id ON tokens (actor_id, created_at, seq);

      CREATE TABLE usage_events (
        id text PRIMARY KEY,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        timestamp timestamptz NOT NULL,
        request_id text NOT NULL,
        actor_id text NOT NULL,
        actor_name text NOT NULL,
        feature text,
        provider text,
        route text NOT NULL,
        requested_model text,
        upstream_model text,
        stream boolean NOT NULL,
        upstream_status integer,
        status integer NOT NULL,
        outcome text NOT NULL,
        error_code text,
        input_tokens bigint,
        output_tokens bigint,
        cache_creation_input_tokens bigint,
        cache_read_input_tokens bigint,
        reasoning_tokens bigint,
        tokens_estimated boolean NOT NULL,
        duration_ms double precision NOT NULL,
        upstream_ttfb_ms double precision,
        upstream_duration_ms double precision,
        overhead_ms double precision,
        prompt_chars bigint,
        completion_chars bigint,
        client_ip text,
        user_agent text,
        sg_actor_uid text,
        sg_actor_anonymous_uid text
      );
      -- Both indexes match the ORDER BY of queryEvents, so a LIMIT query reads only the rows it returns.
      CREATE INDEX usage_events_actor_timestamp ON usage_events (actor_id, timestamp DESC, seq DESC);
      CREATE INDEX usage_events_timestamp ON usage_events (timestamp DESC, seq DESC);

      CREATE TABLE llm_proxy_change_version (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        version bigint NOT NULL
      );
      INSERT INTO llm_proxy_change_version (singleton, version) VALUES (true, 0);

      -- SET search_path FROM CURRENT pins the schema that was current at creation, so the trigger
      -- updates this schema's counter whatever search_path the writing session uses.
      CREATE FUNCTION llm_proxy_bump_change_version() RETURNS trigger
        LANGUAGE plpgsql
        SET search_path FROM CURRENT
        AS $$
        BEGIN
          UPDATE llm_proxy_change_version SET version = version + 1;
          RETURN NULL;
        END
        $$;

      -- Row-level triggers fire only for rows that changed, so an UPDATE that matches nothing leaves
      -- the version alone.
      CREATE TRIGGER actors_change_version AFTER INSERT OR UPDATE OR DELETE ON actors
        FOR EACH ROW EXECUTE FUNCTION llm_proxy_bump_change_version();
      CREATE TRIGGER tokens_change_version AFTER INSERT OR UPDATE OR DELETE ON tokens
        FOR EACH ROW EXECUTE FUNCTION llm_proxy_bump_change_version();
    `,
  },
];

/** The newest schema version this build can migrate to. */
export const LATEST_SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1].version;

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * Returns the schema name unchanged. Throws RangeError unless it is a lower-case, unquoted
 * Postgres identifier, so that it can be used in SQL and in connection options without quoting.
 */
export function validateSchemaName(schema: string): string {
  if (!SCHEMA_NAME.test(schema)) {
    throw new RangeError(
      `invalid Postgres schema name ${JSON.stringify(schema)}: expected 1 to 63 lower-case letters, digits and underscores, not starting with a digit`,
    );
  }
  return schema;
}

/**
 * Applies the pending migrations in one transaction on `client`. The transaction first takes an
 * advisory lock, so replicas that start together wait for each other, and each migration is
 * applied and recorded exactly once. Creates `schema` first when given. Throws when the database
 * has a newer schema version than this build knows.
 */
export async function migrate(client: ClientBase, schema: string | undefined): Promise<void> {
  await client.query('BEGIN');
  try {
    await client.query(`SET LOCAL statement_timeout = ${MIGRATION_TIMEOUT_MS}`);
    await client.query(`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK_KEY})`);
    // Created under the lock: two sessions running CREATE SCHEMA IF NOT EXISTS at once can
    // still fail with a unique violation.
    if (schema !== undefined) await client.query(`CREATE SCHEMA IF NOT EXISTS ${validateSchemaName(schema)}`);
    await client.query(`CREATE TABLE IF NOT EXISTS ${MIGRATIONS_TABLE} (
      version integer PRIMARY KEY,
      description text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`);

    const result = await client.query<{ version: number | null }>(`SELECT max(version) AS version FROM ${MIGRATIONS_TABLE}`);
    const current = result.rows[0].version ?? 0;
    if (current > LATEST_SCHEMA_VERSION) {
      throw new Error(
        `the Postgres schema has version ${current}, newer than the ${LATEST_SCHEMA_VERSION} this llm-proxy supports; upgrade llm-proxy`,
      );
    }
    for (const migration of MIGRATIONS) {
      if (migration.version <= current) continue;
      await client.query(migration.sql);
      await client.query(`INSERT INTO ${MIGRATIONS_TABLE} (version, description) VALUES ($1, $2)`, [
        migration.version,
        migration.description,
      ]);
    }
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
}
