import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Gateway } from './gateway.ts';
import { sendJson } from './respond.ts';

const HEALTH_TIMEOUT_MS = 2000;

/** Reports whether the store answers; 503 when it does not, so load balancers stop routing here. */
export async function handleHealth(gateway: Gateway, _req: IncomingMessage, res: ServerResponse): Promise<void> {
  let storeStatus = 'ok';
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      gateway.store.ping(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${HEALTH_TIMEOUT_MS} ms`)), HEALTH_TIMEOUT_MS);
      }),
    ]);
  } catch (error) {
    storeStatus = `error: ${(error as Error).message}`;
    gateway.logger.warn({ err: error }, 'health check failed: store unavailable');
  } finally {
    clearTimeout(timer);
  }
  const healthy = storeStatus === 'ok';
  sendJson(res, healthy ? 200 : 503, {
    status: healthy ? 'ok' : 'unavailable',
    checks: { store: storeStatus },
    pendingUsageEvents: gateway.recorder.pendingCount(),
  });
}

export function handleVersion(gateway: Gateway, _req: IncomingMessage, res: ServerResponse): void {
  sendJson(res, 200, { version: gateway.version, node: process.version });
}
