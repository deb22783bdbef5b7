import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { FeatureLimits } from '../../src/actors/types.ts';
import { loadConfig } from '../../src/config/config.ts';
import { startGateway, type RunningGateway } from '../../src/server/start.ts';
import type { UsageEvent } from '../../src/usage/event.ts';
import type { UpstreamServer } from './upstream-server.ts';

export const ADMIN_TOKEN = 'test-admin-token-0123456789';
export const ANTHROPIC_KEY = 'sk-ant-api03-upstream-test-key-ABCD';
export const OPENAI_KEY = 'sk-proj-upstream-test-key-WXYZ';

export interface TestActor {
  id: string;
  token: string;
}

/** A gateway on a loopback port with a temporary data directory, logs kept in memory. */
export interface TestGateway {
  url: string;
  running: RunningGateway;
  /** Every log line written so far, parsed. */
  logs: Record<string, unknown>[];
  /** The raw log text, for checks that a secret never appears. */
  logText(): string;
  adminHeaders: Record<string, string>;
  createActor(limits?: FeatureLimits | Record<string, unknown>, name?: string): Promise<TestActor>;
  /** Flushes pending usage events and returns them, newest first. */
  usageEvents(actorId?: string): Promise<UsageEvent[]>;
  /** Waits until `count` usage events exist for the actor (events settle after the response ends). */
  waitForEvents(actorId: string, count: number, timeoutMs?: number): Promise<UsageEvent[]>;
  close(): Promise<void>;
}

export const DEFAULT_LIMITS = {
  chat_completions: { limit: 1000, interval: '1h', allowedModels: ['*'] },
  code_completions: { limit: 1000, interval: '1h', allowedModels: ['*'] },
  embeddings: { limit: 1_000_000, interval: '1h', allowedModels: ['*'] },
};

export async function startTestGateway(upstream: UpstreamServer | undefined, env: Record<string, string> = {}): Promise<TestGateway> {
  const dataDir = mkdtempSync(join(tmpdir(), 'llm-proxy-test-'));
  const upstreamEnv: Record<string, string> =
    upstream === undefined
      ? {}
      : {
          LLM_PROXY_ANTHROPIC_API_KEY: ANTHROPIC_KEY,
          LLM_PROXY_ANTHROPIC_BASE_URL: upstream.url,
          LLM_PROXY_OPENAI_API_KEY: OPENAI_KEY,
          LLM_PROXY_OPENAI_BASE_URL: `${upstream.url}/v1`,
        };
  const config = loadConfig({
    LLM_PROXY_PORT: '0',
    LLM_PROXY_HOST: '127.0.0.1',
    LLM_PROXY_DATA_DIR: dataDir,
    LLM_PROXY_ADMIN_TOKEN: ADMIN_TOKEN,
    LLM_PROXY_LOG_LEVEL: 'debug',
    LLM_PROXY_SHUTDOWN_GRACE: '2s',
    ...upstreamEnv,
    ...env,
  });
  const lines: string[] = [];
  const logDestination = new Writable({
    write(chunk, _encoding, callback) {
      lines.push(String(chunk));
      callback();
    },
  });
  const running = await startGateway(config, { handleSignals: false, logDestination });
  const adminHeaders = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' };
  const url = running.url;

  const admin = async (method: string, path: string, body?: unknown) => {
    const response = await fetch(url + path, { method, headers: adminHeaders, body: body === undefined ? undefined : JSON.stringify(body) });
    const json = (await response.json()) as any;
    if (!response.ok) throw new Error(`admin ${method} ${path} failed: ${response.status} ${JSON.stringify(json)}`);
    return json;
  };

  const usageEvents = async (actorId?: string): Promise<UsageEvent[]> => {
    await running.gateway.recorder.flush();
    return running.gateway.store.queryEvents({ actorId, limit: 10_000 });
  };

  return {
    url,
    running,
    get logs() {
      return lines.join('').split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Record<string, unknown>);
    },
    logText: () => lines.join(''),
    adminHeaders,
    async createActor(limits = DEFAULT_LIMITS, name = 'test-actor') {
      const actor = await admin('POST', '/-/admin/actors', { name, limits });
      const token = await admin('POST', `/-/admin/actors/${actor.id}/tokens`, {});
      return { id: actor.id, token: token.token };
    },
    usageEvents,
    async waitForEvents(actorId, count, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const events = await usageEvents(actorId);
        if (events.length >= count) return events;
        if (Date.now() > deadline) throw new Error(`expected ${count} usage events for ${actorId}, found ${events.length} after ${timeoutMs} ms`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
    async close() {
      await running.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
