/**
 * Local token estimates for responses whose provider reports no usage (legacy Text Completions,
 * streams cut short). The cl100k_base encoding is an approximation for every provider: Claude
 * models use their own tokenizer, so counts can differ by a few percent.
 *
 * Loading the encoding costs about 100 ms and 40 MB, so it is loaded once, in the background,
 * when the gateway starts, and never on the request path.
 */
type CountTokens = (text: string) => number;

let counter: CountTokens | undefined;
let loading: Promise<CountTokens> | undefined;

export function loadTokenizer(): Promise<CountTokens> {
  loading ??= import('gpt-tokenizer/encoding/cl100k_base').then((module) => {
    counter = module.countTokens as CountTokens;
    return counter;
  });
  return loading;
}

/** Counts tokens when the encoding is loaded; returns undefined before that. */
export function countTokensNow(text: string): number | undefined {
  if (text === '') return 0;
  return counter?.(text);
}

export async function countTokens(text: string): Promise<number> {
  if (text === '') return 0;
  return (counter ?? (await loadTokenizer()))(text);
}
