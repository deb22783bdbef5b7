/**
 * An in-memory remote actor source on 127.0.0.1 for tests. It serves the contract that
 * `RemoteActorSource` calls:
 *
 * - `POST {base}/lookup` with `{"tokenHash"}` returns the stored entry, or 404.
 * - `GET {base}/sync?cursor=` returns `{"entries", "nextCursor"}`, `pageSize` entries per page.
 *
 * `{base}` is the server URL with any path in front, so several gateways can share one server
 * and still be distinguished: a gateway configured with `${source.url}/gw-a` is recorded with
 * `base: '/gw-a'`. Every call is recorded with its authorization header and body.
 *
 * Faults: `failing` returns 503 to every call, `failSyncFromPage` returns 503 from that sync page
 * on, `hanging` never responds, `delayMs` waits before responding, and `stop()` closes the port so
 * that connections are refused.
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import { hashToken } from '../../src/actors/tokens.ts';

/** The JSON shape of one entry. Tests may store a malformed one as any JSON value. */
export interface SourceEntry {
  tokenHash: string;
  token: { id: string; expiresAt?: string | null; revokedAt?: string | null };
  actor: { id: string; name: string; enabled?: boolean; limits: Record<string, unknown> };
}

export interface SourceCall {
  kind: 'lookup' | 'sync' | 'other';
  /** Path in front of `/lookup` or `/sync`, '' when the gateway uses the server URL as is. */
  base: string;
  method: string;
  /** Path and query as sent. */
  url: string;
  authorization: string | undefined;
  /** Every request header, for checks that no token is sent. */
  headers: http.IncomingHttpHeaders;
  /** Raw request body. */
  body: string;
  /** Lookups: the `tokenHash` field of the body. */
  tokenHash?: string;
  /** Syncs: the `cursor` query parameter, null on a first page. */
  cursor?: string | null;
  /** Syncs: 1 for the first page. */
  page?: number;
  /** HTTP status sent, undefined while the call hangs or when it was cut off. */
  status?: number;
}

export const CHAT_LIMITS = {
  chat_completions: { limit: 1000, interval: '1h', allowedModels: ['*'] },
};

let nextEntryId = 1;

/** Builds a valid entry for a token, with a fresh token id and actor id unless given. */
export function entryFor(token: string, actor: Partial<SourceEntry['actor']> = {}, tokenFields: Partial<SourceEntry['token']> = {}): SourceEntry {
  const id = nextEntryId++;
  return {
    tokenHash: hashToken(token),
    token: { id: `remote_tok_${id}`, ...tokenFields },
    actor: { id: `remote_act_${id}`, name: `remote actor ${id}`, limits: CHAT_LIMITS, ...actor },
  };
}

const MAX_BODY_BYTES = 64 * 1024;
const CURSOR_PREFIX = 'offset-';

export class MockActorSource {
  /** Base URL without a trailing slash, such as `http://127.0.0.1:40123`. */
  readonly url: string;
  /** Entries keyed by token hash, served by lookup and listed by sync in insertion order. */
  readonly entries = new Map<string, unknown>();
  readonly calls: SourceCall[] = [];
  pageSize = 2;
  /** Makes every call fail with 503. */
  failing = false;
  /** Makes sync pages from this one on (1 is the first page) fail with 503. */
  failSyncFromPage: number | null = null;
  /** Keeps every call open without a response until the server stops. */
  hanging = false;
  /** Time in ms to wait before responding. */
  delayMs = 0;

  readonly #server: http.Server;
  readonly #sockets = new Set<Socket>();
  readonly #timers = new Set<NodeJS.Timeout>();
  #stopped = false;

  private constructor(server: http.Server, url: string) {
    this.#server = server;
    this.url = url;
  }

