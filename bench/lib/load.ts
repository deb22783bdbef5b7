/**
 * Load generators and measuring clients. Every loop here stops after a fixed number of requests
 * or at a deadline, whichever comes first.
 */
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import autocannon from 'autocannon';
import { Client, Pool } from 'undici';
import type { Endpoint, Target } from './targets.ts';

const PROMPT =
  'You are reviewing the design of an HTTP gateway that sits between internal developer tools and two hosted model APIs. ' +
  'It authenticates each caller with a bearer token, checks a per-actor request quota, checks the requested model against an allowlist, ' +
  'forwards the request, meters the tokens in the response and records one usage event per request. ' +
  'Explain in three short paragraphs how such a gateway should behave when the upstream slows down, when a client disconnects in the middle ' +
  'of a streamed answer, and when the usage database is briefly unavailable. Keep the answer practical and mention the trade-offs.';

/** Builds an OpenAI Chat Completions request body of about 1 KB, the size of a short chat turn. */
export function openAiBody(model: string, stream: boolean): string {
  return JSON.stringify({
    model,
    messages: [
      { role: 'system', content: 'You are a concise assistant for software engineers.' },
      { role: 'user', content: PROMPT },
    ],
    max_tokens: 256,
    temperature: 0.2,
    ...(stream ? { stream: true } : {}),
  });
}

/** Builds an Anthropic Messages request body with the same prompt as openAiBody. */
export function anthropicBody(model: string, stream: boolean): string {
  return JSON.stringify({
    model,
    system: 'You are a concise assistant for software engineers.',
    messages: [{ role: 'user', content: PROMPT }],
    max_tokens: 256,
    temperature: 0.2,
    ...(stream ? { stream: true } : {}),
  });
}

export interface Bounds {
  /** Maximum number of requests. */
  count: number;
  /** Wall-clock limit in milliseconds; the loop stops early when it is reached. */
  timeLimitMs: number;
}

export interface SequentialResult {
  /** Latency of each successful request in milliseconds, from sending to the end of the body. */
  latenciesMs: number[];
  errors: number;
  /** The first failure, for the report. */
  firstError?: string;
}

/** Sends requests one at a time on one keep-alive connection (concurrency 1). */
export async function runSequential(client: Client, endpoint: Endpoint, body: string, bounds: Bounds): Promise<SequentialResult> {
  const result: SequentialResult = { latenciesMs: [], errors: 0 };
  const deadline = performance.now() + bounds.timeLimitMs;
  for (let i = 0; i < bounds.count && performance.now() < deadline; i++) {
    const started = performance.now();
    try {
      const response = await client.request({ path: endpoint.path, method: 'POST', headers: endpoint.headers, body });
      const text = await response.body.text();
      if (response.statusCode !== 200) {
        result.errors++;
        result.firstError ??= `status ${response.statusCode}: ${text.slice(0, 200)}`;
        continue;
      }
      result.latenciesMs.push(performance.now() - started);
    } catch (error) {
      result.errors++;
      result.firstError ??= (error as Error).message;
    }
  }
  return result;
}

export interface ClosedLoopResult {
  /** Successful (2xx) responses per second. */
  requestsPerSecond: number;
  /** Latency percentiles in whole milliseconds, as autocannon records them. */
  latencyP50Ms: number;
  latencyP99Ms: number;
  completed: number;
  errors: number;
  non2xx: number;
  durationSeconds: number;
}

/**
 * Runs closed-loop load with autocannon: `connections` connections, each sending its next request
 * as soon as the response to the last one has arrived.
 */
export async function runClosedLoop(target: Target, endpoint: Endpoint, body: string, connections: number, durationSeconds: number): Promise<ClosedLoopResult> {
  const result = await autocannon({
    url: target.origin + endpoint.path,
    method: 'POST',
    headers: endpoint.headers,
    body,
    connections,
    duration: durationSeconds,
    timeout: 10,
  });
  return {
    requestsPerSecond: result['2xx'] / result.duration,
    latencyP50Ms: result.latency.p50,
    latencyP99Ms: result.latency.p99,
    completed: result['2xx'],
    errors: result.errors,
    non2xx: result.non2xx,
    durationSeconds: result.duration,
  };
}

