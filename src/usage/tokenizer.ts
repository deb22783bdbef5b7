/**
 * Local token estimates for responses whose provider reports no usage (legacy Text Completions,
 * streams cut short). The cl100k_base encoding is an approximation for every provider: Claude
 * models use their own tokenizer, so counts can differ by a few percent.
 *
 * Loading the encoding costs about 100 ms and 40 MB, so it is loaded once, in the background,
 * when the gateway starts, and never on the request path.
 */
type CountTokens = (text: string) => number;

/**
 * Maximum length of a run counted in one call. Byte-pair merging costs the square of a piece's
 * length, so an unbroken run of 160,000 letters would block the event loop for seconds. Longer
 * runs are counted in slices of this length, which adds at most a token per slice.
 */
const MAX_RUN = 128;
/** Runs of MAX_RUN or more characters without a space, or of spaces only. */
const LONG_RUN = /[^ ]{128,}| {128,}/g;
/** Characters counted exactly. Tokens of any text beyond are extrapolated from them. */
const MAX_COUNTED_CHARS = 1024 * 1024;

/** Counts with a bound on the work: long runs in slices, and at most MAX_COUNTED_CHARS exactly. */
function countBounded(count: CountTokens, text: string): number {
  if (text.length > MAX_COUNTED_CHARS) {
    const counted = countBounded(count, text.slice(0, MAX_COUNTED_CHARS));
    return Math.ceil((counted * text.length) / MAX_COUNTED_CHARS);
  }
  let total = 0;
  let last = 0;
  for (const match of text.matchAll(LONG_RUN)) {
    const run = match[0];
    if (match.index > last) total += count(text.slice(last, match.index));
    for (let start = 0; start < run.length; start += MAX_RUN) total += count(run.slice(start, start + MAX_RUN));
    last = match.index + run.length;
  }
  return last < text.length ? total + count(text.slice(last)) : total;
}

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
  return counter === undefined ? undefined : countBounded(counter, text);
}

export async function countTokens(text: string): Promise<number> {
  if (text === '') return 0;
  return countBounded(counter ?? (await loadTokenizer()), text);
}