  static async start(): Promise<MockActorSource> {
    const server = http.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error(`mock actor source has no TCP address: ${String(address)}`);
    const source = new MockActorSource(server, `http://127.0.0.1:${address.port}`);
    server.on('connection', (socket) => {
      source.#sockets.add(socket);
      socket.on('close', () => source.#sockets.delete(socket));
    });
    server.on('request', (req, res) => source.#handle(req, res));
    return source;
  }

  /** Stores an entry, or replaces the one with the same token hash. */
  put(entry: SourceEntry): void {
    this.entries.set(entry.tokenHash, entry);
  }

  /** Stores any JSON value under a token hash, for contract tests. */
  putRaw(tokenHash: string, value: unknown): void {
    this.entries.set(tokenHash, value);
  }

  remove(tokenHash: string): void {
    this.entries.delete(tokenHash);
  }

  /** Lookups received, optionally only those for one token hash or from one base path. */
  lookups(filter: { tokenHash?: string; base?: string } = {}): SourceCall[] {
    return this.calls.filter((call) => call.kind === 'lookup' && (filter.tokenHash === undefined || call.tokenHash === filter.tokenHash) && (filter.base === undefined || call.base === filter.base));
  }

  /** Sync pages received, optionally only first pages or those from one base path. */
  syncPages(filter: { firstOnly?: boolean; base?: string } = {}): SourceCall[] {
    return this.calls.filter((call) => call.kind === 'sync' && (!filter.firstOnly || call.page === 1) && (filter.base === undefined || call.base === filter.base));
  }

  /** Closes the port and every open connection, so later calls are refused. Calling it twice is safe. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    for (const socket of this.#sockets) socket.destroy();
    await closed;
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    req.on('end', () => {
      const call = this.#record(req, Buffer.concat(chunks).toString('utf8'));
      if (this.hanging) return;
      if (this.delayMs <= 0) {
        this.#answer(call, res);
        return;
      }
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        this.#answer(call, res);
      }, this.delayMs);
      this.#timers.add(timer);
    });
  }

  #record(req: http.IncomingMessage, body: string): SourceCall {
    const url = new URL(req.url ?? '/', 'http://mock.invalid');
    const match = /^(.*)\/(lookup|sync)$/.exec(url.pathname);
    const call: SourceCall = {
      kind: match === null ? 'other' : (match[2] as 'lookup' | 'sync'),
      base: match === null ? '' : match[1],
      method: req.method ?? '',
      url: req.url ?? '',
      authorization: req.headers.authorization,
      headers: req.headers,
      body,
    };
    if (call.kind === 'lookup') {
      const parsed = parseJson(body) as { tokenHash?: unknown } | undefined;
      call.tokenHash = typeof parsed?.tokenHash === 'string' ? parsed.tokenHash : undefined;
    }
    if (call.kind === 'sync') {
      call.cursor = url.searchParams.get('cursor');
      const offset = call.cursor === null ? 0 : cursorOffset(call.cursor);
      call.page = offset === undefined ? undefined : Math.floor(offset / this.pageSize) + 1;
    }
    this.calls.push(call);
    return call;
  }

  #answer(call: SourceCall, res: http.ServerResponse): void {
    if (this.failing) return send(call, res, 503, { error: 'the mock actor source is failing' });
    if (call.kind === 'lookup' && call.method === 'POST') {
      const entry = call.tokenHash === undefined ? undefined : this.entries.get(call.tokenHash);
      if (entry === undefined) return send(call, res, 404, { error: 'token not found' });
      return send(call, res, 200, entry);
    }
    if (call.kind === 'sync' && call.method === 'GET') {
      const offset = call.cursor === null || call.cursor === undefined ? 0 : cursorOffset(call.cursor);
      if (offset === undefined || call.page === undefined) return send(call, res, 400, { error: `invalid cursor ${JSON.stringify(call.cursor)}` });
      if (this.failSyncFromPage !== null && call.page >= this.failSyncFromPage) {
        return send(call, res, 503, { error: `sync page ${call.page} is failing` });
      }
      const all = [...this.entries.values()];
      const end = offset + this.pageSize;
      const nextCursor = end < all.length ? `${CURSOR_PREFIX}${end}` : null;
      return send(call, res, 200, { entries: all.slice(offset, end), nextCursor });
    }
    send(call, res, 404, { error: `no route for ${call.method} ${call.url}` });
  }
}

function send(call: SourceCall, res: http.ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value);
  call.status = status;
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** Returns the entry offset encoded in a cursor, undefined for a cursor this server never sent. */
function cursorOffset(cursor: string): number | undefined {
  if (!cursor.startsWith(CURSOR_PREFIX)) return undefined;
  const offset = Number(cursor.slice(CURSOR_PREFIX.length));
  return Number.isInteger(offset) && offset >= 0 ? offset : undefined;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
