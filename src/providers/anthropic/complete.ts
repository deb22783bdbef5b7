import { GatewayError } from '../../errors/errors.ts';
import type { SseEvent } from '../../streaming/sse.ts';
import { PassThroughSseTap } from '../sse-tap.ts';
import { readMaxTokens, readStreamFlag, requireModel, tryParseJson } from '../request-fields.ts';
import type { PreparedRequest, RouteAdapter } from '../types.ts';

function prepare(json: Record<string, unknown>, raw: Buffer): PreparedRequest {
  const model = requireModel(json);
  const prompt = json.prompt;
  if (typeof prompt !== 'string') {
    throw new GatewayError('invalid_request', 'prompt: a string is required', { param: 'prompt' });
  }
  return {
    model,
    stream: readStreamFlag(json),
    body: raw,
    promptChars: prompt.length,
    injectedUsage: false,
    maxOutputTokens: readMaxTokens(json, 'max_tokens_to_sample'),
  };
}

/**
 * Legacy Text Completions report no token usage, so the pipeline estimates both counts.
 * Each streamed `completion` event carries only the new text.
 */
class CompleteTap extends PassThroughSseTap {
  protected onEvent(event: SseEvent): void {
    if (event.data === '' || event.event === 'ping') return;
    const parsed = tryParseJson(event.data) as Record<string, any> | undefined;
    if (parsed === undefined || parsed === null) return;
    if (event.event === 'error' || parsed.type === 'error') {
      this.meter.errorEvent = true;
      return;
    }
    if (typeof parsed.completion === 'string') this.meter.addCompletionText(parsed.completion);
    if (typeof parsed.model === 'string') this.meter.upstreamModel = parsed.model;
    if (typeof parsed.stop_reason === 'string') this.meter.finished = true;
  }

  jsonBody(body: Buffer): void {
    const parsed = tryParseJson(body.toString('utf8')) as Record<string, any> | undefined;
    if (parsed === undefined || parsed === null) return;
    if (typeof parsed.model === 'string') this.meter.upstreamModel = parsed.model;
    if (typeof parsed.completion === 'string') this.meter.addCompletionText(parsed.completion);
    this.meter.finished = true;
  }
}

export const anthropicComplete: RouteAdapter = {
  id: 'anthropic.complete',
  provider: 'anthropic',
  errorShape: 'anthropic',
  defaultFeature: 'chat_completions',
  upstreamPath: '/v1/complete',
  prepare,
  createTap: () => new CompleteTap(),
  promptParts: (json) => (typeof json.prompt === 'string' ? [json.prompt] : []),
};
