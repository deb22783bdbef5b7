import type { GatewayError } from './errors.ts';

/** The provider whose error JSON shape a route uses. */
export type ErrorShape = 'anthropic' | 'openai';

const ANTHROPIC_TYPES: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  403: 'permission_error',
  404: 'not_found_error',
  405: 'invalid_request_error',
  413: 'request_too_large',
  429: 'rate_limit_error',
  500: 'api_error',
  502: 'api_error',
  503: 'overloaded_error',
  504: 'api_error',
  529: 'overloaded_error',
};

const OPENAI_TYPES: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  403: 'permission_error',
  404: 'invalid_request_error',
  405: 'invalid_request_error',
  413: 'invalid_request_error',
  429: 'rate_limit_error',
  500: 'server_error',
  502: 'server_error',
  503: 'server_error',
  504: 'server_error',
};

export function anthropicErrorType(status: number): string {
  return ANTHROPIC_TYPES[status] ?? (status >= 500 ? 'api_error' : 'invalid_request_error');
}

/** Serialises an error in the shape the caller's SDK parses. */
export function errorBody(shape: ErrorShape, error: GatewayError, requestId: string): string {
  if (shape === 'anthropic') {
    return JSON.stringify({
      type: 'error',
      // The Anthropic SDK exposes `details.error_code` as `errorCode`.
      error: { type: anthropicErrorType(error.status), message: error.message, code: error.code, details: { error_code: error.code } },
      request_id: requestId,
    });
  }
  return JSON.stringify({
    error: {
      message: error.message,
      type: OPENAI_TYPES[error.status] ?? (error.status >= 500 ? 'server_error' : 'invalid_request_error'),
      param: error.param,
      code: error.code,
    },
    request_id: requestId,
  });
}
