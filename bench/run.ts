/**
 * `npm run bench`: measures this gateway beside a direct connection, a minimal reference proxy
 * and the Portkey gateway, all on 127.0.0.1, and writes bench/results/<time>.json. A full run of
 * every lane also rewrites the results section of docs/benchmarks.md.
 *
 * Options:
 *   --lanes a,b     lanes to run: sequential, throughput, streaming, memory (default: all)
 *   --targets a,b   targets besides `direct`: reference, gateway, gateway-redis-postgres, portkey
 *   --cpu-prof      run the gateway and the reference proxy with `node --cpu-prof`
 *   --heap-prof     run them with `node --heap-prof`. Both kinds of profile go to
 *                   bench/results/profiles/<time>/, and bench/profile-summary.ts summarizes CPU ones
 * Environment:
 *   BENCH_QUICK=1             fewer and shorter rounds (about 3 minutes), without updating the docs
 *   BENCH_PORTKEY_REINSTALL=1 reinstall the peer gateway from npm
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { cleanUpBackends, prepareBackends, type BackendSetup } from './lib/backends.ts';
import { measureOpenStreams, sequentialLane, streamingLane, throughputLane, type LaneSettings, type MemoryResults, type MemoryTargetResult } from './lib/lanes.ts';
import { checkBudget, describeEnvironment, fileStamp, LANE_NAMES, renderRun, replaceSection, type LaneName, type RunRecord, type TargetStatus } from './lib/report.ts';
import { killAllChildren, startCpuShare } from './lib/processes.ts';
import {
  directTarget,
  installPortkey,
  PORTKEY_VERSION,
  portkeyDependencyVersions,
  REPO_ROOT,
  startGateway,
  startPortkey,
  startReference,
  startUpstream,
  TARGET_LABELS,
  type StartContext,
  type Target,
  type TargetId,
  type Upstream,
} from './lib/targets.ts';

const PROXY_TARGETS: TargetId[] = ['reference', 'gateway', 'gateway-redis-postgres', 'portkey'];

function log(message: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

function parseList<T extends string>(value: string | undefined, allowed: readonly T[], option: string): T[] {
  if (value === undefined) return [...allowed];
  const items = value.split(',').map((item) => item.trim()).filter((item) => item !== '');
  for (const item of items) {
    if (!allowed.includes(item as T)) throw new Error(`invalid ${option} value ${JSON.stringify(item)}; expected a comma-separated list of ${allowed.join(', ')}`);
  }
  return items as T[];
}

/**
 * Runs the requested lanes. The comparing lanes share one process per target. The memory lane
 * starts a fresh process for each target, so that earlier lanes do not inflate its idle RSS.
 */
