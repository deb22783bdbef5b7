import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { isFeature, type Feature } from '../actors/types.ts';
import type { ProviderConfig } from '../config/config.ts';
import { GatewayError } from '../errors/errors.ts';
import { buildReservation, LEASE_RENEW_MS } from '../limits/admission.ts';
import type { CounterState } from '../limits/limiter.ts';
import { isModelAllowed } from '../limits/models.ts';
import type { RouteAdapter } from '../providers/types.ts';
import { ClientClosedError, parseJsonObject, readBody } from '../server/body.ts';
import type { Gateway } from '../server/gateway.ts';
import { sendError, toGatewayError } from '../server/respond.ts';
import { RequestContext } from './context.ts';
import { finishRequest } from './finish.ts';
import { maskKeyInChunk } from './sanitize.ts';
import { UpstreamCall } from './relay.ts';
import { contentEncoding, decodeWhole, reasonPhrase, relayUpstreamError, upstreamRequestHeaders, type CollectedResponse } from './upstream.ts';

/**
 * Handles one proxied API call. The steps run in this order, and each ends the request on its
 * own failure: authenticate, resolve the feature, check the provider, read and validate the
 * body, check the model, admit against the quota, call the upstream, relay its response. Exactly
 * one usage event is written for every request that passed authentication.
 */
export function handleProxy(gateway: Gateway, route: RouteAdapter, req: IncomingMessage, res: ServerResponse): Promise<void> {
  // Shutdown waits for every request in this set, so no usage event is lost when it cuts one off.
  const handling = runProxy(gateway, route, req, res).finally(() => gateway.settling.delete(handling));
  gateway.settling.add(handling);
  return handling;
}

async function runProxy(gateway: Gateway, route: RouteAdapter, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const ctx = new RequestContext(req, res, route, gateway.config.trustProxy);
  res.on('close', () => {
    if (!res.writableFinished) {
      ctx.clientAborted = true;
      ctx.upstreamCall?.abort();
    }
  });

  try {
    ctx.actor = (await gateway.resolver.resolve(req.headers)).actor;
  } catch (error) {
    const failure = toGatewayError(error);
    if (failure.code === 'internal_error') gateway.logger.error({ err: error, requestId: ctx.requestId }, 'failed to resolve the access token');
    gateway.logger.debug({ requestId: ctx.requestId, route: route.id, status: failure.status, code: failure.code }, 'request rejected before authentication');
    res.setHeader('connection', 'close');
    sendError(res, route.errorShape, failure, ctx.requestId);
    return;
  }

  try {
    ctx.feature = resolveFeature(req, route);
    ctx.limit = requireFeatureLimit(ctx);
    const provider = requireProvider(gateway, route);
    const raw = await readBody(req, gateway.config.maxBodyBytes);
    ctx.prepared = route.prepare(parseJsonObject(raw), raw);
    checkModel(ctx, provider);
    await admit(gateway, ctx);
    await forward(gateway, ctx, provider);
  } catch (error) {
    handleFailure(gateway, ctx, error);
  } finally {
    await finishRequest(gateway, ctx);
  }
}

function resolveFeature(req: IncomingMessage, route: RouteAdapter): Feature {
  const value = req.headers['x-sourcegraph-feature'];
  if (value === undefined || value === '') return route.defaultFeature;
  const feature = (Array.isArray(value) ? value[0] : value).trim();
  if (!isFeature(feature)) {
    throw new GatewayError('unknown_feature', `X-Sourcegraph-Feature: unknown feature ${JSON.stringify(feature)}; expected chat_completions, code_completions or embeddings`);
  }
  if ((feature === 'embeddings') !== (route.defaultFeature === 'embeddings')) {
    throw new GatewayError('unknown_feature', `X-Sourcegraph-Feature: feature ${feature} cannot be used on this route`);
  }
  return feature;
}

function requireFeatureLimit(ctx: RequestContext) {
  const limit = ctx.actor?.limits[ctx.feature as Feature];
  if (limit === undefined || limit.limit <= 0) {
    throw new GatewayError('feature_not_allowed', `actor ${ctx.actor?.id} has no access to feature ${ctx.feature}; ask an administrator to grant a limit for it`);
  }
  return limit;
}

function requireProvider(gateway: Gateway, route: RouteAdapter): ProviderConfig {
  const provider = gateway.config.providers[route.provider];
  if (provider.apiKey === null) {
    throw new GatewayError('provider_disabled', `the ${route.provider} provider is disabled on this gateway; set LLM_PROXY_${route.provider.toUpperCase()}_API_KEY to enable it`);
  }
  return provider;
}

