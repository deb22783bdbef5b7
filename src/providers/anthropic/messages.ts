import { GatewayError } from '../../errors/errors.ts';
import type { SseEvent } from '../../streaming/sse.ts';
import { PassThroughSseTap } from '../sse-tap.ts';
import { collectText, readMaxTokens, readStreamFlag, requireModel, textLength, tryParseJson } from '../request-fields.ts';
import type { PreparedRequest, RouteAdapter } from '../types.ts';
import { anthropicBlockText, applyAnthropicUsage } from './usage.ts';

function promptParts(json: Record<string, unknown>): string[] {
  const parts: string[] = [];
  collectText(json.system, parts);
  collectText(json.messages, parts);
  return parts;
}

function prepare(json: Record<string, unknown>, raw: Buffer): PreparedRequest {
  const model = requireModel(json);
  if (!Array.isArray(json.messages)) {
    throw new GatewayError('invalid_request', 'messages: an array of messages is required', { param: 'messages' });
  }
  return {
    model,
    stream: readStreamFlag(json),
    body: raw,
    promptChars: textLength(promptParts(json)),
    injectedUsage: false,
    maxOutputTokens: readMaxTokens(json, 'max_tokens'),
  };
}

class MessagesTap extends PassThroughSseTap {
  protected onEvent(event: SseEvent): void {
    if (event.data === '') return;
    const type = event.event;
    if (type === 'ping' || type === 'content_block_stop' || type === 'content_block_start') {
      if (type === 'content_block_start') {
        const parsed = tryParseJson(event.data) as { content_block?: Record<string, unknown> } | undefined;
        const text = parsed?.content_block?.text;
        if (typeof text === 'string') this.meter.addCompletionText(text);
      }
      return;
    }
    const parsed = tryParseJson(event.data) as Record<string, any> | undefined;
    if (parsed === undefined || parsed === null) return;
    switch (parsed.type ?? type) {
      case 'content_block_delta':
        this.meter.addCompletionText(anthropicBlockText(parsed.delta));
        break;
      case 'message_start':
        if (typeof parsed.message?.model === 'string') this.meter.upstreamModel = parsed.message.model;
        applyAnthropicUsage(this.meter, parsed.message?.usage, false);
        break;
      case 'message_delta':
        applyAnthropicUsage(this.meter, parsed.usage, true);
        break;
      case 'message_stop':
        this.meter.finished = true;
        break;
      case 'error':
        this.meter.errorEvent = true;
        break;
    }
  }

  jsonBody(body: Buffer): void {
    const parsed = tryParseJson(body.toString('utf8')) as Record<string, any> | undefined;
    if (parsed === undefined || parsed === null) return;
    if (typeof parsed.model === 'string') this.meter.upstreamModel = parsed.model;
    if (Array.isArray(parsed.content)) {
      for (const block of parsed.content) this.meter.addCompletionText(anthropicBlockText(block));
    }
    applyAnthropicUsage(this.meter, parsed.usage, true);
    this.meter.finished = true;
  }
}

export const anthropicMessages: RouteAdapter = {
  id: 'anthropic.messages',
  provider: 'anthropic',
  errorShape: 'anthropic',
  defaultFeature: 'chat_completions',
  upstreamPath: '/v1/messages',
  prepare,
  createTap: () => new MessagesTap(),
  promptParts,
};
