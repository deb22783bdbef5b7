import { GatewayError } from '../../errors/errors.ts';
import { collectText, readMaxTokens, readStreamFlag, requireModel, textLength } from '../request-fields.ts';
import type { PreparedRequest, RouteAdapter } from '../types.ts';
import { OpenAiTap } from './stream.ts';

/**
 * Streams carry usage only when the caller sets `stream_options.include_usage`. Without usage the
 * gateway could only estimate, so it sets the option itself and the tap hides the extra output.
 */
function withStreamUsage(json: Record<string, unknown>, raw: Buffer, stream: boolean): { body: Buffer; injected: boolean } {
  if (!stream) return { body: raw, injected: false };
  const options = json.stream_options;
  if (options !== undefined && options !== null && (typeof options !== 'object' || Array.isArray(options))) {
    throw new GatewayError('invalid_request', 'stream_options: expected an object', { param: 'stream_options' });
  }
  if ((options as Record<string, unknown> | undefined)?.include_usage === true) return { body: raw, injected: false };
  const body = { ...json, stream_options: { ...(options as object | undefined), include_usage: true } };
  return { body: Buffer.from(JSON.stringify(body), 'utf8'), injected: true };
}

function chatPromptParts(json: Record<string, unknown>): string[] {
  const parts: string[] = [];
  collectText(json.messages, parts);
  return parts;
}

function completionPromptParts(json: Record<string, unknown>): string[] {
  const parts: string[] = [];
  collectText(json.prompt, parts);
  if (typeof json.suffix === 'string') parts.push(json.suffix);
  return parts;
}

function embeddingPromptParts(json: Record<string, unknown>): string[] {
  const inputs = Array.isArray(json.input) ? json.input : [json.input];
  return inputs.filter((item): item is string => typeof item === 'string');
}

function prepareChat(json: Record<string, unknown>, raw: Buffer): PreparedRequest {
  const model = requireModel(json);
  if (!Array.isArray(json.messages) || json.messages.length === 0) {
    throw new GatewayError('invalid_request', 'messages: a non-empty array of messages is required', { param: 'messages' });
  }
  const stream = readStreamFlag(json);
  const { body, injected } = withStreamUsage(json, raw, stream);
  return { model, stream, body, promptChars: textLength(chatPromptParts(json)), injectedUsage: injected, maxOutputTokens: readMaxTokens(json, 'max_completion_tokens', 'max_tokens') };
}

function prepareCompletion(json: Record<string, unknown>, raw: Buffer): PreparedRequest {
  const model = requireModel(json);
  const prompt = json.prompt;
  if (prompt === undefined || prompt === null) {
    throw new GatewayError('invalid_request', 'prompt: a string or an array is required', { param: 'prompt' });
  }
  const stream = readStreamFlag(json);
  const { body, injected } = withStreamUsage(json, raw, stream);
  return { model, stream, body, promptChars: textLength(completionPromptParts(json)), injectedUsage: injected, maxOutputTokens: readMaxTokens(json, 'max_completion_tokens', 'max_tokens') };
}

function prepareEmbeddings(json: Record<string, unknown>, raw: Buffer): PreparedRequest {
  const model = requireModel(json);
  const input = json.input;
  const inputs = Array.isArray(input) ? input : [input];
  if (input === undefined || input === null || (Array.isArray(input) && input.length === 0)) {
    throw new GatewayError('invalid_request', 'input: a string, an array of strings or an array of token arrays is required', { param: 'input' });
  }
  for (const item of inputs) {
    if (item === '') {
      throw new GatewayError('invalid_request', 'input: empty strings cannot be embedded', { param: 'input' });
    }
  }
  if (json.stream === true) {
    throw new GatewayError('invalid_request', 'stream: embeddings cannot be streamed', { param: 'stream' });
  }
  let tokenIds = 0;
  for (const item of inputs) {
    if (typeof item === 'number') tokenIds++;
    else if (Array.isArray(item)) tokenIds += item.length;
  }
  const promptChars = textLength(embeddingPromptParts(json));
  return {
    model,
    stream: false,
    body: raw,
    promptChars,
    promptTokenEstimate: tokenIds + Math.ceil(promptChars / 3),
    injectedUsage: false,
    maxOutputTokens: 0,
  };
}

export const openaiChat: RouteAdapter = {
  id: 'openai.chat',
  provider: 'openai',
  errorShape: 'openai',
  defaultFeature: 'chat_completions',
  upstreamPath: '/chat/completions',
  prepare: prepareChat,
  createTap: (request) => new OpenAiTap(request.injectedUsage),
  promptParts: chatPromptParts,
};

export const openaiCompletions: RouteAdapter = {
  id: 'openai.completions',
  provider: 'openai',
  errorShape: 'openai',
  defaultFeature: 'chat_completions',
  upstreamPath: '/completions',
  prepare: prepareCompletion,
  createTap: (request) => new OpenAiTap(request.injectedUsage),
  promptParts: completionPromptParts,
};

export const openaiEmbeddings: RouteAdapter = {
  id: 'openai.embeddings',
  provider: 'openai',
  errorShape: 'openai',
  defaultFeature: 'embeddings',
  upstreamPath: '/embeddings',
  prepare: prepareEmbeddings,
  createTap: () => new OpenAiTap(false),
  promptParts: embeddingPromptParts,
};
