import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Actor, Feature, FeatureLimit } from '../actors/types.ts';
import type { GatewayError } from '../errors/errors.ts';
import type { Reservation } from '../limits/admission.ts';
import type { PreparedRequest, ResponseTap, RouteAdapter } from '../providers/types.ts';
import type { Outcome, UsageEvent } from '../usage/event.ts';
import { newEventId } from '../usage/ids.ts';
import type { UpstreamCall } from './relay.ts';
import { clientResponseHeaders } from './upstream.ts';

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Reads a header for the usage event. Node decodes header bytes as Latin-1, so a value that is
 * valid UTF-8 is decoded again as UTF-8; anything else stays as Latin-1.
 */
function header(req: IncomingMessage, name: string): string | null {
  const value = req.headers[name];
  if (value === undefined) return null;
  const text = Array.isArray(value) ? value.join(', ') : value;
  if (!/[^\x00-\x7f]/.test(text)) return text;
  try {
    return strictUtf8.decode(Buffer.from(text, 'latin1'));
  } catch {
    return text;
  }
}

/** Everything one proxied request gathers on its way through the pipeline. */
export class RequestContext {
  readonly requestId = `req_${randomUUID().replaceAll('-', '')}`;
  readonly startedAt = performance.now();
  /** Arrival time in epoch milliseconds; formatted only when the event is built. */
  readonly arrivedAt = Date.now();
  actor: Actor | undefined;
  feature: Feature | null = null;
  limit: FeatureLimit | undefined;
  /** The charges taken at admission, settled to real usage when the request ends. */
  reservation: Reservation | undefined;
  leaseTimer: NodeJS.Timeout | undefined;
  prepared: PreparedRequest | undefined;
  tap: ResponseTap | undefined;
  /** The provider call once it is dispatched; aborted when the client goes away. */
  upstreamCall: UpstreamCall | undefined;
  upstreamStartedAt: number | null = null;
  upstreamHeadersAt: number | null = null;
  upstreamEndedAt: number | null = null;
  upstreamStatus: number | null = null;
  status = 0;
  /** The caller's quota headers, set at admission and sent with every response after it. */
  rateLimitHeaders: Record<string, string> | undefined;
  outcome: Outcome = 'completed';
  error: GatewayError | undefined;
  /** The client closed its connection before the response was complete. */
  clientAborted = false;

  constructor(
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    readonly route: RouteAdapter,
    private readonly trustProxy: boolean,
  ) {}

  /** Headers for the client's response: the provider's, filtered, plus the gateway's own. */
  responseHeaders(upstream: IncomingHttpHeaders, providerKey: string | null): OutgoingHttpHeaders {
    const headers = clientResponseHeaders(upstream, this.requestId, providerKey);
    if (this.rateLimitHeaders !== undefined) Object.assign(headers, this.rateLimitHeaders);
    return headers;
  }

  clientIp(): string | null {
    if (this.trustProxy) {
      const forwarded = header(this.req, 'x-forwarded-for');
      if (forwarded !== null) return forwarded.split(',')[0].trim();
    }
    return this.req.socket.remoteAddress ?? null;
  }

  /** Builds the usage event from what the request gathered; token counts are filled by the caller. */
  toEvent(): UsageEvent {
    const now = performance.now();
    const meter = this.tap?.meter;
    const total = now - this.startedAt;
    const upstreamTotal = this.upstreamStartedAt === null ? null : (this.upstreamEndedAt ?? now) - this.upstreamStartedAt;
    const actor = this.actor as Actor;
    return {
      id: newEventId(),
      timestamp: new Date(this.arrivedAt).toISOString(),
      requestId: this.requestId,
      actorId: actor.id,
      actorName: actor.name,
      feature: this.feature,
      provider: this.route.provider,
      route: this.route.id,
      requestedModel: this.prepared?.model ?? null,
      upstreamModel: meter?.upstreamModel ?? null,
      stream: this.prepared?.stream ?? false,
      upstreamStatus: this.upstreamStatus,
      status: this.status,
      outcome: this.outcome,
      errorCode: this.error?.code ?? null,
      inputTokens: null,
      outputTokens: null,
      cacheCreationInputTokens: meter?.cacheCreationInputTokens ?? null,
      cacheReadInputTokens: meter?.cacheReadInputTokens ?? null,
      reasoningTokens: meter?.reasoningTokens ?? null,
      tokensEstimated: false,
      durationMs: round(total),
      upstreamTtfbMs: this.upstreamStartedAt === null || this.upstreamHeadersAt === null ? null : round(this.upstreamHeadersAt - this.upstreamStartedAt),
      upstreamDurationMs: upstreamTotal === null ? null : round(upstreamTotal),
      overheadMs: upstreamTotal === null ? null : round(Math.max(0, total - upstreamTotal)),
      promptChars: this.prepared?.promptChars ?? null,
      completionChars: meter === undefined ? null : meter.completionChars,
      clientIp: this.clientIp(),
      userAgent: header(this.req, 'user-agent'),
      sgActorUid: header(this.req, 'x-sourcegraph-actor-uid'),
      sgActorAnonymousUid: header(this.req, 'x-sourcegraph-actor-anonymous-uid'),
    };
  }
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
