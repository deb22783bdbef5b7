import type { IncomingMessage, ServerResponse } from 'node:http';
import { handleAdmin } from '../admin/routes.ts';
import { GatewayError } from '../errors/errors.ts';
import type { ErrorShape } from '../errors/shapes.ts';
import { handleProxy } from '../pipeline/proxy.ts';
import { anthropicComplete } from '../providers/anthropic/complete.ts';
import { anthropicMessages } from '../providers/anthropic/messages.ts';
import { openaiChat, openaiCompletions, openaiEmbeddings } from '../providers/openai/routes.ts';
import type { RouteAdapter } from '../providers/types.ts';
import type { Gateway } from './gateway.ts';
import { handleHealth, handleReady, handleVersion } from './health.ts';
import { handleLimits, handleModels } from './info.ts';
import { sendError } from './respond.ts';

type Handler = (gateway: Gateway, req: IncomingMessage, res: ServerResponse) => Promise<void> | void;

interface RouteEntry {
  methods: Map<string, Handler>;
  shape: ErrorShape;
}

function proxy(route: RouteAdapter): Handler {
  return (gateway, req, res) => handleProxy(gateway, route, req, res);
}

/** Exact-path routes, built once. Each path maps methods to handlers. */
const ROUTES = new Map<string, RouteEntry>();

function add(path: string, method: string, handler: Handler, shape: ErrorShape): void {
  const entry = ROUTES.get(path) ?? { methods: new Map(), shape };
  entry.methods.set(method, handler);
  ROUTES.set(path, entry);
}

for (const path of ['/v1/messages', '/v1/completions/anthropic-messages']) add(path, 'POST', proxy(anthropicMessages), 'anthropic');
for (const path of ['/v1/complete', '/v1/completions/anthropic']) add(path, 'POST', proxy(anthropicComplete), 'anthropic');
for (const path of ['/v1/chat/completions', '/v1/completions/openai']) add(path, 'POST', proxy(openaiChat), 'openai');
add('/v1/completions', 'POST', proxy(openaiCompletions), 'openai');
add('/v1/embeddings', 'POST', proxy(openaiEmbeddings), 'openai');
add('/v1/models', 'GET', handleModels, 'openai');
add('/v1/limits', 'GET', handleLimits, 'openai');
add('/-/healthz', 'GET', handleHealth, 'openai');
add('/-/readyz', 'GET', handleReady, 'openai');
add('/-/__version', 'GET', handleVersion, 'openai');

const ADMIN_PREFIX = '/-/admin/';

/** Anthropic SDKs send `anthropic-version`; their errors must come back in Anthropic's shape. */
function guessShape(req: IncomingMessage): ErrorShape {
  return req.headers['anthropic-version'] !== undefined ? 'anthropic' : 'openai';
}

function requestId(res: ServerResponse): string {
  let id = res.getHeader('request-id') as string | undefined;
  if (id === undefined) {
    id = `req_${crypto.randomUUID().replaceAll('-', '')}`;
    res.setHeader('request-id', id);
    res.setHeader('x-request-id', id);
  }
  return id;
}

export async function dispatch(gateway: Gateway, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = req.url ?? '/';
  const query = url.indexOf('?');
  const path = query === -1 ? url : url.slice(0, query);
  const method = req.method === 'HEAD' ? 'GET' : (req.method ?? 'GET');

  const entry = ROUTES.get(path);
  if (entry !== undefined) {
    const handler = entry.methods.get(method);
    if (handler !== undefined) return handler(gateway, req, res);
    const allowed = [...entry.methods.keys()].join(', ');
    res.setHeader('allow', allowed);
    const error = new GatewayError('method_not_allowed', `${req.method} is not allowed on ${path}; use ${allowed}`);
    sendError(res, entry.shape, error, requestId(res));
    return;
  }
  if (path.startsWith(ADMIN_PREFIX) && gateway.config.adminToken !== null) {
    requestId(res);
    return handleAdmin(gateway, req, res, path.slice(ADMIN_PREFIX.length - 1), query === -1 ? '' : url.slice(query + 1));
  }
  const error = new GatewayError('not_found', `no route for ${req.method} ${path}; see docs/api.md for the routes this gateway serves`);
  sendError(res, guessShape(req), error, requestId(res));
}
