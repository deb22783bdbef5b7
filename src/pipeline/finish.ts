import { settleReservation } from '../limits/admission.ts';
import type { Gateway } from '../server/gateway.ts';
import { countTokens } from '../usage/tokenizer.ts';
import type { UsageEvent } from '../usage/event.ts';
import type { RequestContext } from './context.ts';

/**
 * Settles a request that passed authentication: decides the outcome, fills in token counts
 * (estimating what the provider did not report), settles the quota and records the usage event.
 * Runs exactly once per request, whichever way it ended.
 */
export async function finishRequest(gateway: Gateway, ctx: RequestContext): Promise<void> {
  try {
    settleOutcome(ctx);
    const event = ctx.toEvent();
    await fillTokens(ctx, event);
    await settleQuota(gateway, ctx, event);
    gateway.recorder.record(event);
    logCompletion(gateway, event);
  } catch (error) {
    gateway.logger.error({ err: error, requestId: ctx.requestId }, 'failed to record the usage of a request');
  }
}

function settleOutcome(ctx: RequestContext): void {
  if (ctx.clientAborted) {
    ctx.outcome = 'client_aborted';
    if (!ctx.res.headersSent || ctx.status === 0) ctx.status = 499;
    return;
  }
  if (ctx.outcome !== 'completed') return;
  const meter = ctx.tap?.meter;
  if (meter?.errorEvent) {
    ctx.outcome = 'upstream_error';
  } else if (ctx.prepared?.stream && meter !== undefined && !meter.finished && !meter.usageReported && ctx.upstreamStatus !== null && ctx.upstreamStatus < 300) {
    // A stream that ended cleanly but before its last event and its final usage report was cut
    // short upstream. One that reported its final usage delivered the whole response.
    ctx.outcome = 'upstream_error';
  }
}

async function fillTokens(ctx: RequestContext, event: UsageEvent): Promise<void> {
  const meter = ctx.tap?.meter;
  const prepared = ctx.prepared;
  if (meter === undefined || prepared === undefined || ctx.upstreamStatus === null || ctx.upstreamStatus >= 300) return;
  let estimated = false;
  let input = meter.inputTokens;
  if (input === null) {
    // The body passed validation in prepare(), so it parses; only its prompt text is counted.
    const json = JSON.parse(prepared.body.toString('utf8')) as Record<string, unknown>;
    input = await countTokens(ctx.route.promptParts(json).join('\n'));
    estimated = true;
  }
  let output = meter.outputTokens;
  if (ctx.route.defaultFeature === 'embeddings') {
    output = output ?? 0;
  } else if (output === null || !meter.usageReported) {
    // No final usage report: the stream was cut short, or the API reports none. The estimate
    // from the text seen so far replaces a smaller interim count such as message_start's.
    const estimate = await meter.estimateOutputTokens();
    if (output === null || estimate > output) {
      output = estimate;
      estimated = true;
    }
  }
  event.inputTokens = input;
  event.outputTokens = output;
  event.tokensEstimated = estimated;
}

/**
 * Settles what admission charged. A request unit is given back when the provider did not deliver:
 * no 2xx response, or a stream that failed or timed out. A client that aborted keeps its charge,
 * because the provider ran. Token budgets are charged what the provider reported.
 */
async function settleQuota(gateway: Gateway, ctx: RequestContext, event: UsageEvent): Promise<void> {
  clearInterval(ctx.leaseTimer);
  const reservation = ctx.reservation;
  if (reservation === undefined) return;
  const delivered = ctx.upstreamStatus !== null && ctx.upstreamStatus < 300;
  const failed = event.outcome === 'upstream_error' || event.outcome === 'timeout' || event.outcome === 'rejected';
  const refundRequest = (!delivered && event.outcome !== 'client_aborted') || (delivered && failed);
  const meter = ctx.tap?.meter;
  let inputTokens = event.inputTokens ?? 0;
  if (ctx.route.provider === 'anthropic') inputTokens += (event.cacheCreationInputTokens ?? 0) + (event.cacheReadInputTokens ?? 0);
  if (ctx.feature === 'embeddings') inputTokens = meter?.totalTokens ?? inputTokens;
  const adjustments = settleReservation(reservation, {
    delivered,
    refundRequest,
    inputTokens: delivered ? inputTokens : 0,
    outputTokens: delivered ? (event.outputTokens ?? 0) : 0,
  });
  const lease = reservation.lease;
  await gateway.limiter.settle(adjustments, lease === undefined ? undefined : { actorId: lease.actorId, feature: lease.feature, id: lease.id });
}

function logCompletion(gateway: Gateway, event: UsageEvent): void {
  const fields = {
    requestId: event.requestId,
    actorId: event.actorId,
    route: event.route,
    model: event.requestedModel,
    status: event.status,
    upstreamStatus: event.upstreamStatus,
    outcome: event.outcome,
    code: event.errorCode,
    durationMs: event.durationMs,
    upstreamTtfbMs: event.upstreamTtfbMs,
    upstreamDurationMs: event.upstreamDurationMs,
    inputTokens: event.inputTokens,
    outputTokens: event.outputTokens,
  };
  if (event.status >= 500) gateway.logger.error(fields, 'request completed');
  else gateway.logger.info(fields, 'request completed');
}