async function runLanes(
  record: Omit<RunRecord, 'budget' | 'finishedAt'>,
  upstream: Upstream,
  starters: Map<TargetId, () => Promise<Target>>,
  statuses: Map<TargetId, TargetStatus>,
  settings: LaneSettings,
): Promise<void> {
  const lanes = record.lanes;
  const comparing = lanes.filter((lane) => lane !== 'memory');
  if (comparing.length > 0) {
    const targets: Target[] = [directTarget(upstream)];
    for (const [id, start] of starters) {
      try {
        targets.push(await start());
      } catch (error) {
        statuses.set(id, { id, label: TARGET_LABELS[id], status: 'failed', reason: `failed to start: ${(error as Error).message}` });
      }
    }
    try {
      if (lanes.includes('sequential')) {
        const stop = startCpuShare();
        record.sequential = await sequentialLane(targets, settings);
        record.cpu.sequential = stop();
      }
      if (lanes.includes('throughput')) {
        const stop = startCpuShare();
        record.throughput = await throughputLane(targets, settings);
        record.cpu.throughput = stop();
      }
      if (lanes.includes('streaming')) {
        const stop = startCpuShare();
        record.streaming = await streamingLane(targets, settings);
        record.cpu.streaming = stop();
      }
    } finally {
      for (const target of targets) await target.stop();
    }
  }

  if (lanes.includes('memory')) {
    // Each repetition starts every target afresh, one after the other. The run with the median rise is kept.
    const repetitions = settings.quick ? 1 : 3;
    const runs = new Map<TargetId, MemoryTargetResult[]>();
    const memory: MemoryResults = {};
    for (let repetition = 0; repetition < repetitions; repetition++) {
      for (const [id, start] of starters) {
        if (memory[id] !== undefined) continue;
        let target: Target | undefined;
        try {
          target = await start();
          const result = await measureOpenStreams(target, settings);
          runs.set(id, [...(runs.get(id) ?? []), result]);
        } catch (error) {
          memory[id] = { error: (error as Error).message };
        } finally {
          await target?.stop();
        }
      }
    }
    for (const [id, results] of runs) {
      if (memory[id] !== undefined) continue;
      const sorted = [...results].sort((a, b) => a.deltaBytes - b.deltaBytes);
      memory[id] = { ...sorted[Math.floor((sorted.length - 1) / 2)], deltaRunsBytes: results.map((result) => result.deltaBytes) };
    }
    record.memory = memory;
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { lanes: { type: 'string' }, targets: { type: 'string' }, 'cpu-prof': { type: 'boolean', default: false }, 'heap-prof': { type: 'boolean', default: false } } });
  const lanes = parseList(values.lanes, LANE_NAMES, '--lanes');
  const wanted = parseList(values.targets, PROXY_TARGETS, '--targets');
  const quick = process.env.BENCH_QUICK === '1';
  const startedAt = new Date();
  const logDir = mkdtempSync(join(tmpdir(), 'llm-proxy-bench-logs-'));
  const resultsDir = join(REPO_ROOT, 'bench', 'results');
  mkdirSync(resultsDir, { recursive: true });
  const nodeFlags: string[] = [];
  const profiling = values['cpu-prof'] || values['heap-prof'];
  if (profiling) {
    const profileDir = join(resultsDir, 'profiles', fileStamp(startedAt));
    mkdirSync(profileDir, { recursive: true });
    if (values['cpu-prof']) nodeFlags.push('--cpu-prof', '--cpu-prof-dir', profileDir);
    if (values['heap-prof']) nodeFlags.push('--heap-prof', '--heap-prof-dir', profileDir);
    log(`profiles go to ${relative(REPO_ROOT, profileDir)}; file names carry the process id`);
  }
  log(`lanes: ${lanes.join(', ')}${quick ? ' (quick)' : ''}; server logs in ${logDir}`);

  const statuses = new Map<TargetId, TargetStatus>();
  statuses.set('direct', { id: 'direct', label: TARGET_LABELS.direct, status: 'measured' });
  const versions: Record<string, string> = {};
  const upstream = await startUpstream(logDir);
  const context: StartContext = { logDir, upstreamOrigin: upstream.origin, nodeFlags };

  // Each entry starts a fresh process of one target. The memory lane starts each one again.
  const starters = new Map<TargetId, () => Promise<Target>>();
  if (wanted.includes('reference')) starters.set('reference', () => startReference(context));
  if (wanted.includes('gateway')) starters.set('gateway', () => startGateway(context));
  let backends: BackendSetup | undefined;
  if (wanted.includes('gateway-redis-postgres')) {
    const setup = await prepareBackends(startedAt.toISOString().replace(/\D/g, '').slice(0, 14));
    if ('reason' in setup) {
      statuses.set('gateway-redis-postgres', { id: 'gateway-redis-postgres', label: TARGET_LABELS['gateway-redis-postgres'], status: 'unavailable', reason: setup.reason });
    } else {
      backends = setup;
      log(`Redis + Postgres target: schema ${setup.schema}, key prefix ${setup.keyPrefix}, both removed at the end`);
      starters.set('gateway-redis-postgres', () => startGateway(context, { id: 'gateway-redis-postgres', env: setup.env }));
    }
  }
  if (wanted.includes('portkey')) {
    try {
      log(`installing @portkey-ai/gateway@${PORTKEY_VERSION} (cached after the first run)`);
      const dir = await installPortkey(logDir);
      versions.portkey = PORTKEY_VERSION;
      for (const [name, version] of Object.entries(portkeyDependencyVersions(dir))) versions[`portkey ${name}`] = version;
      starters.set('portkey', () => startPortkey(context, dir));
    } catch (error) {
      statuses.set('portkey', { id: 'portkey', label: TARGET_LABELS.portkey, status: 'unavailable', reason: `install failed: ${(error as Error).message}` });
    }
  }
  for (const id of starters.keys()) statuses.set(id, { id, label: TARGET_LABELS[id], status: 'measured' });

  const settings: LaneSettings = { quick, log };
  const record: Omit<RunRecord, 'budget' | 'finishedAt'> = {
    kind: 'bench',
    startedAt: startedAt.toISOString(),
    quick,
    lanes,
    environment: describeEnvironment(versions),
    targets: [],
    cpu: {},
  };

  try {
    await runLanes(record, upstream, starters, statuses, settings);
  } finally {
    await upstream.server.stop();
    if (backends !== undefined) {
      await cleanUpBackends(backends).catch((error: unknown) => log(`failed to remove the benchmark's Postgres schema or Redis keys: ${(error as Error).message}`));
    }
  }

  record.targets = ['direct', ...PROXY_TARGETS].flatMap((id) => {
    const status = statuses.get(id as TargetId);
    return status === undefined ? [] : [status];
  });
  const finished: RunRecord = { ...record, finishedAt: new Date().toISOString(), budget: checkBudget(record) };
  const resultFile = join(resultsDir, `${fileStamp(startedAt)}.json`);
  writeFileSync(resultFile, `${JSON.stringify(finished, null, 2)}\n`);
  const relativeFile = relative(REPO_ROOT, resultFile);
  const markdown = renderRun(finished, relativeFile);
  process.stdout.write(`${markdown}\n`);
  log(`wrote ${relativeFile}`);

  const fullRun = !quick && lanes.length === LANE_NAMES.length && wanted.length === PROXY_TARGETS.length && !profiling;
  if (fullRun) {
    replaceSection(join(REPO_ROOT, 'docs', 'benchmarks.md'), 'bench-results', markdown);
    log('updated docs/benchmarks.md');
  } else {
    log('docs/benchmarks.md left unchanged: only a full run without BENCH_QUICK, --lanes, --targets or profiling updates it');
  }
  const broken = finished.targets.some((target) => target.status === 'failed') || Object.values(finished.memory ?? {}).some((entry) => entry !== undefined && 'error' in entry);
  if (broken) log(`server logs kept in ${logDir}`);
  else rmSync(logDir, { recursive: true, force: true });
  const failed = finished.budget.filter((line) => line.pass === false);
  if (failed.length > 0) log(`budget lines missed: ${failed.map((line) => line.rule).join('; ')}`);
}

try {
  await main();
} catch (error) {
  killAllChildren();
  log(`failed: ${(error as Error).stack ?? String(error)}`);
  process.exitCode = 1;
}
