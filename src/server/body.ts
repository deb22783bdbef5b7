import type { IncomingMessage } from 'node:http';
import { GatewayError } from '../errors/errors.ts';

/** Thrown when the client went away while its body was being read. */
export class ClientClosedError extends Error {
  constructor() {
    super('client closed the connection');
    this.name = 'ClientClosedError';
  }
}

function tooLarge(maxBytes: number): GatewayError {
  return new GatewayError('body_too_large', `request body is larger than the ${maxBytes}-byte limit (LLM_PROXY_MAX_BODY_BYTES)`);
}

const COLLECTOR = Symbol('bodyCollector');

/** A request whose body a BodyCollector is reading. */
type CollectedRequest = IncomingMessage & { [COLLECTOR]: BodyCollector | undefined };

/**
 * Collects one request body. The listeners are shared module functions that find the collector
 * on the request, because this runs on every request and per-request closures cost more.
 */
class BodyCollector {
  private readonly chunks: Buffer[] = [];
  private size = 0;

  constructor(
    private readonly req: IncomingMessage,
    private readonly maxBytes: number,
    private readonly resolve: (body: Buffer) => void,
    private readonly reject: (error: Error) => void,
  ) {
    (req as CollectedRequest)[COLLECTOR] = this;
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
  }

  private cleanup(): void {
    // Assigned rather than deleted: `delete` would turn the request into a slow dictionary object.
    (this.req as CollectedRequest)[COLLECTOR] = undefined;
    this.req.off('data', onData);
    this.req.off('end', onEnd);
    this.req.off('error', onError);
    this.req.off('close', onClose);
  }

  data(chunk: Buffer): void {
    this.size += chunk.length;
    if (this.size > this.maxBytes) {
      this.cleanup();
      this.req.resume();
      this.reject(tooLarge(this.maxBytes));
      return;
    }
    this.chunks.push(chunk);
  }

  end(): void {
    this.cleanup();
    this.resolve(this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.size));
  }

  fail(): void {
    this.cleanup();
    this.reject(new ClientClosedError());
  }

  close(): void {
    if (!this.req.complete) this.fail();
  }
}

function onData(this: CollectedRequest, chunk: Buffer): void {
  this[COLLECTOR]?.data(chunk);
}

function onEnd(this: CollectedRequest): void {
  this[COLLECTOR]?.end();
}

function onError(this: CollectedRequest): void {
  this[COLLECTOR]?.fail();
}

function onClose(this: CollectedRequest): void {
  this[COLLECTOR]?.close();
}

/** Reads the whole request body, failing fast with 413 once it passes `maxBytes`. */
export function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) return Promise.reject(tooLarge(maxBytes));
  return new Promise((resolve, reject) => new BodyCollector(req, maxBytes, resolve, reject));
}

/** Parses a request body that must be one JSON object. */
export function parseJsonObject(raw: Buffer): Record<string, unknown> {
  if (raw.length === 0) {
    throw new GatewayError('invalid_json', 'request body is empty; send a JSON object');
  }
  let value: unknown;
  try {
    value = JSON.parse(raw.toString('utf8'));
  } catch (error) {
    // V8's message can quote part of the input, which may hold a secret, so only its kind is kept.
    const reason = (error as Error).message.replace(/, (?:\.\.\.)?".*$/s, '');
    throw new GatewayError('invalid_json', `request body is not valid JSON: ${reason}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    const kind = value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
    throw new GatewayError('invalid_json', `request body must be a JSON object, got ${kind}`);
  }
  return value as Record<string, unknown>;
}
