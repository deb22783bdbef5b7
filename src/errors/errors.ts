/**
 * Every error the gateway returns has a stable code, an HTTP status and a message that
 * says what failed and what to do. Callers and tests branch on `code`, never on the message.
 */
export const ERROR_CODES = {
  invalid_request: 400,
  invalid_json: 400,
  unknown_feature: 400,
  model_not_allowed: 400,
  missing_token: 401,
  invalid_token: 401,
  token_expired: 401,
  token_revoked: 401,
  actor_disabled: 403,
  feature_not_allowed: 403,
  not_found: 404,
  method_not_allowed: 405,
  body_too_large: 413,
  rate_limited: 429,
  concurrency_limited: 429,
  internal_error: 500,
  upstream_unreachable: 502,
  provider_disabled: 503,
  upstream_rate_limited: 503,
  store_unavailable: 503,
  upstream_timeout: 504,
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface GatewayErrorOptions {
  /** Extra response headers, such as `retry-after`. */
  headers?: Record<string, string>;
  /** The request field the error is about, reported as OpenAI's `param`. */
  param?: string;
  cause?: unknown;
}

export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly param: string | null;

  constructor(code: ErrorCode, message: string, options: GatewayErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.status = ERROR_CODES[code];
    this.headers = options.headers ?? {};
    this.param = options.param ?? null;
  }
}

export function isGatewayError(error: unknown): error is GatewayError {
  return error instanceof GatewayError;
}
