import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { DestinationStream } from 'pino';
import { Agent } from 'undici';
import { ActorResolver } from '../actors/resolver.ts';
import { ConfigError, type Config } from '../config/config.ts';
import type { Limiter } from '../limits/limiter.ts';
import { createLogger } from '../logging/logger.ts';
import type { Store } from '../storage/store.ts';
import { UsageRecorder } from '../usage/recorder.ts';
import { loadTokenizer } from '../usage/tokenizer.ts';
import { openBackends } from './backends.ts';
import type { Gateway } from './gateway.ts';
import { sendJson } from './respond.ts';
import { dispatch } from './routes.ts';

export interface StartOptions {
  /** Log destination; standard output when absent. */
  logDestination?: DestinationStream;
  /** Install SIGTERM and SIGINT handlers that shut down gracefully. Default true. */
  handleSignals?: boolean;
  store?: Store;
  limiter?: Limiter;
}

export interface RunningGateway {
  gateway: Gateway;
  server: Server;
  /** Base URL, such as http://127.0.0.1:9992. */
  url: string;
  port: number;
  /** Stops accepting connections, lets in-flight requests finish within the grace period, flushes usage events. */
  close(): Promise<void>;
  /** Resolves once the gateway has shut down. */
  closed: Promise<void>;
}

function readVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

export async function startGateway(config: Config, options: StartOptions = {}): Promise<RunningGateway> {
  const logger = createLogger(config.logLevel, options.logDestination);
  const dispatcher = new Agent({
    headersTimeout: config.upstreamTimeoutMs,
    bodyTimeout: config.streamIdleTimeoutMs,
    keepAliveTimeout: 30_000,
  });
  const backends = await openBackends(config, logger, dispatcher, { store: options.store, limiter: options.limiter });
  const { store, limiter } = backends;
  const resolver = new ActorResolver(store, logger, {
    allowAnonymous: config.allowAnonymous,
    anonymousLimits: config.anonymousLimits,
    remote: backends.remote,
    remoteTtlMs: config.actorSource.ttlMs,
    remoteNegativeTtlMs: config.actorSource.negativeTtlMs,
    bus: backends.bus,
  });
  await resolver.start();
  backends.startWorkers(resolver);
  const recorder = new UsageRecorder(backends.usageStore, logger, config.usageFlushIntervalMs);
  const gateway: Gateway = { config, logger, store, limiter, resolver, recorder, dispatcher, version: readVersion(), settling: new Set(), dependencies: backends.dependencies, spool: backends.spool };

  const server = createServer({ noDelay: true, keepAliveTimeout: 65_000 }, (req, res) => {
    dispatch(gateway, req, res).catch((error: unknown) => {
      logger.error({ err: error, url: req.url }, 'unhandled error in request handler');
      if (!res.headersSent) sendJson(res, 500, { error: { message: 'internal error', type: 'server_error', param: null, code: 'internal_error' } });
      else res.destroy();
    });
  });
  server.on('clientError', (error: NodeJS.ErrnoException, socket) => {
    logger.debug({ err: error }, 'malformed HTTP request');
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const tooLarge = error.code === 'HPE_HEADER_OVERFLOW';
    const requestId = `req_${randomUUID().replaceAll('-', '')}`;
    const body = JSON.stringify({
      error: {
        message: tooLarge ? 'request headers are too large' : 'malformed HTTP request',
        type: 'invalid_request_error',
        param: null,
        code: tooLarge ? 'headers_too_large' : 'malformed_request',
      },
      request_id: requestId,
    });
    const status = tooLarge ? '431 Request Header Fields Too Large' : '400 Bad Request';
    socket.end(
      `HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Type: application/json\r\nrequest-id: ${requestId}\r\nx-request-id: ${requestId}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  });

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.port, config.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    await backends.close().catch(() => undefined);
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    throw new ConfigError('LLM_PROXY_HOST and LLM_PROXY_PORT', `cannot listen on ${config.host}:${config.port} (${code})`, 'a local address and a free port');
  }
  const port = (server.address() as AddressInfo).port;
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  const url = `http://${host === '0.0.0.0' || host === '[::]' ? '127.0.0.1' : host}:${port}`;
  for (const provider of Object.values(config.providers)) {
    if (provider.apiKey === null) logger.warn({ provider: provider.name }, `provider ${provider.name} is disabled: set LLM_PROXY_${provider.name.toUpperCase()}_API_KEY to enable it`);
    else logger.info({ provider: provider.name, baseUrl: provider.baseUrl }, `provider ${provider.name} enabled`);
  }
  logger.info(
    { url, dataDir: config.dataDir, store: config.databaseUrl === null ? 'sqlite' : 'postgres', limiter: config.redis.url === null ? 'memory' : 'redis', admin: config.adminToken !== null, anonymous: config.allowAnonymous },
    'gateway listening',
  );
  loadTokenizer().catch((error: unknown) => logger.error({ err: error }, 'failed to load the tokenizer used for token estimates'));

  let resolveClosed!: () => void;
  const closed = new Promise<void>((resolve) => {
    resolveClosed = resolve;
  });
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      logger.info({ graceMs: config.shutdownGraceMs }, 'shutting down: no new connections, waiting for in-flight requests');
      const drained = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      // Keep-alive connections become idle as their last response ends; close them as they do.
      const idleSweep = setInterval(() => server.closeIdleConnections(), 100);
      let timer: NodeJS.Timeout | undefined;
      const grace = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), config.shutdownGraceMs);
      });
      const result = await Promise.race([drained, grace]);
      clearTimeout(timer);
      clearInterval(idleSweep);
      if (result === 'timeout') {
        logger.warn('grace period over, closing the remaining connections');
        server.closeAllConnections();
        await drained;
      }
      // Requests cut off above settle their usage events asynchronously; wait for them.
      while (gateway.settling.size > 0) await Promise.allSettled([...gateway.settling]);
      await recorder.close();
      resolver.close();
      await backends.close();
      await dispatcher.close().catch(() => undefined);
      logger.info('gateway stopped');
      resolveClosed();
    })();
    return closing;
  };

  if (options.handleSignals ?? true) {
    const onSignal = (signal: NodeJS.Signals) => {
      logger.info({ signal }, 'received shutdown signal');
      void close();
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  }

  return { gateway, server, url, port, close, closed };
}
