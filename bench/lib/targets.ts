/**
 * Starts the servers under test: the upstream stand-in, the reference proxy, this gateway and the
 * peer gateway (Portkey), each as its own process on 127.0.0.1.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, spawnNode, waitForHttp, type ChildServer } from './processes.ts';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BENCH_DIR = join(REPO_ROOT, 'bench');

export const PORTKEY_VERSION = '1.15.2';
/**
 * Dependency pins for the peer gateway, which streams correctly with these versions. With the
 * versions npm resolved without them (@hono/node-server 1.19.19, hono 4.13.23), every streaming
 * request failed with `TypeError: immutable`.
 */
export const PORTKEY_OVERRIDES = { '@hono/node-server': '1.13.5', hono: '4.9.7' };

/** Key that the proxies send to the upstream stand-in, which checks only that a key is present. */
export const UPSTREAM_KEY = 'bench-upstream-key';
const ADMIN_TOKEN = 'bench-admin-token-0123456789abcdef';

export type TargetId = 'direct' | 'reference' | 'gateway' | 'gateway-redis-postgres' | 'portkey';

/** Path and headers with which a client calls one API through a target. */
export interface Endpoint {
  path: string;
  headers: Record<string, string>;
}

export interface Target {
  id: TargetId;
  label: string;
  origin: string;
  /** Process whose memory is measured, which for `direct` is the upstream itself. */
  pid: number;
  openai: Endpoint;
  /** Absent when the target is not set up for the Anthropic API. */
  anthropic?: Endpoint;
  stop(): Promise<void>;
}

export const TARGET_LABELS: Record<TargetId, string> = {
  direct: 'direct to upstream',
  reference: 'reference pass-through',
  gateway: 'gateway, governed (SQLite)',
  'gateway-redis-postgres': 'gateway, governed (Redis + Postgres)',
  portkey: `Portkey ${PORTKEY_VERSION}`,
};

export interface StartContext {
  logDir: string;
  upstreamOrigin: string;
  /** Extra Node.js flags for the gateway and the reference proxy, such as `--cpu-prof`. */
  nodeFlags?: string[];
}

export interface Upstream {
  server: ChildServer;
  origin: string;
}

export async function startUpstream(logDir: string): Promise<Upstream> {
  const { server, port } = await spawnNode({
    name: 'upstream',
    args: ['--import', 'tsx', join(BENCH_DIR, 'upstream.ts'), '--port', '0'],
    cwd: REPO_ROOT,
    logDir,
    readyPattern: /listening (\d+)/,
  });
  return { server, origin: `http://127.0.0.1:${port}` };
}

function openAiEndpoint(authorization: string, extra: Record<string, string> = {}): Endpoint {
  return { path: '/v1/chat/completions', headers: { 'content-type': 'application/json', authorization: `Bearer ${authorization}`, ...extra } };
}

function anthropicEndpoint(key: string): Endpoint {
  return { path: '/v1/messages', headers: { 'content-type': 'application/json', 'x-api-key': key, 'anthropic-version': '2023-06-01' } };
}

export function directTarget(upstream: Upstream): Target {
  return {
    id: 'direct',
    label: TARGET_LABELS.direct,
    origin: upstream.origin,
    pid: upstream.server.pid,
    openai: openAiEndpoint(UPSTREAM_KEY),
    anthropic: anthropicEndpoint(UPSTREAM_KEY),
    stop: async () => undefined,
  };
}

export async function startReference(context: StartContext): Promise<Target> {
  const { server, port } = await spawnNode({
    name: 'reference',
    args: [...(context.nodeFlags ?? []), '--import', 'tsx', join(BENCH_DIR, 'reference-proxy.ts'), '--port', '0', '--upstream', context.upstreamOrigin],
    cwd: REPO_ROOT,
    logDir: context.logDir,
    readyPattern: /listening (\d+)/,
  });
  return {
    id: 'reference',
    label: TARGET_LABELS.reference,
    origin: `http://127.0.0.1:${port}`,
    pid: server.pid,
    openai: openAiEndpoint(UPSTREAM_KEY),
    anthropic: anthropicEndpoint(UPSTREAM_KEY),
    stop: () => server.stop(),
  };
}

