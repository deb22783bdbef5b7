import { timingSafeEqual, createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { generateToken, hashToken, tokenHint } from '../actors/tokens.ts';
import { actorToJson } from '../actors/json.ts';
import type { ActorPatch, TokenRecord } from '../actors/types.ts';
import { ConfigError, parseFeatureLimits } from '../config/config.ts';
import { formatDuration, parseDuration } from '../config/duration.ts';
import { GatewayError } from '../errors/errors.ts';
import { parseJsonObject, readBody } from '../server/body.ts';
import type { Gateway } from '../server/gateway.ts';
import { sendError, sendJson, toGatewayError } from '../server/respond.ts';
import { isStoreUnavailable } from '../storage/errors.ts';
import { eventToJson } from '../usage/json.ts';

const MAX_ADMIN_BODY = 1024 * 1024;
const MAX_USAGE_PAGE = 1000;
const ACTOR_FIELDS = ['name', 'enabled', 'limits'];

function tokenToJson(token: TokenRecord) {
  return { id: token.id, actorId: token.actorId, hint: token.hint, createdAt: token.createdAt, expiresAt: token.expiresAt, revokedAt: token.revokedAt };
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

/** Compares the bearer token with the admin token in constant time. */
function isAdmin(req: IncomingMessage, adminToken: string): boolean {
  const header = req.headers.authorization ?? '';
  const match = /^bearer\s+(.+)$/i.exec(header);
  if (match === null) return false;
  return timingSafeEqual(digest(match[1].trim()), digest(adminToken));
}

function invalid(message: string, param?: string): GatewayError {
  return new GatewayError('invalid_request', message, { param });
}

function notFound(what: string, id: string): GatewayError {
  return new GatewayError('not_found', `${what} ${JSON.stringify(id)} not found`);
}

function readName(value: unknown): string {
  if (typeof value !== 'string' || value.trim() === '' || value.length > 200) {
    throw invalid('name: a non-empty string of at most 200 characters is required', 'name');
  }
  return value.trim();
}

function readEnabled(value: unknown): boolean {
  if (typeof value !== 'boolean') throw invalid('enabled: expected true or false', 'enabled');
  return value;
}

function readLimits(value: unknown) {
  try {
    return parseFeatureLimits(value, 'limits');
  } catch (error) {
    if (error instanceof ConfigError) throw invalid(error.message.replace(/^invalid setting /, ''), 'limits');
    throw error;
  }
}

/** Accepts `expiresAt` (ISO 8601, in the future) or `expiresIn` (a duration from now). */
function readExpiry(body: Record<string, unknown>): string | null {
  if (body.expiresAt != null && body.expiresIn != null) throw invalid('give expiresAt or expiresIn, not both', 'expiresAt');
  if (body.expiresAt !== undefined && body.expiresAt !== null) {
    const at = typeof body.expiresAt === 'string' ? Date.parse(body.expiresAt) : Number.NaN;
    if (Number.isNaN(at)) throw invalid('expiresAt: expected an ISO 8601 date-time such as 2027-01-31T00:00:00Z', 'expiresAt');
    if (at <= Date.now()) throw invalid('expiresAt: the date is in the past', 'expiresAt');
    return new Date(at).toISOString();
  }
  if (body.expiresIn !== undefined && body.expiresIn !== null) {
    const ms = typeof body.expiresIn === 'string' || typeof body.expiresIn === 'number' ? parseDuration(body.expiresIn) : undefined;
    if (ms === undefined || ms <= 0) throw invalid('expiresIn: expected a positive duration such as 720h, 90m or whole seconds', 'expiresIn');
    return new Date(Date.now() + ms).toISOString();
  }
  return null;
}

/** Reads a JSON object body; an empty body counts as `{}`. Fields outside `allowed` are rejected. */
async function readJson(req: IncomingMessage, allowed: string[]): Promise<Record<string, unknown>> {
  const raw = await readBody(req, MAX_ADMIN_BODY);
  const body = raw.length === 0 ? {} : parseJsonObject(raw);
  const unknown = Object.keys(body).find((key) => !allowed.includes(key));
  if (unknown !== undefined) throw invalid(`${unknown}: unknown field; expected ${allowed.join(', ')}`, unknown);
  return body;
}

function parseQuery(query: string): URLSearchParams {
  return new URLSearchParams(query);
}

/**
 * Serves `/-/admin/...`. Only the configured admin token is accepted; actor tokens never are.
 * Changes drop the affected entries from the actor cache at once.
 */
export async function handleAdmin(gateway: Gateway, req: IncomingMessage, res: ServerResponse, path: string, query: string): Promise<void> {
  const requestId = res.getHeader('request-id') as string;
  try {
    if (req.headers.authorization === undefined) {
      throw new GatewayError('missing_token', 'the admin API needs "Authorization: Bearer <LLM_PROXY_ADMIN_TOKEN>"');
    }
    if (!isAdmin(req, gateway.config.adminToken as string)) {
      throw new GatewayError('invalid_token', 'the admin token is wrong; the admin API needs "Authorization: Bearer <LLM_PROXY_ADMIN_TOKEN>"');
    }
    await route(gateway, req, res, path, query);
  } catch (error) {
    const failure = isStoreUnavailable(error)
      ? new GatewayError('store_unavailable', 'the store is unavailable; retry shortly', { cause: error, headers: { 'retry-after': '1' } })
      : toGatewayError(error);
    if (failure.code === 'internal_error' || failure.code === 'store_unavailable') gateway.logger.error({ err: error, requestId, path }, 'admin request failed');
    sendError(res, 'openai', failure, requestId);
  }
}

async function route(gateway: Gateway, req: IncomingMessage, res: ServerResponse, path: string, query: string): Promise<void> {
  const { store, resolver } = gateway;
  const method = req.method ?? 'GET';
  const parts = path.split('/').filter((part) => part !== '').map(decodeURIComponent);
  const wrongMethod = (allowed: string) => {
    res.setHeader('allow', allowed);
    return new GatewayError('method_not_allowed', `${method} is not allowed on /-/admin/${parts.join('/')}; use ${allowed}`);
  };

  if (parts[0] === 'actors' && parts.length === 1) {
    if (method === 'GET') return sendJson(res, 200, { actors: (await store.listActors()).map(actorToJson) });
    if (method !== 'POST') throw wrongMethod('GET, POST');
    const body = await readJson(req, ACTOR_FIELDS);
    const actor = await store.createActor({
      name: readName(body.name),
      enabled: body.enabled === undefined ? true : readEnabled(body.enabled),
      limits: body.limits === undefined ? {} : readLimits(body.limits),
    });
    gateway.logger.info({ actorId: actor.id }, 'actor created');
    return sendJson(res, 201, actorToJson(actor));
  }

  if (parts[0] === 'actors' && parts.length === 2) {
    const id = parts[1];
    if (method === 'GET') {
      const actor = await store.getActor(id);
      if (actor === undefined) throw notFound('actor', id);
      return sendJson(res, 200, actorToJson(actor));
    }
    if (method === 'PATCH') {
      const body = await readJson(req, ACTOR_FIELDS);
      const patch: ActorPatch = {};
      if (body.name !== undefined) patch.name = readName(body.name);
      if (body.enabled !== undefined) patch.enabled = readEnabled(body.enabled);
      if (body.limits !== undefined) patch.limits = readLimits(body.limits);
      const actor = await store.updateActor(id, patch);
      if (actor === undefined) throw notFound('actor', id);
      resolver.invalidateActor(id);
      gateway.logger.info({ actorId: id, fields: Object.keys(patch) }, 'actor updated');
      return sendJson(res, 200, actorToJson(actor));
    }
    if (method === 'DELETE') {
      if (!(await store.deleteActor(id))) throw notFound('actor', id);
      resolver.invalidateActor(id);
      gateway.logger.info({ actorId: id }, 'actor deleted');
      res.writeHead(204);
      res.end();
      return;
    }
    throw wrongMethod('GET, PATCH, DELETE');
  }

  if (parts[0] === 'actors' && parts.length === 3 && parts[2] === 'tokens') {
    const actorId = parts[1];
    if (method === 'GET') {
      if ((await store.getActor(actorId)) === undefined) throw notFound('actor', actorId);
      return sendJson(res, 200, { tokens: (await store.listTokens(actorId)).map(tokenToJson) });
    }
    if (method !== 'POST') throw wrongMethod('GET, POST');
    const body = await readJson(req, ['expiresAt', 'expiresIn']);
    const expiresAt = readExpiry(body);
    if ((await store.getActor(actorId)) === undefined) throw notFound('actor', actorId);
    const token = generateToken();
    const record = await store.createToken(actorId, hashToken(token), tokenHint(token), expiresAt);
    resolver.invalidateToken(record.id);
    gateway.logger.info({ actorId, tokenId: record.id }, 'token created');
    return sendJson(res, 201, { ...tokenToJson(record), token });
  }

  if (parts[0] === 'tokens' && parts.length === 2) {
    if (method !== 'DELETE') throw wrongMethod('DELETE');
    const record = await store.revokeToken(parts[1]);
    if (record === undefined) throw notFound('token', parts[1]);
    resolver.invalidateToken(record.id);
    gateway.logger.info({ tokenId: record.id, actorId: record.actorId }, 'token revoked');
    return sendJson(res, 200, tokenToJson(record));
  }

  if (parts[0] === 'usage' && parts.length === 1) {
    if (method !== 'GET') throw wrongMethod('GET');
    const params = parseQuery(query);
    const limitText = params.get('limit') ?? '100';
    if (!/^\d+$/.test(limitText) || Number(limitText) < 1 || Number(limitText) > MAX_USAGE_PAGE) {
      throw invalid(`limit: expected a whole number from 1 to ${MAX_USAGE_PAGE}`, 'limit');
    }
    const since = params.get('since');
    let sinceIso: string | undefined;
    if (since !== null && since !== '') {
      const duration = parseDuration(since);
      const at = duration !== undefined ? Date.now() - duration : Date.parse(since);
      if (Number.isNaN(at)) throw invalid('since: expected an ISO 8601 date-time or a duration such as 1h', 'since');
      sinceIso = new Date(at).toISOString();
    }
    // Pending events are written first, so a request that just finished is listed.
    await gateway.recorder.flush();
    const events = await store.queryEvents({ actorId: params.get('actor') || undefined, since: sinceIso, limit: Number(limitText) });
    return sendJson(res, 200, { events: events.map(eventToJson) });
  }

  throw new GatewayError('not_found', `no admin route for ${method} /-/admin/${parts.join('/')}; see docs/api.md`);
}
