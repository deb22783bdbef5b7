/**
 * Client side of the proxy tests: raw HTTP requests to the gateway through undici, which does
 * not decode content encodings, so tests see the bytes the gateway wrote.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { after, before, beforeEach } from 'node:test';
import { Agent, request } from 'undici';
import type { UsageEvent } from '../../src/usage/event.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { UpstreamServer } from '../helpers/upstream-server.ts';

/** Default upper bound for one request in these tests, body included. */
export const REQUEST_TIMEOUT_MS = 10_000;

export interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

export interface SendOptions {
  headers?: Record<string, string>;
  /** Aborts the request, in addition to the time limit. */
  signal?: AbortSignal;
  /** Time limit for the whole request in ms, REQUEST_TIMEOUT_MS by default. */
  timeoutMs?: number;
}

/** Creates the agent that a test file sends its requests through. Close it in `after()`. */
export function createAgent(): Agent {
  return new Agent({ keepAliveTimeout: 1_000, connections: 64 });
}

export interface ProxyTestBed {
  agent: Agent;
  upstream: UpstreamServer;
  gateway: TestGateway;
}

/**
 * Starts a scripted upstream and a gateway in front of it before the file's tests, empties the
 * upstream's script before each test and stops everything after the last one. The fields are set
 * once the `before` hook has run.
 */
export function useProxyTestBed(): ProxyTestBed {
  const bed = { agent: createAgent() } as ProxyTestBed;
  before(async () => {
    bed.upstream = await UpstreamServer.start();
    bed.gateway = await startTestGateway(bed.upstream);
  });
  after(async () => {
    await bed.agent.close();
    await bed.gateway?.close();
    await bed.upstream?.close();
  });
  beforeEach(() => {
    bed.upstream.reset();
  });
  return bed;
}

export function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
}

/** Sends a POST and reads the whole body. Rejects when the body ends abnormally. */
export async function post(agent: Agent, url: string, body: string | Buffer | object, options: SendOptions = {}): Promise<RawResponse> {
  const response = await open(agent, url, body, options);
  const bytes = Buffer.from(await response.body.arrayBuffer());
  return { status: response.statusCode, headers: response.headers, body: bytes };
}

/** Sends a POST and returns the response with its body still unread. */
export function open(agent: Agent, url: string, body: string | Buffer | object, options: SendOptions = {}) {
  const payload = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  const timeout = AbortSignal.timeout(options.timeoutMs ?? REQUEST_TIMEOUT_MS);
  return request(url, {
    method: 'POST',
    headers: options.headers,
    body: payload,
    dispatcher: agent,
    signal: options.signal === undefined ? timeout : AbortSignal.any([options.signal, timeout]),
  });
}

export interface PartialRead {
  /** Every byte received before the body ended or failed. */
  received: Buffer;
  /** The error the body read rejected with, or undefined when it ended cleanly. */
  error: Error | undefined;
}

/** Reads a response body to its end, keeping the bytes received before a failure. */
export async function readUntilFailure(body: AsyncIterable<unknown>): Promise<PartialRead> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of body) chunks.push(chunk as Buffer);
    return { received: Buffer.concat(chunks), error: undefined };
  } catch (error) {
    return { received: Buffer.concat(chunks), error: error as Error };
  }
}

export interface ClientSseEvent {
  event: string;
  data: string;
}

/** Splits an SSE body into events as a client parses them. Comments and blocks without data are skipped. */
export function parseSse(text: string): ClientSseEvent[] {
  const events: ClientSseEvent[] = [];
  for (const block of text.split(/\r?\n\r?\n/)) {
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith('event:')) event = line.slice('event:'.length).trim();
      else if (line.startsWith('data:')) data.push(line.slice('data:'.length).replace(/^ /, ''));
    }
    if (data.length > 0) events.push({ event, data: data.join('\n') });
  }
  return events;
}

/**
 * Waits for the usage event of one request, found by the `request-id` header the gateway sent.
 * `count` is how many events the actor has by then.
 */
export async function eventFor(gateway: TestGateway, actorId: string, count: number, response: { headers: IncomingHttpHeaders }): Promise<UsageEvent> {
  const events = await gateway.waitForEvents(actorId, count);
  const requestId = response.headers['request-id'];
  const event = events.find((candidate) => candidate.requestId === requestId);
  if (event === undefined) throw new Error(`no usage event with request id ${String(requestId)} among ${events.length} events of ${actorId}`);
  return event;
}

/** Waits for `ms`, so that a late duplicate usage event would have time to appear. */
export function settle(ms = 100): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
