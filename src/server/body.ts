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

/**
 * Collects one request body. A class with bound listeners, rather than closures made per call,
 * because this runs on every request.
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
    req.on('data', this.onData);
    req.on('end', this.onEnd);
    req.on('error', this.onError);
    req.on('close', this.onClose);
  }

  private cleanup(): void {
    this.req.off('data', this.onData);
    this.req.off('end', this.onEnd);
    this.req.off('error', this.onError);
    this.req.off('close', this.onClose);
  }

  private readonly onData = (chunk: Buffer): void => {
    this.size += chunk.length;
    if (this.size > this.maxBytes) {
      this.cleanup();
      this.req.resume();
      this.reject(tooLarge(this.maxBytes));
      return;
    }
    this.chunks.push(chunk);
  };

  private readonly onEnd = (): void => {
    this.cleanup();
    this.resolve(this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.size));
  };

  private readonly onError = (): void => {
    this.cleanup();
    this.reject(new ClientClosedError());
  };

  private readonly onClose = (): void => {
    if (!this.req.complete) {
      this.cleanup();
      this.reject(new ClientClosedError());
    }
  };
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
