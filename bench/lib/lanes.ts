/**
 * The benchmark lanes. Lanes that compare targets run them interleaved (round 1: A, B, C;
 * round 2: A, B, C; ...) so that drift on a shared machine affects every target alike.
 */
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client } from 'undici';
import { anthropicBody, openAiBody, openHeldStreams, runClosedLoop, runPaced, runSequential, runStream, type StreamResult } from './load.ts';
import { readCpuMs, readRss } from './processes.ts';
import { distribution, median, type Distribution } from './stats.ts';
import type { Endpoint, Target, TargetId } from './targets.ts';

export type Api = 'openai' | 'anthropic';

export interface LaneSettings {
  quick: boolean;
  log: (message: string) => void;
}

function endpointFor(target: Target, api: Api): Endpoint | undefined {
  return api === 'openai' ? target.openai : target.anthropic;
}

function bodyFor(api: Api, model: string, stream: boolean): string {
  return api === 'openai' ? openAiBody(model, stream) : anthropicBody(model, stream);
}

// ---------------------------------------------------------------------------------------------
// Lane 1: sequential requests

export interface SequentialTargetResult {
  latencyMs: Distribution;
  /** Target percentile minus the direct percentile, in milliseconds. */
  addedMs: { p50: number; p90: number; p99: number } | null;
  errors: number;
  firstError?: string;
}

export type SequentialResults = Record<Api, Partial<Record<TargetId, SequentialTargetResult>>>;

export async function sequentialLane(targets: Target[], settings: LaneSettings): Promise<SequentialResults> {
  const rounds = settings.quick ? 2 : 6;
  const perRound = settings.quick ? 250 : 400;
  const warmup = settings.quick ? 100 : 300;
  const results: SequentialResults = { openai: {}, anthropic: {} };

  for (const api of ['openai', 'anthropic'] as const) {
    const body = bodyFor(api, api === 'openai' ? 'gpt-4o-mini' : 'claude-sonnet-4-20250514', false);
    const measured = targets.filter((target) => endpointFor(target, api) !== undefined);
    const clients = new Map(measured.map((target) => [target.id, new Client(target.origin, { pipelining: 1, keepAliveTimeout: 60_000 })]));
    const samples = new Map<TargetId, number[]>(measured.map((target) => [target.id, []]));
    const errors = new Map<TargetId, { count: number; first?: string }>(measured.map((target) => [target.id, { count: 0 }]));

    for (const target of measured) {
      await runSequential(clients.get(target.id)!, endpointFor(target, api)!, body, { count: warmup, timeLimitMs: 30_000 });
    }
    for (let round = 0; round < rounds; round++) {
      settings.log(`sequential ${api}: round ${round + 1} of ${rounds}`);
      for (const target of measured) {
        const result = await runSequential(clients.get(target.id)!, endpointFor(target, api)!, body, { count: perRound, timeLimitMs: 30_000 });
        samples.get(target.id)!.push(...result.latenciesMs);
        const failures = errors.get(target.id)!;
        failures.count += result.errors;
        failures.first ??= result.firstError;
      }
    }
    await Promise.all([...clients.values()].map((client) => client.close()));

    const direct = samples.has('direct') ? distribution(samples.get('direct')!) : undefined;
    for (const target of measured) {
      const latency = distribution(samples.get(target.id)!);
      const failures = errors.get(target.id)!;
      results[api][target.id] = {
        latencyMs: latency,
        addedMs: direct === undefined ? null : { p50: latency.p50 - direct.p50, p90: latency.p90 - direct.p90, p99: latency.p99 - direct.p99 },
        errors: failures.count,
        ...(failures.first === undefined ? {} : { firstError: failures.first }),
      };
    }
  }
  return results;
}

// ---------------------------------------------------------------------------------------------
// Lane 2: throughput at 50 connections, and the highest rate with p99 under 50 ms

export const THROUGHPUT_CONNECTIONS = 50;
export const LATENCY_LIMIT_MS = 50;

export interface RateStep {
  rate: number;
  achievedRate: number;
  p99Ms: number;
  errors: number;
  overloaded: boolean;
  pass: boolean;
}