export interface PacedResult {
  targetRate: number;
  /** Successful responses per second over the time from the first request to the last response. */
  achievedRate: number;
  /** Latency of each successful request, measured from its scheduled send time. */
  latenciesMs: number[];
  errors: number;
  /** True when the backlog of unanswered requests reached its cap and the step was stopped. */
  overloaded: boolean;
}

/**
 * Runs open-loop load at a fixed rate over a pool of `connections` connections. Requests go out
 * on an even schedule whether or not responses to earlier ones have arrived. Each latency counts
 * from the scheduled send time, so time spent waiting for a free connection is included (no
 * coordinated omission). autocannon's own rate option is not used because it sends each second's
 * quota back to back at the start of the second. With several bodies, requests take them in turn.
 */
export async function runPaced(target: Target, endpoint: Endpoint, body: string | string[], rate: number, durationMs: number, connections: number): Promise<PacedResult> {
  const bodies = Array.isArray(body) ? body : [body];
  const pool = new Pool(target.origin, { connections, pipelining: 1, keepAliveTimeout: 30_000 });
  const total = Math.max(1, Math.round((rate * durationMs) / 1000));
  const maxBacklog = Math.max(connections * 4, Math.round(rate / 2));
  const result: PacedResult = { targetRate: rate, achievedRate: 0, latenciesMs: [], errors: 0, overloaded: false };
  const startedAt = performance.now();
  let lastResponseAt = startedAt;
  let issued = 0;
  let pending = 0;

  await new Promise<void>((resolve) => {
    let scheduling = true;
    const settle = () => {
      pending--;
      if (!scheduling && pending === 0) resolve();
    };
    const send = (scheduledAt: number, index: number) => {
      pending++;
      pool
        .request({ path: endpoint.path, method: 'POST', headers: endpoint.headers, body: bodies[index % bodies.length], headersTimeout: 10_000, bodyTimeout: 10_000 })
        .then(async (response) => {
          await response.body.dump();
          lastResponseAt = performance.now();
          if (response.statusCode === 200) result.latenciesMs.push(lastResponseAt - scheduledAt);
          else result.errors++;
        })
        .catch(() => {
          result.errors++;
        })
        .finally(settle);
    };
    const tick = () => {
      const due = Math.min(total, Math.floor(((performance.now() - startedAt) * rate) / 1000) + 1);
      while (issued < due) {
        if (pending >= maxBacklog) {
          result.overloaded = true;
          break;
        }
        send(startedAt + (issued * 1000) / rate, issued);
        issued++;
      }
      if (issued < total && !result.overloaded) {
        setTimeout(tick, 1);
        return;
      }
      scheduling = false;
      if (pending === 0) resolve();
    };
    tick();
  });
  await pool.destroy();
  const elapsedSeconds = (lastResponseAt - startedAt) / 1000;
  result.achievedRate = elapsedSeconds > 0 ? result.latenciesMs.length / elapsedSeconds : 0;
  return result;
}

export interface StreamResult {
  /** Milliseconds from sending the request to the arrival of the first content event. */
  firstEventMs: number;
  /**
   * For each content event after the first: its arrival gap to the previous content event minus
   * the gap between their send times at the upstream, in milliseconds. Zero means the path added
   * no delay; a coalesced or buffered event shows as a positive value.
   */
  addedGapsMs: number[];
  contentEvents: number;
  /** The stream reached its last event (`[DONE]` or `message_stop`). */
  complete: boolean;
}

const SENT_AT = /@(\d+\.\d+)/;
const EVENT_END = /\r?\n\r?\n/;

/**
 * Sends one streaming request and timestamps every SSE event on arrival. Events that arrive in
 * the same chunk get the same arrival time, which is how coalescing shows up.
 */
