import type { ServerResponse } from 'node:http';
import { GatewayError } from '../errors/errors.ts';
import { errorBody, type ErrorShape } from '../errors/shapes.ts';

export function sendJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    ...headers,
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

/**
 * Writes a gateway error in the caller's API shape, unless the response already started. The
 * response carries the request id, then `headers`, then the error's own headers, which win.
 */
export function sendError(res: ServerResponse, shape: ErrorShape, error: GatewayError, requestId: string, headers?: Record<string, string>): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = errorBody(shape, error, requestId);
  res.writeHead(error.status, {
    'request-id': requestId,
    'x-request-id': requestId,
    ...headers,
    ...error.headers,
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

/** Wraps an unexpected exception so the caller sees a coded error and no internals. */
export function toGatewayError(error: unknown): GatewayError {
  if (error instanceof GatewayError) return error;
  return new GatewayError('internal_error', 'the gateway failed to handle the request; retry, and report the request id if it keeps failing', { cause: error });
}
