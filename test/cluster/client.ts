/**
 * HTTP calls that the cluster tests make against gateway replicas: the admin API, and proxy
 * requests in OpenAI and Anthropic form with their error code read from either error shape.
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { ADMIN_TOKEN } from '../helpers/gateway.ts';

/** Every proxy request the tests send is aborted after this time, so no test waits forever on one. */
const REQUEST_TIMEOUT_MS = 20_000;
const WARM_UP_ATTEMPTS = 10;
const WARM_UP_RETRY_MS = 200;

export const ADMIN_HEADERS = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' };

export interface ClusterActor {
  id: string;
  /** The secret token, shown once by the admin API. */
  token: string;
  tokenId: string;
}

/** Calls the admin API and returns the parsed response body. Throws with the status and body unless it is 2xx. */
export async function admin(url: string, method: string, path: string, body?: unknown): Promise<any> {
  const response = await fetch(url + path, {
    method,
    headers: ADMIN_HEADERS,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`admin ${method} ${path} on ${url} failed with ${response.status}: ${text}`);
  return text === '' ? undefined : JSON.parse(text);
}

/** Creates an actor with the given limits and one token for it, through the replica at `url`. */
export async function createActor(url: string, limits: Record<string, unknown>, name = 'cluster-test'): Promise<ClusterActor> {
  const actor = await admin(url, 'POST', '/-/admin/actors', { name, limits });
  const token = await admin(url, 'POST', `/-/admin/actors/${actor.id}/tokens`, {});
  return { id: actor.id, token: token.token, tokenId: token.id };
}

/** What one proxy request returned, or the network error it failed with (status 0). */
export interface ApiResult {
  status: number;
  /** `error.code` of an error body in OpenAI's or Anthropic's shape, else null. */
  code: string | null;
  body: any;
  text: string;
  headers: Headers | undefined;
  /** `performance.now()` when the request was sent and when its body had been read. */
  startedAt: number;
  endedAt: number;
  latencyMs: number;
  networkError: string | null;
}

/** Sends one request and reads the whole response. Network errors and timeouts become status 0. */
export async function send(url: string, path: string, options: { method?: string; headers?: Record<string, string>; body?: unknown } = {}): Promise<ApiResult> {
  const startedAt = performance.now();
  try {
    const response = await fetch(url + path, {
      method: options.method ?? (options.body === undefined ? 'GET' : 'POST'),
      headers: options.body === undefined ? options.headers : { 'content-type': 'application/json', ...options.headers },
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    const text = await response.text();
    const endedAt = performance.now();
    const json = parseJson(text);
    return { status: response.status, code: readErrorCode(json), body: json, text, headers: response.headers, startedAt, endedAt, latencyMs: endedAt - startedAt, networkError: null };
  } catch (error) {
    const endedAt = performance.now();
    const cause = (error as { cause?: { code?: string } }).cause?.code;
    const networkError = `${(error as Error).name}: ${(error as Error).message}${cause === undefined ? '' : ` (${cause})`}`;
    return { status: 0, code: null, body: undefined, text: '', headers: undefined, startedAt, endedAt, latencyMs: endedAt - startedAt, networkError };
  }
}

/**
 * Resolves the token on every replica through `GET /v1/limits`, which charges no quota, so that
 * each replica has the token cached before a test measures anything. A replica that fails is
 * asked again up to 10 times, 200 ms apart, because the Redis commands behind the route can time
 * out while a freshly started replica is still busy loading.
 */
export async function warmUp(urls: string[], token: string): Promise<void> {
  for (const url of urls) {
    let result: ApiResult | undefined;
    for (let attempt = 1; attempt <= WARM_UP_ATTEMPTS; attempt++) {
      result = await send(url, '/v1/limits', { headers: { authorization: `Bearer ${token}` } });
      if (result.status === 200) break;
      await sleep(WARM_UP_RETRY_MS);
    }
    if (result?.status !== 200) {
      throw new Error(`GET /v1/limits on ${url} failed ${WARM_UP_ATTEMPTS} times, last with ${result?.status}: ${result?.networkError ?? result?.text}`);
    }
  }
}

export const PROMPT = 'Say hello to the cluster test.';

/** Sends an OpenAI Chat Completions request; `fields` are merged into a one-message body. */
export function openaiChat(url: string, token: string, fields: Record<string, unknown> = {}): Promise<ApiResult> {
  const body = { model: 'gpt-test', messages: [{ role: 'user', content: PROMPT }], ...fields };
  return send(url, '/v1/chat/completions', { headers: { authorization: `Bearer ${token}` }, body });
}

/** Sends an Anthropic Messages request; `fields` are merged into a one-message body. */
export function anthropicMessages(url: string, token: string, fields: Record<string, unknown> = {}): Promise<ApiResult> {
  const body = { model: 'claude-test', max_tokens: 64, messages: [{ role: 'user', content: PROMPT }], ...fields };
  return send(url, '/v1/messages', { headers: { 'x-api-key': token, 'anthropic-version': '2023-06-01' }, body });
}

/** Describes results for assertion messages: counts by status and code. */
export function tally(results: ApiResult[]): string {
  const counts = new Map<string, number>();
  for (const result of results) {
    const key = result.status === 0 ? `network error ${result.networkError}` : `${result.status}${result.code === null ? '' : ` ${result.code}`}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts].map(([key, count]) => `${count} × ${key}`).join(', ');
}

function parseJson(text: string): any {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function readErrorCode(json: any): string | null {
  const code = json?.error?.code;
  return typeof code === 'string' ? code : null;
}
