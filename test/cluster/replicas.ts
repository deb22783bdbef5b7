/**
 * Gateway replicas as real processes (`node --import tsx src/main.ts serve`) for the scale-out
 * tests: several processes that share Redis and Postgres, each on its own loopback port and with
 * its own data directory. Each replica's stdout and stderr are kept, and printed when a test fails.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, afterEach, beforeEach } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { describePostgresUrl } from '../../src/storage/postgres.ts';
import { ADMIN_TOKEN, ANTHROPIC_KEY, OPENAI_KEY } from '../helpers/gateway.ts';
import { findPostgresBinDir } from '../helpers/private-postgres.ts';
import { waitForPong } from '../helpers/private-redis.ts';
import type { UpstreamServer } from '../helpers/upstream-server.ts';
import { SHARED_POSTGRES_URL } from '../postgres/shared-postgres.ts';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** A replica that has not logged `gateway listening` within this time fails to start. */
const START_TIMEOUT_MS = 30_000;
/** After SIGTERM in clean-up, a replica still running after this time gets SIGKILL. */
const STOP_TIMEOUT_MS = 3000;
/** Lines of each replica's output printed after a failed test. */
const PRINTED_LINES = 60;

export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Replica {
  /** Position in the set, counted from 0 in start order. */
  readonly index: number;
  /** Base URL such as `http://127.0.0.1:40123`, read from the `gateway listening` log line. */
  readonly url: string;
  readonly port: number;
  readonly pid: number;
  readonly dataDir: string;
  readonly child: ChildProcess;
  /** Resolves once the process has exited. */
  readonly exited: Promise<ProcessExit>;
  /** Standard output and standard error so far, in arrival order. */
  output(): string;
  /** The JSON lines of standard output so far, parsed; other lines are left out. */
  logLines(): Record<string, unknown>[];
  isRunning(): boolean;
  kill(signal: NodeJS.Signals): void;
}

/** Live children of this test process, killed if the test process exits without clean-up. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Environment that points a replica's providers at the upstream test server. */
export function upstreamEnv(upstream: UpstreamServer): Record<string, string> {
  return {
    LLM_PROXY_ANTHROPIC_API_KEY: ANTHROPIC_KEY,
    LLM_PROXY_ANTHROPIC_BASE_URL: upstream.url,
    LLM_PROXY_OPENAI_API_KEY: OPENAI_KEY,
    LLM_PROXY_OPENAI_BASE_URL: `${upstream.url}/v1`,
  };
}

/**
 * Starts and stops gateway processes. Replicas started by one set share nothing but the
 * environment given to `start`: each gets its own port (LLM_PROXY_PORT=0) and data directory.
 */
export class ReplicaSet {
  readonly replicas: Replica[] = [];
  private readonly dataDirs: string[] = [];
  /** Replicas that were running when the current test started, and how many existed then. */
  private runningAtTestStart = new Set<Replica>();
  private countAtTestStart = 0;

  get urls(): string[] {
    return this.replicas.map((replica) => replica.url);
  }

  /**
   * Starts `count` replicas in parallel and resolves once each has logged `gateway listening`.
   * Rejects with the output of a replica that exits or does not listen within 30 s.
   */
  async start(count: number, env: Record<string, string>): Promise<Replica[]> {
    const first = this.replicas.length;
    const started = await Promise.allSettled(Array.from({ length: count }, (_, i) => this.startOne(first + i, env)));
    const failure = started.find((result): result is PromiseRejectedResult => result.status === 'rejected');
    const replicas = started.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
    this.replicas.push(...replicas);
    this.replicas.sort((a, b) => a.index - b.index);
    if (failure !== undefined) throw failure.reason;
    return replicas.sort((a, b) => a.index - b.index);
  }