export interface ThroughputTargetResult {
  /** Mean over the rounds of successful responses per second. */
  requestsPerSecond: number;
  roundsRequestsPerSecond: number[];
  /** Medians over the rounds of autocannon's whole-millisecond percentiles. */
  latencyP50Ms: number;
  latencyP99Ms: number;
  errors: number;
  non2xx: number;
  /** CPU time of the target process per successful request, median over the rounds, in microseconds. */
  cpuMicrosPerRequest: number;
  /** Highest tested rate at which p99 stayed under LATENCY_LIMIT_MS; 0 when none passed. */
  maxRateUnderLimit: number;
  rateSteps: RateStep[];
}

export type ThroughputResults = Partial<Record<TargetId, ThroughputTargetResult>>;

export async function throughputLane(targets: Target[], settings: LaneSettings): Promise<ThroughputResults> {
  const rounds = settings.quick ? 1 : 4;
  const seconds = settings.quick ? 3 : 5;
  const searchSteps = settings.quick ? 3 : 6;
  const stepMs = settings.quick ? 2000 : 3000;
  const body = openAiBody('gpt-4o-mini', false);
  const results: ThroughputResults = {};

  for (const target of targets) {
    settings.log(`throughput: warm-up ${target.id}`);
    await runClosedLoop(target, target.openai, body, THROUGHPUT_CONNECTIONS, settings.quick ? 1 : 2);
  }
  const rounded = new Map<TargetId, Awaited<ReturnType<typeof runClosedLoop>>[]>(targets.map((target) => [target.id, []]));
  const cpuPerRequest = new Map<TargetId, number[]>(targets.map((target) => [target.id, []]));
  for (let round = 0; round < rounds; round++) {
    for (const target of targets) {
      settings.log(`throughput: round ${round + 1} of ${rounds}, ${target.id}`);
      const cpuBefore = readCpuMs(target.pid);
      const run = await runClosedLoop(target, target.openai, body, THROUGHPUT_CONNECTIONS, seconds);
      rounded.get(target.id)!.push(run);
      cpuPerRequest.get(target.id)!.push(((readCpuMs(target.pid) - cpuBefore) * 1000) / Math.max(1, run.completed));
    }
  }
  for (const target of targets) {
    const runs = rounded.get(target.id)!;
    const perSecond = runs.map((run) => run.requestsPerSecond);
    results[target.id] = {
      requestsPerSecond: perSecond.reduce((sum, value) => sum + value, 0) / runs.length,
      roundsRequestsPerSecond: perSecond,
      latencyP50Ms: median(runs.map((run) => run.latencyP50Ms)),
      latencyP99Ms: median(runs.map((run) => run.latencyP99Ms)),
      errors: runs.reduce((sum, run) => sum + run.errors, 0),
      non2xx: runs.reduce((sum, run) => sum + run.non2xx, 0),
      cpuMicrosPerRequest: median(cpuPerRequest.get(target.id)!),
      maxRateUnderLimit: 0,
      rateSteps: [],
    };
  }

  // Bisection between 0 and 1.2 × the closed-loop throughput, one step per target in turn.
  const bounds = new Map(targets.map((target) => [target.id, { low: 0, high: 1.2 * results[target.id]!.requestsPerSecond }]));
  for (let step = 0; step < searchSteps; step++) {
    for (const target of targets) {
      const range = bounds.get(target.id)!;
      const rate = Math.max(1, Math.round((range.low + range.high) / 2));
      settings.log(`throughput: rate search step ${step + 1} of ${searchSteps}, ${target.id} at ${rate} requests/s`);
      const paced = await runPaced(target, target.openai, body, rate, stepMs, THROUGHPUT_CONNECTIONS);
      const p99 = distribution(paced.latenciesMs).p99;
      const pass = !paced.overloaded && paced.errors === 0 && paced.latenciesMs.length > 0 && p99 < LATENCY_LIMIT_MS && paced.achievedRate >= 0.97 * rate;
      results[target.id]!.rateSteps.push({ rate, achievedRate: paced.achievedRate, p99Ms: p99, errors: paced.errors, overloaded: paced.overloaded, pass });
      if (pass) range.low = rate;
      else range.high = rate;
      await sleep(200);
    }
  }
  for (const target of targets) results[target.id]!.maxRateUnderLimit = bounds.get(target.id)!.low;
  return results;
}

