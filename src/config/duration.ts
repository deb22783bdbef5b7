const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const GO_DURATION = /^(\d+(?:\.\d+)?(?:ms|h|m|s))+$/;
const GO_PART = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;

/**
 * Parses a Go-style duration (`30s`, `10m`, `1h30m`, `250ms`) or a whole number of seconds
 * into milliseconds. Returns undefined for anything else, including negative values.
 */
export function parseDuration(input: string | number): number | undefined {
  if (typeof input === 'number') {
    return Number.isInteger(input) && input >= 0 ? input * 1000 : undefined;
  }
  const text = input.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  if (!GO_DURATION.test(text)) return undefined;
  let total = 0;
  for (const match of text.matchAll(GO_PART)) {
    total += Number(match[1]) * UNIT_MS[match[2]];
  }
  return Math.round(total);
}

/** Formats whole seconds the way Go prints a time.Duration, for example `24h0m0s`. */
export function formatDuration(seconds: number): string {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (h > 0) return `${h}h${m}m${s}s`;
  if (m > 0) return `${m}m${s}s`;
  return `${s}s`;
}
