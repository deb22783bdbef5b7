/** Shared pieces of the actor source tests: gateway settings, chat requests, bounded waits. */
import { setTimeout as sleep } from 'node:timers/promises';
import type { TestGateway } from '../helpers/gateway.ts';
import type { MockActorSource } from './mock-source.ts';

export const SOURCE_SECRET = 's3cret-value';

const CHAT_REQUEST = { model: 'gpt-test', messages: [{ role: 'user', content: 'Hi' }] };
const REQUEST_TIMEOUT_MS = 10_000;
const POLL_INTERVAL_MS = 20;

/** Gateway settings that point at the mock source: 1 s TTLs and no periodic sync, unless overridden. */
export function sourceEnv(source: MockActorSource, overrides: Record<string, string> = {}): Record<string, string> {
  return {
    LLM_PROXY_ACTOR_SOURCE_URL: source.url,
    LLM_PROXY_ACTOR_SOURCE_SECRET: SOURCE_SECRET,
    LLM_PROXY_ACTOR_SOURCE_TTL: '1s',
    LLM_PROXY_ACTOR_SOURCE_NEGATIVE_TTL: '1s',
    LLM_PROXY_ACTOR_SOURCE_SYNC_INTERVAL: '0',
    ...overrides,
  };
}

export interface ChatResult {
  status: number;
  /** `error.code` of an error response, undefined on success. */
  code: string | undefined;
  body: any;
  /** Time from sending the request to reading the whole response, in ms. */
  elapsedMs: number;
}

/** Sends one OpenAI chat completion through the gateway with the given token. */
export async function chat(gateway: TestGateway, token: string): Promise<ChatResult> {
  const startedAt = performance.now();
  const response = await fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(CHAT_REQUEST),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const body = (await response.json()) as any;
  return { status: response.status, code: body?.error?.code, body, elapsedMs: performance.now() - startedAt };
}

/** Waits until `condition` holds, checking every 20 ms, and throws with `description` after `timeoutMs`. */
export async function waitUntil(condition: () => boolean, timeoutMs: number, description: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting until ${description}`);
    await sleep(POLL_INTERVAL_MS);
  }
}

/** Log lines of a gateway with the given message. */
export function logsWithMessage(gateway: TestGateway, message: string): Record<string, any>[] {
  return gateway.logs.filter((line) => line.msg === message);
}

export const SYNCED_MESSAGE = 'synced actors from the actor source';
export const SYNC_FAILED_MESSAGE = 'actor sync failed; cached actors keep serving';
export const LOOKUP_FAILED_MESSAGE = 'actor source lookup failed';
export const REFRESH_FAILED_MESSAGE = 'actor source refresh failed, serving the cached entry';

/** Waits until the gateway has logged `count` completed syncs. */
export function waitForSyncs(gateway: TestGateway, count: number, timeoutMs = 5000): Promise<void> {
  return waitUntil(() => logsWithMessage(gateway, SYNCED_MESSAGE).length >= count, timeoutMs, `${count} completed actor syncs are logged`);
}
