import type { Feature } from '../actors/types.ts';
import type { ProviderName } from '../config/config.ts';
import type { ErrorShape } from '../errors/shapes.ts';
import type { UsageMeter } from '../usage/meter.ts';

/** A validated client request, ready to forward. */
export interface PreparedRequest {
  model: string;
  stream: boolean;
  /** Bytes to send upstream: the client's own bytes unless the gateway had to change the body. */
  body: Buffer;
  promptChars: number;
  /** Input tokens known from the request itself (embeddings given as token ids). */
  promptTokenEstimate?: number;
  /** The request's output cap (`max_tokens` and its variants), used to reserve token budgets. */
  maxOutputTokens: number | null;
  /** OpenAI streams: the gateway added `stream_options.include_usage`, so it must hide the result. */
  injectedUsage: boolean;
}

/**
 * Reads usage out of a response on its way to the client. For streams it receives each upstream chunk
 * and returns the bytes to forward, which are the chunk itself unless the route rewrites events.
 */
export interface ResponseTap {
  readonly meter: UsageMeter;
  streamChunk(chunk: Buffer): Buffer | undefined;
  /** Returns bytes still owed to the client when the upstream stream ends. */
  streamEnd(): Buffer | undefined;
  jsonBody(body: Buffer): void;
}

/** The per-route steps of the shared request pipeline. */
export interface RouteAdapter {
  /** Stable route name used in logs and usage events, such as `anthropic.messages`. */
  id: string;
  provider: ProviderName;
  errorShape: ErrorShape;
  defaultFeature: Feature;
  /** Appended to the provider's base URL. */
  upstreamPath: string;
  /** Validates the parsed body and throws GatewayError(invalid_request) when it cannot be forwarded. */
  prepare(json: Record<string, unknown>, raw: Buffer): PreparedRequest;
  createTap(request: PreparedRequest): ResponseTap;
  /**
   * Returns the prompt's text pieces from a request body that `prepare` accepted. The pipeline
   * parses the body again for this when the provider reports no input tokens, so that a running
   * request does not keep a parsed copy of its prompt.
   */
  promptParts(json: Record<string, unknown>): string[];
}
