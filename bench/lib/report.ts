/** Result records of a benchmark run, the budget check, and their Markdown rendering. */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, release, totalmem, type } from 'node:os';
import { join } from 'node:path';
import type { MemoryResults, MemoryTargetResult, SequentialResults, StreamingResults, ThroughputResults } from './lanes.ts';
import { LATENCY_LIMIT_MS, OPEN_STREAMS, STREAM_EVENTS, STREAM_INTERVAL_MS, THROUGHPUT_CONNECTIONS } from './lanes.ts';
import type { CpuShare } from './processes.ts';
import { REPO_ROOT, type TargetId } from './targets.ts';

export const LANE_NAMES = ['sequential', 'throughput', 'streaming', 'memory'] as const;
export type LaneName = (typeof LANE_NAMES)[number];

export interface Environment {
  cpuModel: string;
  cores: number;
  memoryBytes: number;
  os: string;
  node: string;
  commit: string;
  /** True when the work tree had uncommitted changes. */
  dirty: boolean;
  versions: Record<string, string>;
}

export interface TargetStatus {
  id: TargetId;
  label: string;
  status: 'measured' | 'unavailable' | 'failed';
  reason?: string;
}

export interface BudgetLine {
  rule: string;
  /** Measured value; null when a target it needs was not measured. */
  value: number | null;
  limit: string;
  pass: boolean | null;
}

export interface RunRecord {
  kind: 'bench';
  startedAt: string;
  finishedAt: string;
  quick: boolean;
  lanes: LaneName[];
  environment: Environment;
  targets: TargetStatus[];
  sequential?: SequentialResults;
  throughput?: ThroughputResults;
  streaming?: StreamingResults;
  memory?: MemoryResults;
  /** CPU use of the machine during each comparing lane, by this benchmark and by anything else. */
  cpu: Partial<Record<LaneName, CpuShare>>;
  budget: BudgetLine[];
}

