import { UsageMeter } from '../../usage/meter.ts';
import { SseParser, type SseEvent } from '../../streaming/sse.ts';
import { tryParseJson } from '../request-fields.ts';
import type { ResponseTap } from '../types.ts';
import { addChoiceText, applyOpenAiUsage } from './usage.ts';

const USAGE_NULL = ',"usage":null';
const LEADING_USAGE_NULL = '"usage":null,';

/**
 * Meters OpenAI chat and completions responses.
 *
 * When the gateway added `stream_options.include_usage` on the caller's behalf, the upstream adds
 * `"usage":null` to every chunk and one extra chunk with empty `choices` and the usage. This tap
 * then forwards whole events only, with that field and that chunk removed, so the caller receives
 * what it would have received without the gateway. An unfinished event waits for the rest of its
 * bytes; every other stream is forwarded chunk by chunk, untouched.
 */
export class OpenAiTap implements ResponseTap {
  readonly meter = new UsageMeter();
  private readonly parser: SseParser;
  private output: string[] = [];

  constructor(private readonly rewrite: boolean) {
    this.parser = new SseParser((event) => this.onEvent(event), rewrite);
  }

  streamChunk(chunk: Buffer): Buffer | undefined {
    this.parser.push(chunk);
    if (!this.rewrite) return chunk;
    if (this.output.length === 0) return undefined;
    const text = this.output.join('');
    this.output = [];
    return Buffer.from(text, 'utf8');
  }

  streamEnd(): Buffer | undefined {
    this.parser.end();
    if (!this.rewrite) return undefined;
    const text = this.output.join('') + this.parser.pendingRaw();
    this.output = [];
    return text === '' ? undefined : Buffer.from(text, 'utf8');
  }

  private onEvent(event: SseEvent): void {
    const data = event.data;
    if (data === '' || data === '[DONE]') {
      if (data === '[DONE]') this.meter.finished = true;
      if (this.rewrite) this.output.push(event.raw);
      return;
    }
    const chunk = tryParseJson(data) as Record<string, any> | undefined;
    if (chunk === undefined || chunk === null || typeof chunk !== 'object') {
      if (this.rewrite) this.output.push(event.raw);
      return;
    }
    if (chunk.error !== undefined) this.meter.errorEvent = true;
    if (this.meter.upstreamModel === null && typeof chunk.model === 'string') this.meter.upstreamModel = chunk.model;
    const choices = chunk.choices;
    if (Array.isArray(choices)) {
      for (const choice of choices) if (choice !== null && typeof choice === 'object') addChoiceText(this.meter, choice);
    }
    if (chunk.usage !== null && chunk.usage !== undefined) {
      applyOpenAiUsage(this.meter, chunk.usage);
      // Some compatible servers send running usage in every chunk; only the last chunk (empty
      // choices, or a finish reason) reports the final count.
      this.meter.usageReported = !Array.isArray(choices) || choices.length === 0 || choices.some((choice) => choice?.finish_reason != null);
      if (this.rewrite && Array.isArray(choices) && choices.length === 0) return;
    }
    if (this.rewrite) this.output.push(removeLastUsageNull(event.raw));
  }

  jsonBody(body: Buffer): void {
    const parsed = tryParseJson(body.toString('utf8')) as Record<string, any> | undefined;
    if (parsed === undefined || parsed === null) return;
    if (typeof parsed.model === 'string') this.meter.upstreamModel = parsed.model;
    if (Array.isArray(parsed.choices)) {
      for (const choice of parsed.choices) if (choice !== null && typeof choice === 'object') addChoiceText(this.meter, choice);
    }
    applyOpenAiUsage(this.meter, parsed.usage);
    this.meter.finished = true;
  }
}

/**
 * Removes the top-level `"usage":null` member. It is the last one in the chunk because OpenAI
 * writes `usage` after `choices`. Quotes inside JSON strings are escaped, so message text cannot
 * contain the unescaped pattern.
 */
function removeLastUsageNull(raw: string): string {
  const at = raw.lastIndexOf(USAGE_NULL);
  if (at !== -1) return raw.slice(0, at) + raw.slice(at + USAGE_NULL.length);
  const leading = raw.indexOf(LEADING_USAGE_NULL);
  return leading === -1 ? raw : raw.slice(0, leading) + raw.slice(leading + LEADING_USAGE_NULL.length);
}