async function adminRequest(origin: string, path: string, body: unknown): Promise<Record<string, unknown>> {
  const response = await fetch(origin + path, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const json = (await response.json()) as Record<string, unknown>;
  if (!response.ok) throw new Error(`admin request POST ${path} failed with status ${response.status}: ${JSON.stringify(json)}`);
  return json;
}

export interface GatewayOptions {
  id?: TargetId;
  /** Extra environment variables, such as LLM_PROXY_REDIS_URL. */
  env?: Record<string, string>;
}

/**
 * Starts the gateway as `node --import tsx src/main.ts serve`, with a fresh SQLite data folder,
 * and creates one actor with a quota far above what a benchmark sends, plus its token.
 */
export async function startGateway(context: StartContext, options: GatewayOptions = {}): Promise<Target> {
  const id = options.id ?? 'gateway';
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), 'llm-proxy-bench-data-'));
  const { server } = await spawnNode({
    name: id,
    args: [...(context.nodeFlags ?? []), '--import', 'tsx', join(REPO_ROOT, 'src', 'main.ts'), 'serve'],
    cwd: REPO_ROOT,
    logDir: context.logDir,
    env: {
      ...process.env,
      LLM_PROXY_HOST: '127.0.0.1',
      LLM_PROXY_PORT: String(port),
      LLM_PROXY_DATA_DIR: dataDir,
      LLM_PROXY_ADMIN_TOKEN: ADMIN_TOKEN,
      LLM_PROXY_LOG_LEVEL: 'warn',
      LLM_PROXY_SHUTDOWN_GRACE: '2s',
      LLM_PROXY_OPENAI_API_KEY: UPSTREAM_KEY,
      LLM_PROXY_OPENAI_BASE_URL: `${context.upstreamOrigin}/v1`,
      LLM_PROXY_ANTHROPIC_API_KEY: UPSTREAM_KEY,
      LLM_PROXY_ANTHROPIC_BASE_URL: context.upstreamOrigin,
      ...options.env,
    },
  });
  const origin = `http://127.0.0.1:${port}`;
  const stop = async () => {
    await server.stop(15_000);
    rmSync(dataDir, { recursive: true, force: true });
  };
  try {
    await waitForHttp(`${origin}/-/healthz`, 30_000);
    const limits = { limit: 1_000_000_000, interval: '1h', allowedModels: ['*'] };
    const actor = await adminRequest(origin, '/-/admin/actors', { name: 'bench', limits: { chat_completions: limits } });
    const issued = await adminRequest(origin, `/-/admin/actors/${String(actor.id)}/tokens`, {});
    const token = String(issued.token);
    return {
      id,
      label: TARGET_LABELS[id],
      origin,
      pid: server.pid,
      openai: openAiEndpoint(token),
      anthropic: { ...anthropicEndpoint(token) },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

function portkeyDir(): string {
  return join(tmpdir(), 'llm-proxy-bench', `portkey-${PORTKEY_VERSION}`);
}

function installedPortkeyVersion(dir: string): string | undefined {
  try {
    const manifest = JSON.parse(readFileSync(join(dir, 'node_modules', '@portkey-ai', 'gateway', 'package.json'), 'utf8')) as { version?: string };
    return manifest.version;
  } catch {
    return undefined;
  }
}

/**
 * Installs the peer gateway from the npm registry into a folder under the system temporary
 * directory. Later runs reuse that folder unless BENCH_PORTKEY_REINSTALL=1. Install scripts are
 * skipped because the only one, patch-package, has no patches to apply in the published package.
 */
export async function installPortkey(logDir: string): Promise<string> {
  const dir = portkeyDir();
  if (process.env.BENCH_PORTKEY_REINSTALL === '1') rmSync(dir, { recursive: true, force: true });
  if (installedPortkeyVersion(dir) === PORTKEY_VERSION) return dir;
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, 'package.json'),
    JSON.stringify({ name: 'llm-proxy-bench-portkey', private: true, dependencies: { '@portkey-ai/gateway': PORTKEY_VERSION }, overrides: PORTKEY_OVERRIDES }, null, 2),
  );
  const logFile = join(logDir, 'portkey-install.log');
  await new Promise<void>((resolve, reject) => {
    const child = spawn('npm', ['install', '--no-audit', '--no-fund', '--ignore-scripts', '--loglevel=warn'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    const output: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => output.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => output.push(chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
    child.once('error', reject);
    child.once('exit', (code) => {
      clearTimeout(timer);
      writeFileSync(logFile, Buffer.concat(output));
      if (code === 0) resolve();
      else reject(new Error(`npm install of @portkey-ai/gateway@${PORTKEY_VERSION} failed with exit code ${code}; see ${logFile}`));
    });
  });
  if (installedPortkeyVersion(dir) !== PORTKEY_VERSION) throw new Error(`@portkey-ai/gateway@${PORTKEY_VERSION} is missing from ${dir} after npm install`);
  return dir;
}

/** Versions that npm resolved for the packages pinned by PORTKEY_OVERRIDES. */
export function portkeyDependencyVersions(dir: string): Record<string, string> {
  const versions: Record<string, string> = {};
  for (const name of Object.keys(PORTKEY_OVERRIDES)) {
    try {
      versions[name] = (JSON.parse(readFileSync(join(dir, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
    } catch {
      versions[name] = 'missing';
    }
  }
  return versions;
}

/**
 * Starts the peer gateway headless, bound to 127.0.0.1 by bench/loopback-preload.mjs, and routes
 * it to the upstream stand-in with its custom-host header.
 */
export async function startPortkey(context: StartContext, dir: string): Promise<Target> {
  const port = await freePort();
  const { server } = await spawnNode({
    name: 'portkey',
    args: ['--import', join(BENCH_DIR, 'loopback-preload.mjs'), join(dir, 'node_modules', '@portkey-ai', 'gateway', 'build', 'start-server.js'), `--port=${port}`, '--headless'],
    cwd: dir,
    logDir: context.logDir,
    env: { PATH: process.env.PATH, HOME: process.env.HOME },
    readyPattern: /Ready for connections/,
  });
  return {
    id: 'portkey',
    label: TARGET_LABELS.portkey,
    origin: `http://127.0.0.1:${port}`,
    pid: server.pid,
    openai: openAiEndpoint(UPSTREAM_KEY, { 'x-portkey-provider': 'openai', 'x-portkey-custom-host': `${context.upstreamOrigin}/v1` }),
    stop: () => server.stop(),
  };
}
