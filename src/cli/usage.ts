import { parseDuration } from '../config/duration.ts';
import type { UsageEvent } from '../usage/event.ts';
import {
  expectPositionals,
  flagOption,
  formatOptionsHelp,
  openStore,
  stringOption,
  UsageError,
  type CliCommand,
} from './args.ts';
import { eventToJson } from '../usage/json.ts';
import { formatJson, formatTime, renderTable, type Alignment } from './format.ts';

const DEFAULT_LIMIT = 50;
const ISO_DATE_START = /^\d{4}-\d{2}-\d{2}/;

/**
 * Converts `--since` to an ISO timestamp. A duration such as `1h` means that long before `now`.
 * Anything else must be an ISO 8601 date or time.
 */
export function parseSince(value: string, now: number, command: string): string {
  const ms = parseDuration(value);
  if (ms !== undefined) return new Date(now - ms).toISOString();

  const time = ISO_DATE_START.test(value) ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(time)) {
    throw new UsageError(
      `invalid --since ${JSON.stringify(value)}: expected a duration such as 30m or 24h, or an ISO 8601 time such as 2030-01-31T00:00:00Z`,
      command,
    );
  }
  return new Date(time).toISOString();
}

function parseLimit(value: string | undefined, command: string): number {
  if (value === undefined) return DEFAULT_LIMIT;
  const limit = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(limit) || limit < 1) {
    throw new UsageError(`invalid --limit ${JSON.stringify(value)}: expected a whole number of at least 1`, command);
  }
  return limit;
}

function formatCount(count: number | null, estimated: boolean): string {
  if (count === null) return '-';
  return estimated ? `~${count}` : String(count);
}

const COLUMNS: [string, Alignment][] = [
  ['TIME (UTC)', 'left'],
  ['ACTOR', 'left'],
  ['FEATURE', 'left'],
  ['MODEL', 'left'],
  ['OUTCOME', 'left'],
  ['STATUS', 'right'],
  ['INPUT', 'right'],
  ['OUTPUT', 'right'],
  ['DURATION_MS', 'right'],
];

/** Renders events as an aligned table. Token counts that the local tokenizer estimated start with `~`. */
export function renderUsageTable(events: UsageEvent[]): string {
  const rows = events.map((event) => [
    formatTime(event.timestamp),
    event.actorName,
    event.feature ?? '-',
    event.upstreamModel ?? event.requestedModel ?? '-',
    event.outcome,
    String(event.status),
    formatCount(event.inputTokens, event.tokensEstimated),
    formatCount(event.outputTokens, event.tokensEstimated),
    String(Math.round(event.durationMs)),
  ]);
  return renderTable(
    COLUMNS.map(([header]) => header),
    rows,
    COLUMNS.map(([, alignment]) => alignment),
  );
}

const usageCommand: CliCommand = {
  name: 'usage',
  summary: 'Show recent usage events',
  help: `Usage: llm-proxy usage [--actor ACTOR_ID] [--since TIME|DURATION] [--limit N] [--json]

Shows usage events, newest first. MODEL is the upstream model, or the requested model when
no upstream model was recorded. A ~ before a token count marks an estimate by the local
tokenizer instead of a count from the provider.

Options:
${formatOptionsHelp([
  ['--actor ACTOR_ID', 'Show only the events of this actor'],
  [
    '--since TIME|DURATION',
    'Show only events at or after an ISO 8601 time, such as\n' +
      '2030-01-31T00:00:00Z, or within a duration before now, such as 1h',
  ],
  ['--limit N', `Maximum number of events to show (default: ${DEFAULT_LIMIT})`],
  ['--json', 'Print the events as a JSON array'],
])}
`,
  options: {
    actor: { type: 'string' },
    since: { type: 'string' },
    limit: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values, positionals }, io) {
    expectPositionals(this.name, positionals, []);
    const rawSince = stringOption(values, 'since');
    const since = rawSince === undefined ? undefined : parseSince(rawSince, Date.now(), this.name);
    const limit = parseLimit(stringOption(values, 'limit'), this.name);

    const store = await openStore(values, io, { create: false });
    try {
      const events = await store.queryEvents({ actorId: stringOption(values, 'actor'), since, limit });
      if (flagOption(values, 'json')) {
        io.stdout.write(formatJson(events.map(eventToJson)));
      } else if (events.length === 0) {
        io.stdout.write('No usage events match.\n');
      } else {
        io.stdout.write(renderUsageTable(events));
        if (events.length === limit) {
          io.stdout.write(`Showing the newest ${limit} matching events. Raise --limit to see more.\n`);
        }
      }
      return 0;
    } finally {
      await store.close();
    }
  },
};

export const USAGE_COMMANDS: CliCommand[] = [usageCommand];
