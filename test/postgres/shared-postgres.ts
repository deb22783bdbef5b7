/**
 * Access to the shared test Postgres (trust authentication, database `test`). Each test file
 * works in its own schema and drops it afterwards, so files can run in parallel.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { DestinationStream } from 'pino';
import { createLogger, type Logger } from '../../src/logging/logger.ts';
import { describePostgresUrl } from '../../src/storage/postgres.ts';

export const SHARED_POSTGRES_URL = process.env.LLM_PROXY_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/**
 * Returns undefined when the shared Postgres accepts a query, otherwise the reason to skip, which
 * it also prints. Throws instead when CI is set, because CI must run these tests.
 */
export async function sharedPostgresSkipReason(): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: SHARED_POSTGRES_URL, connectionTimeoutMillis: 2000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('SELECT 1');
    return undefined;
  } catch (error) {
    const reason = `the test Postgres at ${describePostgresUrl(SHARED_POSTGRES_URL)} is unreachable (${(error as Error).message}); start it or set LLM_PROXY_TEST_DATABASE_URL`;
    if (process.env.CI) throw new Error(`${reason}. CI requires it`, { cause: error });
    console.log(`# skipping Postgres tests: ${reason}`);
    return reason;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Returns a schema name that no other test run uses, such as `llmp_test_contract_4242_a1b2c3`. */
export function uniqueSchemaName(label: string): string {
  return `llmp_test_${label}_${process.pid}_${randomBytes(3).toString('hex')}`;
}

/** Runs `work` with a plain client of the shared Postgres whose search_path is `schema`. */
export async function withSharedClient<T>(schema: string | undefined, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({
    connectionString: SHARED_POSTGRES_URL,
    connectionTimeoutMillis: 2000,
    options: schema === undefined ? undefined : `-c search_path=${schema}`,
  });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

export async function dropSchema(schema: string): Promise<void> {
  await withSharedClient(undefined, (client) => client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`));
}

/** Creates a pino logger that keeps its lines in `lines` as parsed objects, for assertions on logs. */
export function capturingLogger(level = 'info'): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const destination: DestinationStream = {
    write(line: string) {
      lines.push(JSON.parse(line) as Record<string, unknown>);
    },
  };
  return { logger: createLogger(level, destination), lines };
}
