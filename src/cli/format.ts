import { FEATURES, type Actor, type FeatureLimit, type FeatureLimits } from '../actors/types.ts';
import { formatDuration } from '../config/duration.ts';

export type Alignment = 'left' | 'right';

/**
 * Renders rows as columns separated by two spaces, with a header line. Columns are left-aligned
 * unless their entry in `alignments` is 'right'. Trailing spaces are removed from every line.
 */
/** Maximum length of a table cell; longer values are cut and end with an ellipsis. */
const MAX_CELL_LENGTH = 60;

/**
 * Makes a value safe to print in a terminal: control characters (escape sequences, line breaks)
 * become `?`, and long values are cut. Usage events hold caller-supplied text such as user agents.
 */
export function printableCell(value: string): string {
  const clean = value.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
  return clean.length > MAX_CELL_LENGTH ? `${clean.slice(0, MAX_CELL_LENGTH - 1)}…` : clean;
}

export function renderTable(headers: string[], rawRows: string[][], alignments: Alignment[] = []): string {
  const rows = rawRows.map((row) => row.map(printableCell));
  const widths = headers.map((header, column) => Math.max(header.length, ...rows.map((row) => (row[column] ?? '').length)));
  const renderRow = (cells: string[]): string =>
    cells
      .map((cell, column) => (alignments[column] === 'right' ? cell.padStart(widths[column]) : cell.padEnd(widths[column])))
      .join('  ')
      .trimEnd();
  return [renderRow(headers), ...rows.map(renderRow)].join('\n') + '\n';
}

/** Formats an ISO 8601 timestamp as `YYYY-MM-DD HH:MM:SS` in UTC, or `-` for null. */
export function formatTime(iso: string | null): string {
  if (iso === null) return '-';
  const time = new Date(iso);
  if (Number.isNaN(time.getTime())) return iso;
  return time.toISOString().slice(0, 19).replace('T', ' ');
}

function isEveryModel(limit: FeatureLimit): boolean {
  return limit.allowedModels.length === 1 && limit.allowedModels[0] === '*';
}

function orderedLimits(limits: FeatureLimits): [string, FeatureLimit][] {
  const entries: [string, FeatureLimit][] = [];
  for (const feature of FEATURES) {
    const limit = limits[feature];
    if (limit !== undefined) entries.push([feature, limit]);
  }
  return entries;
}

/**
 * Summarizes limits in the syntax of `--limit`, for example
 * `chat_completions=100/1h0m0s, embeddings=100000/24h0m0s:text-embedding-3-small`.
 */
export function summarizeLimits(limits: FeatureLimits): string {
  const parts = orderedLimits(limits).map(([feature, limit]) => {
    const models = isEveryModel(limit) ? '' : `:${limit.allowedModels.join(',')}`;
    return `${feature}=${limit.limit}/${formatDuration(limit.intervalSeconds)}${models}`;
  });
  return parts.length === 0 ? 'none' : parts.join(', ');
}

/** Renders an actor as an indented block of `field  value` lines, one line per feature limit. */
export function renderActor(actor: Actor): string {
  const lines = [
    `  id        ${actor.id}`,
    `  name      ${actor.name}`,
    `  enabled   ${actor.enabled ? 'yes' : 'no'}`,
    `  created   ${formatTime(actor.createdAt)} UTC`,
    `  updated   ${formatTime(actor.updatedAt)} UTC`,
  ];
  const limits = orderedLimits(actor.limits);
  if (limits.length === 0) {
    lines.push('  limits    none');
  } else {
    const featureWidth = Math.max(...limits.map(([feature]) => feature.length));
    limits.forEach(([feature, limit], index) => {
      const label = index === 0 ? '  limits    ' : '            ';
      const models = limit.allowedModels.join(', ');
      lines.push(`${label}${feature.padEnd(featureWidth)}  ${limit.limit} per ${formatDuration(limit.intervalSeconds)}, models: ${models}`);
    });
  }
  return lines.join('\n') + '\n';
}

export function formatJson(value: unknown): string {
  return JSON.stringify(value, null, 2) + '\n';
}