  private startOne(index: number, env: Record<string, string>): Promise<Replica> {
    const dataDir = mkdtempSync(join(tmpdir(), `llmp-replica-${index}-`));
    this.dataDirs.push(dataDir);
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'serve'], {
      cwd: REPO_ROOT,
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        ...(process.env.TMPDIR === undefined ? {} : { TMPDIR: process.env.TMPDIR }),
        LLM_PROXY_HOST: '127.0.0.1',
        LLM_PROXY_PORT: '0',
        LLM_PROXY_LOG_LEVEL: 'info',
        LLM_PROXY_ADMIN_TOKEN: ADMIN_TOKEN,
        LLM_PROXY_DATA_DIR: dataDir,
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    running.add(child);

    let output = '';
    let stdoutRest = '';
    const lines: Record<string, unknown>[] = [];
    let onLine: ((line: Record<string, unknown>) => void) | undefined;
    child.stdout?.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      output += text;
      const parts = (stdoutRest + text).split('\n');
      stdoutRest = parts.pop() ?? '';
      for (const part of parts) {
        const line = parseJsonLine(part);
        if (line === undefined) continue;
        lines.push(line);
        onLine?.(line);
      }
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
    });

    let spawnError: Error | undefined;
    const exited = new Promise<ProcessExit>((resolveExit) => {
      child.once('exit', (code, signal) => {
        running.delete(child);
        resolveExit({ code, signal });
      });
      child.once('error', (error) => {
        spawnError = error;
        running.delete(child);
        resolveExit({ code: null, signal: null });
      });
    });

    return new Promise<Replica>((resolveStart, rejectStart) => {
      let listening = false;
      const fail = (problem: string): void => {
        if (listening) return;
        clearTimeout(timer);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        rejectStart(new Error(`replica ${index} ${problem}${spawnError === undefined ? '' : ` (${spawnError.message})`}. Its output:\n${output}`));
      };
      const timer = setTimeout(() => fail(`did not log "gateway listening" within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);
      void exited.then((exit) => fail(`exited before listening with code ${exit.code} and signal ${exit.signal}`));
      onLine = (line) => {
        if (line.msg !== 'gateway listening' || typeof line.url !== 'string') return;
        onLine = undefined;
        listening = true;
        clearTimeout(timer);
        const url = line.url;
        resolveStart({
          index,
          url,
          port: Number(new URL(url).port),
          pid: child.pid as number,
          dataDir,
          child,
          exited,
          output: () => output,
          logLines: () => [...lines],
          isRunning: () => child.exitCode === null && child.signalCode === null,
          kill: (signal) => void child.kill(signal),
        });
      };
    });
  }

  /** Remembers which replicas the next test starts with, so that `printTestOutput` can leave out the others. */
  markTestStart(): void {
    this.runningAtTestStart = new Set(this.replicas.filter((replica) => replica.isRunning()));
    this.countAtTestStart = this.replicas.length;
  }

  /** Prints the output of the replicas that ran during the current test. */
  printTestOutput(reason: string): void {
    this.printOutput(reason, this.replicas.filter((replica) => replica.index >= this.countAtTestStart || this.runningAtTestStart.has(replica)));
  }

  /** Runs `work`, such as a `before` hook's scenario, and prints every replica's output if it throws. */
  async printOutputOnError<T>(label: string, work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      this.printOutput(`after ${label} failed`);
      throw error;
    }
  }

  /** Prints the last lines of each replica's output to standard error. */
  printOutput(reason: string, replicas: Replica[] = this.replicas): void {
    for (const replica of replicas) {
      const lines = replica.output().split('\n');
      const shown = lines.slice(-PRINTED_LINES).join('\n');
      const skipped = Math.max(0, lines.length - PRINTED_LINES);
      process.stderr.write(`\n--- replica ${replica.index} (pid ${replica.pid}, ${replica.url}) ${reason}; last ${PRINTED_LINES} lines, ${skipped} earlier lines left out ---\n${shown}\n`);
    }
  }

  /** Sends SIGTERM to every running replica, SIGKILL to those still running after 3 s, and deletes the data directories. */
  async stopAll(): Promise<void> {
    const live = this.replicas.filter((replica) => replica.isRunning());
    for (const replica of live) {
      // A stopped process acts on SIGTERM only once it runs again.
      replica.kill('SIGCONT');
      replica.kill('SIGTERM');
    }
    await Promise.all(
      live.map(async (replica) => {
        const timedOut = await Promise.race([replica.exited.then(() => false), sleep(STOP_TIMEOUT_MS, true, { ref: false })]);
        if (timedOut) {
          replica.kill('SIGKILL');
          await replica.exited;
        }
      }),
    );
    for (const dir of this.dataDirs) rmSync(dir, { recursive: true, force: true });
    this.dataDirs.length = 0;
  }
}

/**
 * Creates a ReplicaSet for the enclosing `describe`. After each failed test it prints the output of
 * the replicas that ran during that test, and after the last test it stops them all. Call it
 * before registering other `after` hooks, because hooks run in registration order and the
 * replicas must stop before the stores they use are removed.
 */
export function useReplicaSet(): ReplicaSet {
  const set = new ReplicaSet();
  beforeEach(() => set.markTestStart());
  afterEach((t) => {
    // Node 20.20 sets `passed` on the test context before afterEach runs, but @types/node 20 does not declare it.
    if ((t as { passed?: boolean }).passed === false) set.printTestOutput(`after the failed test "${t.name}"`);
  });
  after(() => set.stopAll());
  return set;
}

function parseJsonLine(text: string): Record<string, unknown> | undefined {
  if (!text.startsWith('{')) return undefined;
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

/** A service the cluster tests need. */
export type Requirement = 'shared-redis' | 'shared-postgres' | 'redis-server' | 'postgres-server';

/**
 * Returns undefined when every required service is reachable (or installed, for the private
 * servers), otherwise the reason to skip, which it also prints. Throws instead when CI is set,
 * because CI must run these tests.
 */
export async function clusterSkipReason(...requirements: Requirement[]): Promise<string | undefined> {
  const problems: string[] = [];
  for (const requirement of requirements) {
    const problem = await checkRequirement(requirement);
    if (problem !== undefined) problems.push(problem);
  }
  if (problems.length === 0) return undefined;
  const reason = problems.join('; ');
  if (process.env.CI) throw new Error(`${reason}. CI is set, so the cluster tests must run`);
  console.log(`# skipping cluster tests: ${reason}`);
  return reason;
}

async function checkRequirement(requirement: Requirement): Promise<string | undefined> {
  switch (requirement) {
    case 'shared-redis':
      return (await waitForPong(6379, Date.now() + 1000)) ? undefined : 'no Redis replied to PING at 127.0.0.1:6379';
    case 'shared-postgres':
      return sharedPostgresProblem();
    case 'redis-server':
      return (await commandExists('redis-server')) ? undefined : 'redis-server is not on PATH';
    case 'postgres-server':
      return findPostgresBinDir() === undefined ? 'no Postgres server binaries under /usr/lib/postgresql' : undefined;
  }
}

async function sharedPostgresProblem(): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: SHARED_POSTGRES_URL, connectionTimeoutMillis: 2000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('SELECT 1');
    return undefined;
  } catch (error) {
    return `the test Postgres at ${describePostgresUrl(SHARED_POSTGRES_URL)} is unreachable (${(error as Error).message})`;
  } finally {
    await client.end().catch(() => undefined);
  }
}

function commandExists(command: string): Promise<boolean> {
  return new Promise((resolveExists) => {
    const child = spawn(command, ['--version'], { stdio: 'ignore' });
    child.once('error', () => resolveExists(false));
    child.once('exit', (code) => resolveExists(code === 0));
  });
}
