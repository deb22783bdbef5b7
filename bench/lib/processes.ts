/**
 * Child processes for the benchmarks: every server under test runs in its own Node.js process, so
 * its memory can be read from /proc and it shares no event loop with the load generator.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export interface ChildServer {
  name: string;
  pid: number;
  child: ChildProcess;
  /** File that receives the child's standard output and standard error. */
  logFile: string;
  /** Sends SIGTERM, then SIGKILL if the process has not exited within `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

export interface SpawnOptions {
  name: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  logDir: string;
  /**
   * Resolves when the child is ready to serve: either a line on standard output that matches
   * this pattern (its first group is returned as the port), or undefined to return at once.
   */
  readyPattern?: RegExp;
  readyTimeoutMs?: number;
}

const running = new Set<ChildProcess>();

/** Kills every child still running. Installed on exit so that an aborted run leaves no servers. */
export function killAllChildren(): void {
  for (const child of running) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

process.once('exit', killAllChildren);

/** Starts `node <args>` and waits until it prints its ready line. Returns the port from that line, if any. */
export async function spawnNode(options: SpawnOptions): Promise<{ server: ChildServer; port: number | undefined }> {
  const logFile = join(options.logDir, `${options.name}-${Date.now()}.log`);
  const log = createWriteStream(logFile);
  const child = spawn(process.execPath, options.args, {
    cwd: options.cwd,
    env: options.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      running.delete(child);
      resolve();
    });
  });
  child.stderr.pipe(log, { end: false });

  let port: number | undefined;
  const ready = new Promise<void>((resolve, reject) => {
    if (options.readyPattern === undefined) resolve();
    let pending = '';
    let matched = false;
    child.stdout.on('data', (chunk: Buffer) => {
      log.write(chunk);
      if (options.readyPattern === undefined || matched) return;
      pending += chunk.toString('utf8');
      const match = options.readyPattern.exec(pending);
      if (match !== null) {
        port = match[1] === undefined ? undefined : Number(match[1]);
        matched = true;
        pending = '';
        resolve();
      } else if (pending.length > 64 * 1024) {
        pending = pending.slice(-1024);
      }
    });
    child.once('exit', (code, signal) => reject(new Error(`${options.name} exited before it was ready (code ${code}, signal ${signal}); see ${logFile}`)));
    child.once('error', reject);
  });
  const timeoutMs = options.readyTimeoutMs ?? 30_000;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${options.name} was not ready within ${timeoutMs} ms; see ${logFile}`)), timeoutMs);
  });
  const stop = async (graceMs = 5000) => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const killed = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
      if (!killed) {
        child.kill('SIGKILL');
        await exited;
      }
    }
    log.end();
  };
  try {
    await Promise.race([ready, timeout]);
  } catch (error) {
    await stop(1000);
    throw error;
  } finally {
    clearTimeout(timer);
  }
  return { server: { name: options.name, pid: child.pid as number, child, logFile, stop }, port };
}

/** Resident set size of a process in bytes, from /proc/PID/status (Linux only). */
export function readRss(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  if (match === null) throw new Error(`no VmRSS line in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}

/** Clock ticks per second of /proc CPU times (USER_HZ, 100 on Linux for x86-64 and arm64). */
const TICKS_PER_SECOND = 100;

/** Total CPU time (user + system) of a process in milliseconds, from /proc/PID/stat; 0 once it has exited. */
export function readCpuMs(pid: number): number {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return 0;
  }
  // Fields after the command name, which is in parentheses and may contain spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SECOND;
}

/**
 * CPU time of the whole machine in milliseconds, summed over all cores, from the first line of
 * /proc/stat: busy (user, nice, system, irq, softirq) and steal (time the hypervisor ran others).
 */
function readMachineCpuMs(): { busy: number; steal: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0];
  const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1, 9).map(Number);
  return { busy: ((user + nice + system + irq + softirq) * 1000) / TICKS_PER_SECOND, steal: (steal * 1000) / TICKS_PER_SECOND };
}

export interface CpuShare {
  /** CPU used by the whole machine, in percent of one core. */
  machinePercent: number;
  /** CPU used by this benchmark: its own process and every child it started. */
  benchmarkPercent: number;
  /** CPU used by everything else on the machine, such as other jobs; noise for the measurements. */
  otherPercent: number;
  /** CPU time the hypervisor gave to other guests, in percent of one core. */
  stealPercent: number;
}

/**
 * Starts measuring how busy the machine is; the returned function ends the measurement. Valid
 * only while no child process exits in between, because an exited child's CPU time can no longer
 * be read and would be counted as someone else's.
 */
export function startCpuShare(): () => CpuShare {
  const ours = () => {
    const usage = process.cpuUsage();
    let total = (usage.user + usage.system) / 1000;
    for (const child of running) total += readCpuMs(child.pid as number);
    return total;
  };
  const machineBefore = readMachineCpuMs();
  const oursBefore = ours();
  const wallBefore = Date.now();
  return () => {
    const machineAfter = readMachineCpuMs();
    const benchmark = Math.max(0, ours() - oursBefore);
    const wall = Math.max(1, Date.now() - wallBefore);
    const machine = machineAfter.busy - machineBefore.busy;
    return {
      machinePercent: (100 * machine) / wall,
      benchmarkPercent: (100 * benchmark) / wall,
      otherPercent: (100 * Math.max(0, machine - benchmark)) / wall,
      stealPercent: (100 * (machineAfter.steal - machineBefore.steal)) / wall,
    };
  };
}

/** Asks the kernel for a free TCP port on 127.0.0.1. Another process could take it before it is used. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === 'string') throw new Error('could not read the port of a probe socket');
  return address.port;
}

/** Polls `url` until it responds with a status below 500, or throws after `timeoutMs`. */
export async function waitForHttp(url: string, timeoutMs: number, init: RequestInit = {}): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const response = await fetch(url, { ...init, signal: AbortSignal.timeout(1000) });
      await response.arrayBuffer();
      if (response.status < 500) return;
      lastError = new Error(`status ${response.status}`);
    } catch (error) {
      lastError = error;
    }
    await sleep(100);
  }
  throw new Error(`${url} did not respond within ${timeoutMs} ms: ${(lastError as Error | undefined)?.message ?? 'no response'}`);
}