export function runStream(target: Target, endpoint: Endpoint, body: string, agent: http.Agent, timeoutMs: number): Promise<StreamResult> {
  return new Promise((resolve, reject) => {
    const result: StreamResult = { firstEventMs: Number.NaN, addedGapsMs: [], contentEvents: 0, complete: false };
    let previous: { arrivedAt: number; sentAt: number } | undefined;
    let buffer = '';
    const startedAt = performance.now();
    const request = http.request(target.origin + endpoint.path, { method: 'POST', headers: { ...endpoint.headers, 'content-length': Buffer.byteLength(body) }, agent });
    const timer = setTimeout(() => request.destroy(new Error(`stream did not finish within ${timeoutMs} ms`)), timeoutMs);
    request.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    request.once('response', (response) => {
      if (response.statusCode !== 200) {
        response.resume();
        clearTimeout(timer);
        reject(new Error(`status ${response.statusCode}`));
        return;
      }
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => {
        const arrivedAt = performance.now();
        buffer += chunk;
        let match: RegExpExecArray | null;
        while ((match = EVENT_END.exec(buffer)) !== null) {
          const event = buffer.slice(0, match.index);
          buffer = buffer.slice(match.index + match[0].length);
          if (event.includes('[DONE]') || event.includes('message_stop')) result.complete = true;
          const sent = SENT_AT.exec(event);
          if (sent === null) continue;
          const sentAt = Number(sent[1]);
          result.contentEvents++;
          if (previous === undefined) result.firstEventMs = arrivedAt - startedAt;
          else result.addedGapsMs.push(arrivedAt - previous.arrivedAt - (sentAt - previous.sentAt));
          previous = { arrivedAt, sentAt };
        }
      });
      response.once('end', () => {
        clearTimeout(timer);
        resolve(result);
      });
      response.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
    request.end(body);
  });
}

export interface HeldStreams {
  /** Streams that delivered their first content event. */
  opened: number;
  failed: number;
  firstError?: string;
  /** Closes every stream from the client side. */
  close(): void;
}

/**
 * Opens `count` streaming requests that the upstream keeps open (`bench-hold-*` models), at most
 * `parallelOpens` at a time, and resolves once each one has delivered its first content event or
 * failed, or when `timeLimitMs` has passed.
 */
export async function openHeldStreams(target: Target, endpoint: Endpoint, body: string, count: number, parallelOpens: number, timeLimitMs: number): Promise<HeldStreams> {
  const agent = new http.Agent({ keepAlive: false, maxSockets: Number.POSITIVE_INFINITY });
  const requests: http.ClientRequest[] = [];
  const held: HeldStreams = {
    opened: 0,
    failed: 0,
    close() {
      for (const request of requests) request.destroy();
      agent.destroy();
    },
  };
  const deadline = performance.now() + timeLimitMs;
  const openOne = () =>
    new Promise<void>((resolve) => {
      const request = http.request(target.origin + endpoint.path, { method: 'POST', headers: { ...endpoint.headers, 'content-length': Buffer.byteLength(body) }, agent });
      requests.push(request);
      let settled = false;
      const settle = (error?: string) => {
        if (settled) return;
        settled = true;
        if (error === undefined) held.opened++;
        else {
          held.failed++;
          held.firstError ??= error;
        }
        resolve();
      };
      const timer = setTimeout(() => settle('no first event before the time limit'), Math.max(0, deadline - performance.now()));
      request.once('error', (error) => {
        clearTimeout(timer);
        settle(error.message);
      });
      request.once('response', (response) => {
        if (response.statusCode !== 200) {
          clearTimeout(timer);
          settle(`status ${response.statusCode}`);
          response.resume();
          return;
        }
        response.setEncoding('utf8');
        let text = '';
        response.on('data', (chunk: string) => {
          if (settled) return;
          text += chunk;
          if (SENT_AT.test(text)) {
            clearTimeout(timer);
            settle();
          }
        });
        response.once('error', () => undefined);
      });
      request.end(body);
    });

  let next = 0;
  const worker = async () => {
    while (next < count && performance.now() < deadline) {
      next++;
      await openOne();
    }
  };
  await Promise.all(Array.from({ length: parallelOpens }, worker));
  return held;
}