// ---------------------------------------------------------------------------------------------
// Lane 3: streaming, 64 events paced 20 ms apart

export const STREAM_EVENTS = 64;
export const STREAM_INTERVAL_MS = 20;
/** Number of streams open at once through a target, with their starts spread over one event interval. */
export const STREAMS_PER_BATCH = 8;

export interface StreamingTargetResult {
  firstEventMs: Distribution;
  /** Added gaps of every round pooled together. */
  addedGapMs: Distribution;
  /**
   * Median over the rounds of each round's p99 added gap. A pause of the whole machine (another
   * job, the hypervisor) delays every open stream at once and can decide the pooled p99 alone.
   * The median over rounds is robust to a few such rounds.
   */
  addedGapP99MedianOfRoundsMs: number;
  /** Target p50 time to first event minus the direct p50, in milliseconds. */
  addedFirstEventP50Ms: number | null;
  /** addedGapP99MedianOfRoundsMs minus the same figure for direct, in milliseconds. */
  addedGapP99NetMs: number | null;
  streams: number;
  incomplete: number;
  errors: number;
  firstError?: string;
}

export type StreamingResults = Record<Api, Partial<Record<TargetId, StreamingTargetResult>>>;

/** Runs `count` streams at once, their starts spread over one event interval. */
async function streamBatch(target: Target, endpoint: Endpoint, body: string, agent: http.Agent, count: number): Promise<PromiseSettledResult<StreamResult>[]> {
  const timeoutMs = STREAM_EVENTS * STREAM_INTERVAL_MS + 10_000;
  const runs: Promise<StreamResult>[] = [];
  for (let i = 0; i < count; i++) {
    runs.push(runStream(target, endpoint, body, agent, timeoutMs));
    await sleep(STREAM_INTERVAL_MS / count);
  }
  return Promise.allSettled(runs);
}

interface StreamSamples {
  firstEvent: number[];
  gaps: number[];
  roundGapP99: number[];
  streams: number;
  incomplete: number;
  errors: number;
  firstError?: string;
}

function collectBatch(entry: StreamSamples, outcomes: PromiseSettledResult<StreamResult>[]): void {
  const roundGaps: number[] = [];
  for (const outcome of outcomes) {
    entry.streams++;
    if (outcome.status === 'rejected') {
      entry.errors++;
      entry.firstError ??= (outcome.reason as Error).message;
      continue;
    }
    const stream = outcome.value;
    if (!stream.complete || stream.contentEvents !== STREAM_EVENTS) {
      entry.incomplete++;
      entry.firstError ??= `stream ended after ${stream.contentEvents} of ${STREAM_EVENTS} content events${stream.complete ? '' : ' without its last event'}`;
    }
    if (!Number.isNaN(stream.firstEventMs)) entry.firstEvent.push(stream.firstEventMs);
    roundGaps.push(...stream.addedGapsMs);
  }
  entry.gaps.push(...roundGaps);
  if (roundGaps.length > 0) entry.roundGapP99.push(distribution(roundGaps).p99);
}

