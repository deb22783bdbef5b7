/**
 * `npm run bench:soak`: steady load on the governed gateway for 10 minutes, sampling its RSS every
 * 5 seconds, and reports the RSS growth per minute after the warm-up as a least-squares slope.
 * Writes bench/results/<time>-soak.json; a run of the default length and rate also rewrites the
 * soak section of docs/benchmarks.md.
 *
 * Options:
 *   --target gateway|reference   process under load (default gateway); the reference proxy
 *                                shows how much growth Node.js and undici alone produce
 * Environment:
 *   BENCH_SOAK_MINUTES          total load time in minutes (default 10)
 *   BENCH_SOAK_WARMUP_MINUTES   leading minutes left out of the slope (default 2)
 *   BENCH_SOAK_RATE             requests per second (default 500)
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { openAiBody, runPaced } from './lib/load.ts';
import { killAllChildren, readCpuMs, readRss } from './lib/processes.ts';
import { describeEnvironment, fileStamp, replaceSection } from './lib/report.ts';
import { distribution, slope } from './lib/stats.ts';
import { REPO_ROOT, startGateway, startReference, startUpstream, type Target } from './lib/targets.ts';

const DEFAULT_MINUTES = 10;
const DEFAULT_WARMUP_MINUTES = 2;
const DEFAULT_RATE = 500;
const SAMPLE_INTERVAL_MS = 5000;
/** Load runs in segments of this length; each opens a fresh pool of client connections. */
const SEGMENT_MS = 10_000;
const CONNECTIONS = 20;
const MIB = 1024 * 1024;
const GROWTH_LIMIT_MIB_PER_MINUTE = 1;

function log(message: string): void {
  process.stderr.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

function positiveNumber(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`invalid ${name}=${JSON.stringify(raw)}; expected a positive number`);
  return value;
}

interface Sample {
  /** Seconds since the load started. */
  seconds: number;
  rssBytes: number;
}