function git(args: string[]): string {
  try {
    return execFileSync('git', args, { cwd: REPO_ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '';
  }
}

function packageVersion(name: string): string {
  try {
    return (JSON.parse(readFileSync(join(REPO_ROOT, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'missing';
  }
}

export function describeEnvironment(extraVersions: Record<string, string> = {}): Environment {
  const processors = cpus();
  return {
    cpuModel: processors[0]?.model ?? 'unknown',
    cores: processors.length,
    memoryBytes: totalmem(),
    os: `${type()} ${release()}`,
    node: process.version,
    commit: git(['rev-parse', 'HEAD']) || 'unknown',
    dirty: git(['status', '--porcelain']) !== '',
    versions: { autocannon: packageVersion('autocannon'), undici: packageVersion('undici'), ...extraVersions },
  };
}

/** File-name-safe UTC time stamp, such as 2026-01-31T14-05-09Z. */
export function fileStamp(date: Date): string {
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z').replaceAll(':', '-');
}

function isMemoryResult(value: MemoryResults[TargetId]): value is MemoryTargetResult {
  return value !== undefined && !('error' in value);
}

const MB = 1_000_000;

export function checkBudget(record: Omit<RunRecord, 'budget' | 'finishedAt'>): BudgetLine[] {
  const lines: BudgetLine[] = [];
  const ratio = (a: number | undefined | null, b: number | undefined | null) => (a === undefined || a === null || b === undefined || b === null || b === 0 ? null : a / b);
  const line = (rule: string, value: number | null, limit: string, test: (value: number) => boolean) =>
    lines.push({ rule, value, limit, pass: value === null || Number.isNaN(value) ? null : test(value) });

  if (record.throughput !== undefined) {
    const gateway = record.throughput.gateway?.requestsPerSecond;
    line(`throughput at ${THROUGHPUT_CONNECTIONS} connections, gateway / reference`, ratio(gateway, record.throughput.reference?.requestsPerSecond), '>= 0.7', (v) => v >= 0.7);
    line(`throughput at ${THROUGHPUT_CONNECTIONS} connections, gateway / Portkey`, ratio(gateway, record.throughput.portkey?.requestsPerSecond), '>= 3', (v) => v >= 3);
  }
  if (record.sequential !== undefined) {
    const openai = record.sequential.openai;
    line('added latency p50 at concurrency 1, gateway / reference', ratio(openai.gateway?.addedMs?.p50, openai.reference?.addedMs?.p50), '<= 1.5', (v) => v <= 1.5);
  }
  if (record.streaming !== undefined) {
    const openai = record.streaming.openai;
    const gateway = openai.gateway?.addedFirstEventP50Ms;
    const reference = openai.reference?.addedFirstEventP50Ms;
    line('streaming: added time to first event p50, gateway minus reference (ms)', gateway == null || reference == null ? null : gateway - reference, '<= 1 ms', (v) => v <= 1);
    line('streaming: p99 of added gap between events (median of rounds), gateway minus direct (ms)', openai.gateway?.addedGapP99NetMs ?? null, '<= 1 ms', (v) => v <= 1);
  }
  if (record.memory !== undefined) {
    const gateway = record.memory.gateway;
    line(`${OPEN_STREAMS} open streams: gateway RSS above idle (MB)`, isMemoryResult(gateway) ? gateway.deltaBytes / MB : null, '<= 60 MB', (v) => v <= 60);
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------
// Markdown

function ms(value: number | null | undefined, digits = 3): string {
  if (value === null || value === undefined || Number.isNaN(value)) return 'n/a';
  return value.toFixed(digits);
}

function signed(value: number | null | undefined, digits = 3): string {
  if (value === null || value === undefined || Number.isNaN(value)) return 'n/a';
  return `${value >= 0 ? '+' : ''}${value.toFixed(digits)}`;
}

function megabytes(bytes: number): string {
  return (bytes / MB).toFixed(1);
}

function ratioText(a: number | null | undefined, b: number | null | undefined): string {
  if (a === null || a === undefined || b === null || b === undefined || b === 0 || Number.isNaN(a) || Number.isNaN(b)) return 'n/a';
  return `${(a / b).toFixed(2)}×`;
}

function table(header: string[], rows: string[][]): string {
  const lines = [`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`];
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`);
  return lines.join('\n');
}

function labelOf(record: RunRecord, id: TargetId): string {
  return record.targets.find((target) => target.id === id)?.label ?? id;
}

function orderedIds<T>(record: RunRecord, results: Partial<Record<TargetId, T>>): TargetId[] {
  return record.targets.map((target) => target.id).filter((id) => results[id] !== undefined);
}

function renderSequential(record: RunRecord, results: SequentialResults): string {
  const parts: string[] = [];
  for (const api of ['openai', 'anthropic'] as const) {
    const byTarget = results[api];
    const rows = orderedIds(record, byTarget).map((id) => {
      const entry = byTarget[id]!;
      return [
        labelOf(record, id),
        ms(entry.latencyMs.p50),
        ms(entry.latencyMs.p90),
        ms(entry.latencyMs.p99),
        signed(entry.addedMs?.p50),
        signed(entry.addedMs?.p90),
        signed(entry.addedMs?.p99),
        String(entry.latencyMs.count),
        String(entry.errors),
      ];
    });
    if (rows.length === 0) continue;
    const title = api === 'openai' ? 'OpenAI `POST /v1/chat/completions`, JSON' : 'Anthropic `POST /v1/messages`, JSON';
    parts.push(`${title} (milliseconds):\n\n${table(['Target', 'p50', 'p90', 'p99', 'added p50', 'added p90', 'added p99', 'requests', 'errors'], rows)}`);
    const gateway = byTarget.gateway?.addedMs?.p50;
    parts.push(`Added p50, gateway / reference: ${ratioText(gateway, byTarget.reference?.addedMs?.p50)}; gateway / Portkey: ${ratioText(gateway, byTarget.portkey?.addedMs?.p50)}.`);
  }
  return parts.join('\n\n');
}

function renderThroughput(record: RunRecord, results: ThroughputResults): string {
  const rows = orderedIds(record, results).map((id) => {
    const entry = results[id]!;
    return [
      labelOf(record, id),
      entry.requestsPerSecond.toFixed(0),
      entry.roundsRequestsPerSecond.map((value) => value.toFixed(0)).join(', '),
      String(entry.latencyP50Ms),
      String(entry.latencyP99Ms),
      entry.maxRateUnderLimit === 0 ? 'none passed' : String(entry.maxRateUnderLimit),
      entry.cpuMicrosPerRequest.toFixed(0),
      String(entry.errors + entry.non2xx),
    ];
  });
  const gateway = results.gateway;
  return [
    table(['Target', 'requests/s', 'per round', 'p50 ms', 'p99 ms', `max rate with p99 < ${LATENCY_LIMIT_MS} ms (requests/s)`, 'target CPU per request (µs)', 'errors'], rows),
    `Throughput, gateway / reference: ${ratioText(gateway?.requestsPerSecond, results.reference?.requestsPerSecond)}; gateway / Portkey: ${ratioText(gateway?.requestsPerSecond, results.portkey?.requestsPerSecond)}. ` +
      `Max rate with p99 < ${LATENCY_LIMIT_MS} ms, gateway / reference: ${ratioText(gateway?.maxRateUnderLimit, results.reference?.maxRateUnderLimit)}; gateway / Portkey: ${ratioText(gateway?.maxRateUnderLimit, results.portkey?.maxRateUnderLimit)}.`,
  ].join('\n\n');
}

function renderStreaming(record: RunRecord, results: StreamingResults): string {
  const parts: string[] = [];
  for (const api of ['openai', 'anthropic'] as const) {
    const byTarget = results[api];
    const rows = orderedIds(record, byTarget).map((id) => {
      const entry = byTarget[id]!;
      return [
        labelOf(record, id),
        ms(entry.firstEventMs.p50),
        ms(entry.firstEventMs.p99),
        signed(entry.addedFirstEventP50Ms),
        ms(entry.addedGapMs.p50),
        ms(entry.addedGapMs.p99),
        ms(entry.addedGapMs.max),
        ms(entry.addedGapP99MedianOfRoundsMs),
        signed(entry.addedGapP99NetMs),
        `${entry.streams - entry.incomplete - entry.errors} / ${entry.streams}${entry.firstError === undefined ? '' : ` (${entry.firstError})`}`,
      ];
    });
    if (rows.length === 0) continue;
    const title = api === 'openai' ? 'OpenAI chat stream' : 'Anthropic messages stream';
    parts.push(
      `${title}, ${STREAM_EVENTS} events ${STREAM_INTERVAL_MS} ms apart (milliseconds):\n\n` +
        table(
          ['Target', 'first event p50', 'first event p99', 'added first event p50', 'added gap p50', 'added gap p99', 'added gap max', 'added gap p99, median of rounds', 'same, minus direct', 'complete streams'],
          rows,
        ),
    );
    const gateway = byTarget.gateway;
    parts.push(
      `Added time to first event p50, gateway / reference: ${ratioText(gateway?.addedFirstEventP50Ms, byTarget.reference?.addedFirstEventP50Ms)}; gateway / Portkey: ${ratioText(gateway?.addedFirstEventP50Ms, byTarget.portkey?.addedFirstEventP50Ms)}.`,
    );
  }
  return parts.join('\n\n');
}

function renderMemory(record: RunRecord, results: MemoryResults): string {
  const rows = orderedIds(record, results).map((id) => {
    const entry = results[id]!;
    if (!isMemoryResult(entry)) return [labelOf(record, id), 'failed', '', '', '', entry.error];
    return [
      labelOf(record, id),
      megabytes(entry.idleRssBytes),
      megabytes(entry.openRssBytes),
      entry.deltaRunsBytes === undefined || entry.deltaRunsBytes.length < 2 ? megabytes(entry.deltaBytes) : `${megabytes(entry.deltaBytes)} (runs: ${entry.deltaRunsBytes.map(megabytes).join(', ')})`,
      megabytes(entry.afterCloseRssBytes),
      `${entry.opened} / ${OPEN_STREAMS}${entry.firstError === undefined ? '' : ` (${entry.firstError})`}`,
    ];
  });
  const gateway = results.gateway;
  const reference = results.reference;
  const portkey = results.portkey;
  const delta = (entry: MemoryResults[TargetId]) => (isMemoryResult(entry) ? entry.deltaBytes : null);
  return [
    table(['Target', 'idle RSS (MB)', `RSS with ${OPEN_STREAMS} open streams (MB)`, 'above idle (MB), median run', 'after closing (MB)', 'streams opened'], rows),
    `RSS above idle, gateway / reference: ${ratioText(delta(gateway), delta(reference))}; gateway / Portkey: ${ratioText(delta(gateway), delta(portkey))}.`,
  ].join('\n\n');
}

export function renderRun(record: RunRecord, resultFile: string): string {
  const env = record.environment;
  const parts: string[] = [];
  parts.push(`### Run of ${record.startedAt.slice(0, 16).replace('T', ' ')} UTC${record.quick ? ' (quick)' : ''}`);
  parts.push(
    [
      `- Machine: ${env.cpuModel}, ${env.cores} cores, ${(env.memoryBytes / 2 ** 30).toFixed(1)} GiB, ${env.os}`,
      `- Node.js ${env.node}; commit \`${env.commit.slice(0, 12)}\`${env.dirty ? ' with uncommitted changes' : ''}`,
      `- Versions: ${Object.entries(env.versions)
        .map(([name, version]) => `${name} ${version}`)
        .join(', ')}`,
      `- Raw figures: [\`${resultFile}\`](../${resultFile})`,
    ].join('\n'),
  );
  const statusRows = record.targets.map((target) => [target.label, target.status, target.reason ?? '']);
  parts.push(`Targets:\n\n${table(['Target', 'Status', 'Note'], statusRows)}`);
  const cpuRows = Object.entries(record.cpu).map(([lane, share]) => [
    lane,
    share.machinePercent.toFixed(0),
    share.benchmarkPercent.toFixed(0),
    share.otherPercent.toFixed(0),
    share.stealPercent.toFixed(0),
  ]);
  if (cpuRows.length > 0) {
    parts.push(
      `CPU use during each lane, in percent of one core (${env.cores} cores = ${env.cores * 100} %). "Other" is load from outside the benchmark, which adds noise:\n\n` +
        table(['Lane', 'machine', 'benchmark', 'other', 'steal'], cpuRows),
    );
  }
  const budgetRows = record.budget.map((line) => {
    const measured = line.value === null ? 'n/a' : line.value.toFixed(3);
    let verdict = 'FAIL';
    if (line.pass === null) verdict = 'not measured';
    else if (line.pass) verdict = 'pass';
    return [line.rule, measured, line.limit, verdict];
  });
  parts.push(`Budget:\n\n${table(['Line', 'Measured', 'Limit', 'Result'], budgetRows)}`);
  if (record.sequential !== undefined) parts.push(`#### Sequential requests (concurrency 1)\n\n${renderSequential(record, record.sequential)}`);
  if (record.throughput !== undefined) parts.push(`#### Throughput at ${THROUGHPUT_CONNECTIONS} connections\n\n${renderThroughput(record, record.throughput)}`);
  if (record.streaming !== undefined) parts.push(`#### Streaming\n\n${renderStreaming(record, record.streaming)}`);
  if (record.memory !== undefined) parts.push(`#### Memory with ${OPEN_STREAMS} open streams\n\n${renderMemory(record, record.memory)}`);
  return parts.join('\n\n');
}

/**
 * Replaces the text between `<!-- name:start -->` and `<!-- name:end -->` in a Markdown file, or
 * appends the marked section when the markers are missing.
 */
export function replaceSection(path: string, name: string, content: string): void {
  const start = `<!-- ${name}:start -->`;
  const end = `<!-- ${name}:end -->`;
  const block = `${start}\n${content}\n${end}`;
  const text = existsSync(path) ? readFileSync(path, 'utf8') : '';
  const from = text.indexOf(start);
  const to = text.indexOf(end);
  const updated = from !== -1 && to > from ? text.slice(0, from) + block + text.slice(to + end.length) : `${text.trimEnd()}\n\n${block}\n`;
  writeFileSync(path, updated);
}