function checkModel(ctx: RequestContext, provider: ProviderConfig): void {
  const prepared = ctx.prepared!;
  const model = prepared.model;
  if (!isModelAllowed(model, provider.name, provider.allowedModels, ctx.limit?.allowedModels ?? [])) {
    throw new GatewayError('model_not_allowed', `model ${JSON.stringify(model)} is not allowed for feature ${ctx.feature}`, { param: 'model' });
  }
  // Callers may name the model with this gateway's `provider/` prefix, but the provider
  // expects the name without it. This is the only case where the gateway rewrites the request body.
  const prefix = `${provider.name}/`;
  if (model.length > prefix.length && model.slice(0, prefix.length).toLowerCase() === prefix) {
    const json = JSON.parse(prepared.body.toString('utf8')) as Record<string, unknown>;
    json.model = model.slice(prefix.length);
    prepared.body = Buffer.from(JSON.stringify(json), 'utf8');
  }
}

/**
 * Checks and charges every quota of the feature in one atomic step: the request quota, token
 * budgets (a reservation settled to real usage later) and the concurrency lease.
 */
async function admit(gateway: Gateway, ctx: RequestContext): Promise<void> {
  const limit = ctx.limit!;
  const reservation = buildReservation({
    actorId: ctx.actor!.id,
    feature: ctx.feature as Feature,
    limit,
    requestId: ctx.requestId,
    promptChars: ctx.prepared!.promptChars,
    maxOutputTokens: ctx.prepared!.maxOutputTokens,
    defaultOutputReservation: gateway.config.tokenReservationDefault,
    promptTokenEstimate: ctx.prepared!.promptTokenEstimate,
  });
  const result = await gateway.limiter.admit(reservation.checks, reservation.lease);
  const primary = result.counters[0];
  const resetSeconds = Math.max(0, Math.ceil((primary.resetAt - Date.now()) / 1000));
  const headers = { 'x-ratelimit-limit': String(primary.limit), 'x-ratelimit-remaining': String(primary.remaining), 'x-ratelimit-reset': String(resetSeconds) };
  if (!result.allowed) {
    throw rejection(ctx, result.rejectedBy, result.counters, headers, limit.concurrency);
  }
  ctx.reservation = reservation;
  if (reservation.lease !== undefined) {
    const lease = reservation.lease;
    ctx.leaseTimer = setInterval(() => {
      gateway.limiter.renewLease(lease).catch((error: unknown) => gateway.logger.warn({ err: error, requestId: ctx.requestId }, 'failed to renew a concurrency lease'));
    }, LEASE_RENEW_MS);
    ctx.leaseTimer.unref();
  }
  ctx.rateLimitHeaders = headers;
}

function rejection(ctx: RequestContext, rejectedBy: number | 'concurrency' | undefined, counters: CounterState[], headers: Record<string, string>, concurrency: number | undefined): GatewayError {
  if (rejectedBy === 'concurrency') {
    return new GatewayError('concurrency_limited', `too many requests in flight for feature ${ctx.feature}: at most ${concurrency} at once; retry when one finishes`, {
      headers: { 'retry-after': '1' },
    });
  }
  const counter = counters[rejectedBy ?? 0];
  const seconds = Math.max(1, Math.ceil((counter.resetAt - Date.now()) / 1000));
  const unit = counter.key.counter === 'requests' ? 'requests' : counter.key.counter.replace('_', ' ');
  return new GatewayError('rate_limited', `rate limit exceeded for feature ${ctx.feature}: ${counter.limit} ${unit} per window; retry after ${seconds} seconds`, {
    headers: { ...headers, 'x-ratelimit-limit': String(counter.limit), 'x-ratelimit-remaining': '0', 'retry-after': String(seconds) },
  });
}

async function forward(gateway: Gateway, ctx: RequestContext, provider: ProviderConfig): Promise<void> {
  // A client that left while its request was admitted is not worth a provider call.
  if (ctx.clientAborted) throw new ClientClosedError();
  const prepared = ctx.prepared!;
  ctx.tap = ctx.route.createTap(prepared);
  const target = upstreamTarget(provider);
  const call = new UpstreamCall(ctx, provider.name, provider.apiKey, target.keyBytes);
  ctx.upstreamCall = call;
  ctx.upstreamStartedAt = performance.now();
  gateway.dispatcher.dispatch(
    {
      origin: target.origin,
      path: target.basePath + ctx.route.upstreamPath,
      method: 'POST',
      headers: upstreamRequestHeaders(ctx.req.headers, provider, prepared.stream, prepared.body.length),
      body: prepared.body,
    },
    call,
  );
  const response = await call.done;
  if (response !== undefined) {
    if (response.status >= 300) await relayUpstreamError(gateway, ctx, provider, response);
    else await relayJson(ctx, provider, response, target.keyBytes);
  }
  ctx.upstreamEndedAt = performance.now();
}

