/**
 * Minimal pass-through proxy: the practical floor for a Node.js proxy, used as the reference in
 * the benchmarks. It forwards every request to the upstream as it arrives (node:http in, undici
 * out), streams both bodies without reading them, and does no authentication, metering or logging.
 *
 * Usage: node --import tsx bench/reference-proxy.ts --port PORT --upstream http://127.0.0.1:PORT
 */
import { createServer, type IncomingHttpHeaders } from 'node:http';
import { parseArgs } from 'node:util';
import { Agent, request } from 'undici';

/** Hop-by-hop headers (RFC 9110, section 7.6.1) and `host`, which undici sets from the URL. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host']);

function endToEnd(headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const name in headers) {
    const value = headers[name];
    if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value;
  }
  return out;
}

const { values } = parseArgs({ options: { port: { type: 'string' }, upstream: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' } } });
if (values.upstream === undefined) throw new Error('missing --upstream: pass the upstream base URL, such as http://127.0.0.1:8080');
const upstream = values.upstream.replace(/\/+$/, '');
const dispatcher = new Agent({ keepAliveTimeout: 30_000 });

const server = createServer({ noDelay: true, keepAliveTimeout: 65_000 }, async (req, res) => {
  try {
    const response = await request(upstream + req.url, {
      method: req.method as 'POST',
      headers: endToEnd(req.headers),
      body: req.method === 'GET' || req.method === 'HEAD' ? undefined : req,
      dispatcher,
    });
    res.writeHead(response.statusCode, endToEnd(response.headers));
    // Readable.pipe instead of stream.pipeline: pipeline aborts an internal AbortController on
    // every completion, and building that AbortError (a DOMException) cost about 6 % of the CPU.
    response.body.on('error', () => res.destroy());
    res.on('close', () => response.body.destroy());
    response.body.pipe(res);
  } catch (error) {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    res.writeHead(502, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { message: `upstream request failed: ${(error as Error).message}` } }));
  }
});
server.listen(Number(values.port ?? '0'), values.host, () => {
  const address = server.address();
  process.stdout.write(`listening ${typeof address === 'object' && address !== null ? address.port : values.port}\n`);
});
process.once('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
