import type { UsageMeter } from '../../usage/meter.ts';

interface AnthropicUsage {
  input_tokens?: number | null;
  output_tokens?: number | null;
  cache_creation_input_tokens?: number | null;
  cache_read_input_tokens?: number | null;
  /** Extended-thinking tokens, already included in `output_tokens`. */
  output_tokens_details?: { thinking_tokens?: number | null } | null;
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0;
}

/**
 * Copies an Anthropic `usage` object into the meter. Values are set, not added: the
 * `message_delta` usage is cumulative for the whole response, so a repeated field replaces
 * the earlier one and input tokens are counted once.
 */
export function applyAnthropicUsage(meter: UsageMeter, usage: AnthropicUsage | undefined, final: boolean): void {
  if (usage === undefined || usage === null || typeof usage !== 'object') return;
  if (isCount(usage.input_tokens)) meter.inputTokens = usage.input_tokens;
  if (isCount(usage.output_tokens)) meter.outputTokens = usage.output_tokens;
  if (isCount(usage.cache_creation_input_tokens)) meter.cacheCreationInputTokens = usage.cache_creation_input_tokens;
  if (isCount(usage.cache_read_input_tokens)) meter.cacheReadInputTokens = usage.cache_read_input_tokens;
  if (isCount(usage.output_tokens_details?.thinking_tokens)) meter.reasoningTokens = usage.output_tokens_details.thinking_tokens;
  if (final && isCount(usage.output_tokens)) meter.usageReported = true;
}

/** Counts the generated text of Messages content blocks or deltas. */
export function anthropicBlockText(block: Record<string, unknown> | undefined): string {
  if (block === undefined || block === null) return '';
  if (typeof block.text === 'string') return block.text;
  if (typeof block.thinking === 'string') return block.thinking;
  if (typeof block.partial_json === 'string') return block.partial_json;
  if (block.type === 'tool_use' && block.input !== undefined) return JSON.stringify(block.input);
  return '';
}
