import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Gateway } from './gateway.ts';
import { sendJson } from './respond.ts';

const CHECK_TIMEOUT_MS = 2000;

/** Something the gateway depends on, checked by the health routes. */
export interface Dependency {
  name: string;
  /** A required dependency that is down makes the replica not ready. */
  required: boolean;
  check(): Promise<void>;
}

async function runCheck(dependency: Dependency): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      dependency.check(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${CHECK_TIMEOUT_MS} ms`)), CHECK_TIMEOUT_MS);
      }),
    ]);
    return 'ok';
  } catch (error) {
    return `error: ${(error as Error).message}`;
  } finally {
    clearTimeout(timer);
  }
}

async function checkAll(gateway: Gateway): Promise<{ checks: Record<string, string>; storeOk: boolean; requiredOk: boolean }> {
  const results = await Promise.all(gateway.dependencies.map(runCheck));
  const checks: Record<string, string> = {};
  let storeOk = true;
  let requiredOk = true;
  gateway.dependencies.forEach((dependency, index) => {
    checks[dependency.name] = results[index];
    const ok = results[index] === 'ok';
    if (!ok) gateway.logger.warn({ dependency: dependency.name, result: results[index] }, 'health check failed');
    if (!ok && dependency.name === 'store') storeOk = false;
    if (!ok && dependency.required) requiredOk = false;
  });
  return { checks, storeOk, requiredOk };
}

/** Reports every dependency, with status 503 when the store is unreachable. */
export async function handleHealth(gateway: Gateway, _req: IncomingMessage, res: ServerResponse): Promise<void> {
  const { checks, storeOk } = await checkAll(gateway);
  sendJson(res, storeOk ? 200 : 503, {
    status: storeOk ? 'ok' : 'unavailable',
    checks,
    pendingUsageEvents: gateway.recorder.pendingCount(),
    ...(gateway.spool === undefined ? {} : { spooledUsageEvents: gateway.spool.spooledCount(), droppedUsageEvents: gateway.spool.droppedCount() }),
  });
}

/** 503 while any dependency the configuration requires is down, so a load balancer routes elsewhere. */
export async function handleReady(gateway: Gateway, _req: IncomingMessage, res: ServerResponse): Promise<void> {
  const { checks, requiredOk } = await checkAll(gateway);
  sendJson(res, requiredOk ? 200 : 503, { status: requiredOk ? 'ready' : 'not_ready', checks });
}

export function handleVersion(gateway: Gateway, _req: IncomingMessage, res: ServerResponse): void {
  sendJson(res, 200, { version: gateway.version, node: process.version });
}
