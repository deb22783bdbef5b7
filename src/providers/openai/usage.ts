import type { UsageMeter } from '../../usage/meter.ts';

function count(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0 ? value : null;
}

/** Copies an OpenAI `usage` object (chat, completions or embeddings) into the meter. */
export function applyOpenAiUsage(meter: UsageMeter, usage: Record<string, any> | null | undefined): void {
  if (usage === null || usage === undefined || typeof usage !== 'object') return;
  meter.inputTokens = count(usage.prompt_tokens) ?? meter.inputTokens;
  meter.outputTokens = count(usage.completion_tokens) ?? meter.outputTokens;
  meter.totalTokens = count(usage.total_tokens) ?? meter.totalTokens;
  meter.cacheReadInputTokens = count(usage.prompt_tokens_details?.cached_tokens) ?? meter.cacheReadInputTokens;
  meter.reasoningTokens = count(usage.completion_tokens_details?.reasoning_tokens) ?? meter.reasoningTokens;
  meter.usageReported = true;
}

/** Adds the generated text of one chat or completions choice (message, delta or text). */
export function addChoiceText(meter: UsageMeter, choice: Record<string, any>): void {
  if (typeof choice.text === 'string') meter.addCompletionText(choice.text);
  const part = choice.delta ?? choice.message;
  if (part === undefined || part === null) return;
  if (typeof part.content === 'string') meter.addCompletionText(part.content);
  if (typeof part.reasoning_content === 'string') meter.addCompletionText(part.reasoning_content);
  if (typeof part.refusal === 'string') meter.addCompletionText(part.refusal);
  if (Array.isArray(part.tool_calls)) {
    for (const call of part.tool_calls) {
      const args = call?.function?.arguments;
      if (typeof args === 'string') meter.addCompletionText(args);
    }
  }
}