/** Sends a whole 2xx body to the client, decoded, after the usage tap has read it. */
async function relayJson(ctx: RequestContext, provider: ProviderConfig, response: CollectedResponse, keyBytes: Buffer | undefined): Promise<void> {
  const encoding = contentEncoding(response.headers);
  // Most bodies come unencoded; only the others take a trip through zlib.
  const decoded = encoding === '' ? response.body : await decodeWhole(response.body, encoding);
  if (decoded === undefined) {
    throw new GatewayError('upstream_unreachable', `the ${provider.name} provider sent a response with an unsupported content encoding`);
  }
  const payload = maskKeyInChunk(decoded, keyBytes);
  ctx.tap!.jsonBody(payload);
  const out = ctx.responseHeaders(response.headers, provider.apiKey);
  out['content-length'] = payload.length;
  ctx.status = response.status;
  ctx.res.writeHead(response.status, reasonPhrase(response.status), out);
  ctx.res.end(payload);
}

/** What every request to one provider needs from its settings, worked out once per provider. */
interface UpstreamTarget {
  origin: string;
  /** The base URL's path without a trailing slash, such as `/v1`. */
  basePath: string;
  /** The provider key as bytes, to mask in response bodies; undefined for keys under 8 characters. */
  keyBytes: Buffer | undefined;
}

const targets = new WeakMap<ProviderConfig, UpstreamTarget>();

/** Returns the provider's upstream target, so that no request parses the base URL again. */
function upstreamTarget(provider: ProviderConfig): UpstreamTarget {
  let target = targets.get(provider);
  if (target === undefined) {
    const url = new URL(provider.baseUrl);
    const key = provider.apiKey;
    target = {
      origin: url.origin,
      basePath: url.pathname.replace(/\/+$/, ''),
      keyBytes: key !== null && key.length >= 8 ? Buffer.from(key) : undefined,
    };
    targets.set(provider, target);
  }
  return target;
}

function isCode(error: unknown, ...codes: string[]): boolean {
  const code = (error as { code?: string } | null)?.code;
  return typeof code === 'string' && codes.includes(code);
}

/** Maps a failure to the outcome and, when nothing was written yet, an error response. */
function handleFailure(gateway: Gateway, ctx: RequestContext, error: unknown): void {
  const started = ctx.res.headersSent;
  if (ctx.clientAborted || error instanceof ClientClosedError || (error as Error)?.name === 'AbortError' || isCode(error, 'UND_ERR_ABORTED')) {
    ctx.clientAborted = true;
    ctx.outcome = 'client_aborted';
    if (!started) ctx.status = 499;
    return;
  }
  if (started) {
    // The response is under way, so the status cannot change. Destroying the socket makes the
    // client see an incomplete response instead of a clean end it could mistake for success.
    ctx.outcome = isCode(error, 'UND_ERR_BODY_TIMEOUT') ? 'timeout' : 'upstream_error';
    gateway.logger.warn({ requestId: ctx.requestId, err: error }, 'upstream stream failed after the response started');
    ctx.res.destroy();
    return;
  }
  let failure: GatewayError;
  if (error instanceof GatewayError) {
    failure = error;
  } else if (isCode(error, 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT')) {
    failure = new GatewayError('upstream_timeout', `the ${ctx.route.provider} provider sent no response within ${gateway.config.upstreamTimeoutMs} ms (LLM_PROXY_UPSTREAM_TIMEOUT)`);
  } else if (ctx.upstreamStartedAt !== null && ctx.upstreamStatus === null) {
    failure = new GatewayError('upstream_unreachable', `the ${ctx.route.provider} provider could not be reached or closed the connection (${(error as { code?: string })?.code ?? 'network error'}); retry later`);
    gateway.logger.warn({ requestId: ctx.requestId, err: error }, 'upstream request failed');
  } else if (ctx.upstreamStatus !== null && isCode(error, 'UND_ERR_BODY_TIMEOUT')) {
    failure = new GatewayError('upstream_timeout', `the ${ctx.route.provider} provider stopped sending its response for longer than ${gateway.config.streamIdleTimeoutMs} ms`);
  } else if (ctx.upstreamStatus !== null) {
    failure = new GatewayError('upstream_unreachable', `the connection to the ${ctx.route.provider} provider broke while reading its response; retry later`);
  } else {
    failure = toGatewayError(error);
    gateway.logger.error({ requestId: ctx.requestId, err: error }, 'unexpected error while handling a request');
  }
  ctx.error = failure;
  ctx.status = failure.status;
  if (ctx.upstreamStartedAt === null) ctx.outcome = 'rejected';
  else if (failure.code === 'upstream_timeout') ctx.outcome = 'timeout';
  else ctx.outcome = 'upstream_error';
  sendError(ctx.res, ctx.route.errorShape, failure, ctx.requestId, ctx.rateLimitHeaders);
}

