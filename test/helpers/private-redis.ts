/**
 * A private `redis-server` for fault tests: loopback only, a free port, a temporary directory,
 * no persistence. Tests may pause it (SIGSTOP) to play a Redis that stopped responding.
 *
 * Needs `redis-server` on PATH. Servers still running when the test process exits are killed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const START_TIMEOUT_MS = 5000;
const STOP_TIMEOUT_MS = 3000;

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export interface PrivateRedis {
  /** `redis://127.0.0.1:<port>` */
  url: string;
  port: number;
  /** Freezes the server with SIGSTOP. Connections stay open, and no command gets a reply. */
  pause(): void;
  /** Lets a paused server run again with SIGCONT. */
  resume(): void;
  /** Stops the server and deletes its directory. Calling it twice is safe. */
  stop(): Promise<void>;
}

/** Returns a TCP port that was free on 127.0.0.1 a moment ago. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('could not read the port of a probe server');
  return address.port;
}

/** Returns true once a PING on a fresh connection to 127.0.0.1 returns PONG, false after the deadline. */
export async function waitForPong(port: number, deadline: number): Promise<boolean> {
  while (Date.now() < deadline) {
    const pong = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.setTimeout(500, () => {
        socket.destroy();
        resolve(false);
      });
      socket.once('error', () => resolve(false));
      socket.once('connect', () => socket.write('PING\r\n'));
      socket.once('data', (data) => {
        socket.destroy();
        resolve(data.toString().startsWith('+PONG'));
      });
    });
    if (pong) return true;
    await sleep(50);
  }
  return false;
}

/** Starts a server on `options.port`, or on a free port when none is given. */
export async function startPrivateRedis(options: { port?: number } = {}): Promise<PrivateRedis> {
  const dir = mkdtempSync(join(tmpdir(), 'llmp-redis-'));
  const port = options.port ?? (await freePort());
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', '--loglevel', 'warning'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  let spawnError: Error | undefined;
  // A process that failed to spawn emits 'error' and may never emit 'exit'.
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.once('error', (error) => {
      spawnError = error;
      resolve();
    });
  });

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    if (child.exitCode === null && child.signalCode === null) {
      // A stopped process cannot act on SIGTERM until it runs again.
      child.kill('SIGCONT');
      child.kill('SIGTERM');
      const timedOut = await Promise.race([exited.then(() => false), sleep(STOP_TIMEOUT_MS, undefined, { ref: false }).then(() => true)]);
      if (timedOut) {
        child.kill('SIGKILL');
        await exited;
      }
    }
    running.delete(child);
    rmSync(dir, { recursive: true, force: true });
  };

  if (!(await waitForPong(port, Date.now() + START_TIMEOUT_MS))) {
    await stop();
    throw new Error(`redis-server did not answer PING on port ${port} within ${START_TIMEOUT_MS} ms: ${spawnError?.message ?? output.trim()}`);
  }

  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    pause: () => void child.kill('SIGSTOP'),
    resume: () => void child.kill('SIGCONT'),
    stop,
  };
}