interface Segment {
  startSeconds: number;
  requests: number;
  errors: number;
  p50Ms: number;
  p99Ms: number;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { target: { type: 'string', default: 'gateway' } } });
  if (values.target !== 'gateway' && values.target !== 'reference') throw new Error(`invalid --target ${JSON.stringify(values.target)}; expected gateway or reference`);
  const minutes = positiveNumber('BENCH_SOAK_MINUTES', DEFAULT_MINUTES);
  const warmupMinutes = positiveNumber('BENCH_SOAK_WARMUP_MINUTES', DEFAULT_WARMUP_MINUTES);
  const rate = positiveNumber('BENCH_SOAK_RATE', DEFAULT_RATE);
  if (warmupMinutes >= minutes) throw new Error(`BENCH_SOAK_WARMUP_MINUTES (${warmupMinutes}) must be less than BENCH_SOAK_MINUTES (${minutes})`);

  const startedAt = new Date();
  const logDir = mkdtempSync(join(tmpdir(), 'llm-proxy-soak-logs-'));
  const upstream = await startUpstream(logDir);
  const context = { logDir, upstreamOrigin: upstream.origin };
  const target: Target = values.target === 'gateway' ? await startGateway(context) : await startReference(context);
  // Three JSON requests to one stream of eight events, all OpenAI Chat Completions.
  const bodies = [openAiBody('gpt-4o-mini', false), openAiBody('gpt-4o-mini', false), openAiBody('gpt-4o-mini', false), openAiBody('gpt-4o-mini', true)];
  log(`${target.label}: ${rate} requests/s for ${minutes} minutes, RSS every ${SAMPLE_INTERVAL_MS / 1000} s; server logs in ${logDir}`);

  const samples: Sample[] = [];
  const segments: Segment[] = [];
  const loadStart = Date.now();
  const endAt = loadStart + minutes * 60_000;
  const cpuBefore = readCpuMs(target.pid);
  samples.push({ seconds: 0, rssBytes: readRss(target.pid) });
  const sampler = setInterval(() => samples.push({ seconds: (Date.now() - loadStart) / 1000, rssBytes: readRss(target.pid) }), SAMPLE_INTERVAL_MS);

  try {
    while (Date.now() < endAt) {
      const segmentStart = (Date.now() - loadStart) / 1000;
      const duration = Math.min(SEGMENT_MS, endAt - Date.now());
      const result = await runPaced(target, target.openai, bodies, rate, duration, CONNECTIONS);
      const latency = distribution(result.latenciesMs);
      segments.push({ startSeconds: segmentStart, requests: result.latenciesMs.length, errors: result.errors, p50Ms: latency.p50, p99Ms: latency.p99 });
      if (result.overloaded) log(`segment at ${segmentStart.toFixed(0)} s: the target fell behind the schedule`);
      const minute = Math.floor(segmentStart / 60);
      if (segments.length % 6 === 0) log(`minute ${minute + 1} of ${minutes}: RSS ${(readRss(target.pid) / MIB).toFixed(1)} MiB, p99 ${latency.p99.toFixed(1)} ms`);
    }
  } finally {
    clearInterval(sampler);
  }
  samples.push({ seconds: (Date.now() - loadStart) / 1000, rssBytes: readRss(target.pid) });
  const cpuSeconds = (readCpuMs(target.pid) - cpuBefore) / 1000;
  await sleep(2000);
  const idleAfter = readRss(target.pid);
  await target.stop();
  await upstream.server.stop();

  const measured = samples.filter((sample) => sample.seconds >= warmupMinutes * 60);
  const growth = slope(
    measured.map((sample) => sample.seconds / 60),
    measured.map((sample) => sample.rssBytes / MIB),
  );
  const requests = segments.reduce((sum, segment) => sum + segment.requests, 0);
  const errors = segments.reduce((sum, segment) => sum + segment.errors, 0);
  const record = {
    kind: 'soak',
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    target: target.id,
    minutes,
    warmupMinutes,
    rate,
    environment: describeEnvironment(),
    requests,
    errors,
    targetCpuSeconds: cpuSeconds,
    rssGrowthMiBPerMinute: growth,
    limitMiBPerMinute: GROWTH_LIMIT_MIB_PER_MINUTE,
    pass: growth <= GROWTH_LIMIT_MIB_PER_MINUTE,
    rssAfterLoadBytes: idleAfter,
    samples,
    segments,
  };
  const resultsDir = join(REPO_ROOT, 'bench', 'results');
  mkdirSync(resultsDir, { recursive: true });
  const resultFile = join(resultsDir, `${fileStamp(startedAt)}-soak.json`);
  writeFileSync(resultFile, `${JSON.stringify(record, null, 2)}\n`);
  const relativeFile = relative(REPO_ROOT, resultFile);

  const first = measured[0];
  const last = measured[measured.length - 1];
  const p99s = segments.map((segment) => segment.p99Ms);
  const markdown = [
    `### Soak of ${record.startedAt.slice(0, 16).replace('T', ' ')} UTC`,
    [
      `- Target: ${target.label}; ${rate} requests/s (three JSON requests to one stream of eight events) over ${CONNECTIONS} connections for ${minutes} minutes`,
      `- Machine: ${record.environment.cpuModel}, ${record.environment.cores} cores; Node.js ${record.environment.node}; commit \`${record.environment.commit.slice(0, 12)}\`${record.environment.dirty ? ' with uncommitted changes' : ''}`,
      `- Raw figures: [\`${relativeFile}\`](../${relativeFile})`,
    ].join('\n'),
    [
      '| Figure | Value |',
      '| --- | --- |',
      `| RSS at start of load | ${(samples[0].rssBytes / MIB).toFixed(1)} MiB |`,
      `| RSS after ${warmupMinutes} minutes of warm-up | ${(first.rssBytes / MIB).toFixed(1)} MiB |`,
      `| RSS at end of load | ${(last.rssBytes / MIB).toFixed(1)} MiB |`,
      `| RSS growth after warm-up (least-squares slope) | ${growth.toFixed(3)} MiB/minute (limit ${GROWTH_LIMIT_MIB_PER_MINUTE}: ${record.pass ? 'pass' : 'FAIL'}) |`,
      `| Requests, errors | ${requests}, ${errors} |`,
      `| p99 latency per 10 s segment, median and max | ${distribution(p99s).p50.toFixed(1)} ms, ${distribution(p99s).max.toFixed(1)} ms |`,
      `| Target CPU time | ${cpuSeconds.toFixed(1)} s (${((1e6 * cpuSeconds) / Math.max(1, requests)).toFixed(0)} µs per request) |`,
    ].join('\n'),
  ].join('\n\n');
  process.stdout.write(`${markdown}\n`);
  log(`wrote ${relativeFile}`);

  const defaultRun = minutes === DEFAULT_MINUTES && warmupMinutes === DEFAULT_WARMUP_MINUTES && rate === DEFAULT_RATE && target.id === 'gateway';
  if (defaultRun) {
    replaceSection(join(REPO_ROOT, 'docs', 'benchmarks.md'), 'bench-soak', markdown);
    log('updated docs/benchmarks.md');
  } else {
    log('docs/benchmarks.md left unchanged: only a run with the default target, length and rate updates it');
  }
  rmSync(logDir, { recursive: true, force: true });
}

try {
  await main();
} catch (error) {
  killAllChildren();
  log(`failed: ${(error as Error).stack ?? String(error)}`);
  process.exitCode = 1;
}
