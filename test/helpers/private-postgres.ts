/**
 * A throwaway Postgres server for tests that stop and restart the database: initdb into a
 * temporary directory, trust authentication, listening on a free loopback port only.
 *
 * initdb and postgres refuse to run as root. When the tests run as root, as in CI containers,
 * every server binary runs as the `postgres` OS user through `runuser`, and the temporary
 * directory is handed to that user.
 */
import { execFile, execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

const POSTGRES_LIB_DIR = '/usr/lib/postgresql';
const OS_USER = 'postgres';
const COMMAND_TIMEOUT_MS = 60_000;
const START_ATTEMPTS = 3;

export interface PrivatePostgres {
  /** `postgres://postgres@127.0.0.1:<port>/postgres` */
  readonly url: string;
  readonly port: number;
  /** Starts the server again on the same data directory and port. */
  start(): Promise<void>;
  /** Stops the server with a fast shutdown: open connections are terminated. */
  stop(): Promise<void>;
  /** Stops the server if it runs and deletes the data directory. Calling it again does nothing. */
  destroy(): Promise<void>;
}

/** Returns the bin directory of the newest Postgres under /usr/lib/postgresql, or undefined. */
export function findPostgresBinDir(): string | undefined {
  if (!existsSync(POSTGRES_LIB_DIR)) return undefined;
  const versions = readdirSync(POSTGRES_LIB_DIR)
    .filter((entry) => existsSync(join(POSTGRES_LIB_DIR, entry, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return versions.length === 0 ? undefined : join(POSTGRES_LIB_DIR, versions[0], 'bin');
}

function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** Returns the command and arguments that run a server binary, as the postgres user when root. */
function asServerUser(binary: string, args: string[]): [string, string[]] {
  return isRoot() ? ['runuser', ['-u', OS_USER, '--', binary, ...args]] : [binary, args];
}

async function freeLoopbackPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('could not read the port of a loopback socket');
  return address.port;
}

/** Servers not yet destroyed, stopped at process exit if a test forgot or crashed. */
const running = new Set<{ stopNow(): void }>();
process.once('exit', () => {
  for (const server of running) server.stopNow();
});

/**
 * Creates a cluster with initdb and starts it. Throws with initdb's or pg_ctl's output when the
 * Postgres binaries are missing or the server does not start.
 */
export async function startPrivatePostgres(): Promise<PrivatePostgres> {
  const binDir = findPostgresBinDir();
  if (binDir === undefined) throw new Error(`no Postgres server found: expected ${POSTGRES_LIB_DIR}/<version>/bin/initdb`);

  const root = mkdtempSync(join(tmpdir(), 'llm-proxy-pg-'));
  if (isRoot()) chownSync(root, Number(execFileSync('id', ['-u', OS_USER]).toString()), Number(execFileSync('id', ['-g', OS_USER]).toString()));
  const dataDir = join(root, 'data');
  const logFile = join(root, 'server.log');
  const pgCtl = join(binDir, 'pg_ctl');

  const run = async (binary: string, args: string[]): Promise<void> => {
    const [command, commandArgs] = asServerUser(binary, args);
    try {
      await execFileAsync(command, commandArgs, { timeout: COMMAND_TIMEOUT_MS });
    } catch (error) {
      const { stdout, stderr } = error as { stdout?: string; stderr?: string };
      const log = existsSync(logFile) ? readFileSync(logFile, 'utf8').slice(-2000) : '';
      throw new Error(`${binary} ${args.join(' ')} failed: ${stderr ?? ''}${stdout ?? ''}${log}`, { cause: error });
    }
  };

  const handle = { destroyed: false, started: false, port: 0 };
  const stopNow = (): void => {
    if (!handle.started) return;
    const [command, args] = asServerUser(pgCtl, ['-D', dataDir, '-m', 'immediate', '-w', 'stop']);
    try {
      execFileSync(command, args, { timeout: COMMAND_TIMEOUT_MS, stdio: 'ignore' });
    } catch {
      // The server may already be down.
    }
    handle.started = false;
  };
  const cleanup = { stopNow: () => { stopNow(); rmSync(root, { recursive: true, force: true }); } };
  running.add(cleanup);

  const start = async (): Promise<void> => {
    // -h and -k keep the server on loopback and its socket inside the temporary directory.
    // -F turns off fsync, which a throwaway cluster does not need.
    const serverOptions = `-p ${handle.port} -h 127.0.0.1 -k ${root} -F`;
    await run(pgCtl, ['-D', dataDir, '-l', logFile, '-w', '-t', '30', '-o', serverOptions, 'start']);
    handle.started = true;
  };

  try {
    await run(join(binDir, 'initdb'), ['-D', dataDir, '-A', 'trust', '-U', OS_USER, '-E', 'UTF8', '--locale=C', '--no-sync']);
    // Another process can take the free port between the check and the start, so retry with a new one.
    for (let attempt = 1; ; attempt++) {
      handle.port = await freeLoopbackPort();
      try {
        await start();
        break;
      } catch (error) {
        if (attempt >= START_ATTEMPTS) throw error;
      }
    }
  } catch (error) {
    cleanup.stopNow();
    running.delete(cleanup);
    throw error;
  }

  return {
    url: `postgres://${OS_USER}@127.0.0.1:${handle.port}/postgres`,
    port: handle.port,
    start,
    async stop() {
      await run(pgCtl, ['-D', dataDir, '-m', 'fast', '-w', '-t', '30', 'stop']);
      handle.started = false;
    },
    async destroy() {
      if (handle.destroyed) return;
      handle.destroyed = true;
      cleanup.stopNow();
      running.delete(cleanup);
    },
  };
}
