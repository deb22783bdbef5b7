import { countTokens, countTokensNow } from './tokenizer.ts';

/** Generated text is tokenized in segments of this many characters, so it is never all kept. */
const SEGMENT_CHARS = 8192;

/** Token counts and text sizes gathered from one response as it passes through. */
export class UsageMeter {
  inputTokens: number | null = null;
  outputTokens: number | null = null;
  cacheCreationInputTokens: number | null = null;
  cacheReadInputTokens: number | null = null;
  reasoningTokens: number | null = null;
  /** Embeddings: the tokens the provider billed, which is what the quota consumes. */
  totalTokens: number | null = null;
  upstreamModel: string | null = null;
  completionChars = 0;
  /** The provider signalled an error inside a successful (2xx) response, such as an SSE error event. */
  errorEvent = false;
  /** The stream reached its documented last event (`message_stop`, `[DONE]`, a final stop reason). */
  finished = false;
  /** The provider sent its final usage report for the response. */
  usageReported = false;

  private segment = '';
  private segmentTokens = 0;

  addCompletionText(text: string): void {
    if (text === '') return;
    this.completionChars += text.length;
    this.segment += text;
    if (this.segment.length >= SEGMENT_CHARS) {
      const tokens = countTokensNow(this.segment);
      if (tokens === undefined) {
        // The tokenizer is still loading: keep the text and count it at the end.
        return;
      }
      this.segmentTokens += tokens;
      this.segment = '';
    }
  }

  /** Estimates the output tokens from the text seen so far. */
  async estimateOutputTokens(): Promise<number> {
    return this.segmentTokens + (await countTokens(this.segment));
  }
}
