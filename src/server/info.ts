import type { IncomingMessage, ServerResponse } from 'node:http';
import { FEATURES } from '../actors/types.ts';
import { formatDuration } from '../config/duration.ts';
import { primaryCounter } from '../limits/admission.ts';
import { GatewayError } from '../errors/errors.ts';
import type { Gateway } from './gateway.ts';
import { listModels } from './models.ts';
import { sendError, sendJson, toGatewayError } from './respond.ts';

async function authenticate(gateway: Gateway, req: IncomingMessage, res: ServerResponse) {
  const requestId = `req_${crypto.randomUUID().replaceAll('-', '')}`;
  res.setHeader('request-id', requestId);
  res.setHeader('x-request-id', requestId);
  try {
    return (await gateway.resolver.resolve(req.headers)).actor;
  } catch (error) {
    const shape = req.headers['anthropic-version'] !== undefined ? 'anthropic' : 'openai';
    sendError(res, shape, toGatewayError(error), requestId);
    return undefined;
  }
}

/**
 * Lists, per feature the caller has a limit for, the limit, the interval as a Go duration
 * string, the usage in the current window, and the window's end (absent while unused).
 */
export async function handleLimits(gateway: Gateway, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const actor = await authenticate(gateway, req, res);
  if (actor === undefined) return;
  const result: Record<string, unknown> = {};
  try {
    for (const feature of FEATURES) {
      const limit = actor.limits[feature];
      if (limit === undefined) continue;
      const usage = await gateway.limiter.usage({ actorId: actor.id, feature, counter: primaryCounter(feature) });
      result[feature] = {
        limit: limit.limit,
        interval: formatDuration(limit.intervalSeconds),
        usage: usage.used,
        ...(usage.used > 0 && usage.resetAt !== undefined ? { expiry: new Date(usage.resetAt).toISOString() } : {}),
        allowedModels: limit.allowedModels,
        ...(limit.concurrency === undefined ? {} : { concurrency: limit.concurrency }),
        ...(limit.tokenLimit === undefined ? {} : { tokenLimit: limit.tokenLimit }),
        ...(limit.inputTokenLimit === undefined ? {} : { inputTokenLimit: limit.inputTokenLimit }),
        ...(limit.outputTokenLimit === undefined ? {} : { outputTokenLimit: limit.outputTokenLimit }),
      };
    }
  } catch (error) {
    const failure = toGatewayError(error);
    if (failure.code === 'internal_error') gateway.logger.error({ err: error }, 'failed to read limits');
    sendError(res, 'openai', failure, res.getHeader('request-id') as string);
    return;
  }
  sendJson(res, 200, result);
}

export async function handleModels(gateway: Gateway, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const actor = await authenticate(gateway, req, res);
  if (actor === undefined) return;
  try {
    sendJson(res, 200, { object: 'list', data: await listModels(gateway, actor) });
  } catch (error) {
    const failure = error instanceof GatewayError ? error : toGatewayError(error);
    sendError(res, 'openai', failure, res.getHeader('request-id') as string);
  }
}