export async function streamingLane(targets: Target[], settings: LaneSettings): Promise<StreamingResults> {
  const rounds = settings.quick ? 3 : 10;
  const model = `bench-sse-${STREAM_EVENTS}-${STREAM_INTERVAL_MS}`;
  const results: StreamingResults = { openai: {}, anthropic: {} };

  for (const api of ['openai', 'anthropic'] as const) {
    const body = bodyFor(api, model, true);
    const measured = targets.filter((target) => endpointFor(target, api) !== undefined);
    const agents = new Map(measured.map((target) => [target.id, new http.Agent({ keepAlive: true, maxSockets: STREAMS_PER_BATCH })]));
    const collected = new Map<TargetId, StreamSamples>(measured.map((target) => [target.id, { firstEvent: [], gaps: [], roundGapP99: [], streams: 0, incomplete: 0, errors: 0 }]));
    for (const target of measured) await streamBatch(target, endpointFor(target, api)!, body, agents.get(target.id)!, STREAMS_PER_BATCH);

    for (let round = 0; round < rounds; round++) {
      settings.log(`streaming ${api}: round ${round + 1} of ${rounds}`);
      for (const target of measured) {
        collectBatch(collected.get(target.id)!, await streamBatch(target, endpointFor(target, api)!, body, agents.get(target.id)!, STREAMS_PER_BATCH));
      }
    }
    for (const agent of agents.values()) agent.destroy();

    const direct = collected.get('direct');
    const directFirst = direct === undefined ? undefined : distribution(direct.firstEvent).p50;
    const directGap = direct === undefined ? undefined : median(direct.roundGapP99);
    for (const target of measured) {
      const entry = collected.get(target.id)!;
      const firstEvent = distribution(entry.firstEvent);
      const gapP99 = median(entry.roundGapP99);
      results[api][target.id] = {
        firstEventMs: firstEvent,
        addedGapMs: distribution(entry.gaps),
        addedGapP99MedianOfRoundsMs: gapP99,
        addedFirstEventP50Ms: directFirst === undefined ? null : firstEvent.p50 - directFirst,
        addedGapP99NetMs: directGap === undefined ? null : gapP99 - directGap,
        streams: entry.streams,
        incomplete: entry.incomplete,
        errors: entry.errors,
        ...(entry.firstError === undefined ? {} : { firstError: entry.firstError }),
      };
    }
  }
  return results;
}

// ---------------------------------------------------------------------------------------------
// Lane 4: memory with 2,000 open streams, each target in a fresh process

export const OPEN_STREAMS = 2000;
const HOLD_INTERVAL_MS = 1000;

export interface MemoryTargetResult {
  /** RSS of a fresh process after a short warm-up, in bytes. */
  idleRssBytes: number;
  /** Highest RSS sampled while the streams were open, in bytes. */
  openRssBytes: number;
  deltaBytes: number;
  /** RSS two seconds after the client closed every stream, in bytes. */
  afterCloseRssBytes: number;
  opened: number;
  failed: number;
  firstError?: string;
  /** The rise above idle of every repetition, when the lane ran several. */
  deltaRunsBytes?: number[];
}

export type MemoryResults = Partial<Record<TargetId, MemoryTargetResult | { error: string }>>;

/** Samples the RSS of `pid` every 500 ms and reduces the samples with `pick`. */
async function sampleRss(pid: number, samples: number, pick: (values: number[]) => number): Promise<number> {
  const values: number[] = [];
  for (let i = 0; i < samples; i++) {
    values.push(readRss(pid));
    if (i < samples - 1) await sleep(500);
  }
  return pick(values);
}

export async function measureOpenStreams(target: Target, settings: LaneSettings): Promise<MemoryTargetResult> {
  const warmBody = openAiBody('gpt-4o-mini', false);
  const client = new Client(target.origin, { pipelining: 1 });
  await runSequential(client, target.openai, warmBody, { count: 200, timeLimitMs: 20_000 });
  await client.close();
  const agent = new http.Agent({ keepAlive: false });
  await streamBatch(target, target.openai, openAiBody('bench-sse-8-5', true), agent, 20);
  agent.destroy();
  await sleep(2000);
  const idle = await sampleRss(target.pid, 3, (values) => Math.min(...values));

  settings.log(`memory: opening ${OPEN_STREAMS} streams through ${target.id}`);
  const held = await openHeldStreams(target, target.openai, openAiBody(`bench-hold-${HOLD_INTERVAL_MS}`, true), OPEN_STREAMS, 100, 60_000);
  await sleep(2000);
  const open = await sampleRss(target.pid, 4, (values) => Math.max(...values));
  held.close();
  await sleep(2000);
  const afterClose = readRss(target.pid);
  return {
    idleRssBytes: idle,
    openRssBytes: open,
    deltaBytes: open - idle,
    afterCloseRssBytes: afterClose,
    opened: held.opened,
    failed: held.failed,
    ...(held.firstError === undefined ? {} : { firstError: held.firstError }),
  };
}
