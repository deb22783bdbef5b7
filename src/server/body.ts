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

/** Reads the whole request body, failing fast with 413 once it passes `maxBytes`. */
export function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) return Promise.reject(tooLarge(maxBytes));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) {
        cleanup();
        req.resume();
        reject(tooLarge(maxBytes));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size));
    };
    const onError = () => {
      cleanup();
      reject(new ClientClosedError());
    };
    const onClose = () => {
      if (!req.complete) {
        cleanup();
        reject(new ClientClosedError());
      }
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
  });
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
