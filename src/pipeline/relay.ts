import type { IncomingHttpHeaders } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Transform } from 'node:stream';
import type { Dispatcher } from 'undici';
import { GatewayError } from '../errors/errors.ts';
import { ClientClosedError } from '../server/body.ts';
import type { RequestContext } from './context.ts';
import { StreamKeyMask } from './sanitize.ts';
import { contentEncoding, createDecoder, MAX_ERROR_BODY, reasonPhrase, type CollectedResponse } from './upstream.ts';

/** Handling of the response body: collected whole, relayed as a stream, or dropped. */
type BodyMode = 'waiting' | 'collect' | 'stream' | 'discard';

const EMPTY = Buffer.alloc(0);

/**
 * The upstream half of one proxied request, as an undici dispatch handler. undici calls it with
 * the provider's response as it arrives, with no stream objects in between.
 *
 * A 2xx event stream is relayed to the client chunk by chunk through the route's usage tap. The
 * upstream is paused while the client's socket is full, and `done` resolves with undefined once
 * the client has the whole stream.
 *
 * Any other body (JSON, or an error status) is collected whole and `done` resolves with it. Error
 * bodies are cut off at MAX_ERROR_BODY, and the body of a 429 is not read at all. `done` rejects
 * with the network, timeout or abort error that ended the call.
 */
export class UpstreamCall implements Dispatcher.DispatchHandler {
  readonly done: Promise<CollectedResponse | undefined>;
  private resolveDone!: (value: CollectedResponse | undefined) => void;
  private rejectDone!: (error: unknown) => void;
  private settled = false;
  private controller: Dispatcher.DispatchController | undefined;
  private clientGone = false;
  private mode: BodyMode = 'waiting';
  private status = 0;
  private headers: IncomingHttpHeaders = {};
  private chunks: Buffer[] = [];
  private size = 0;
  private limit = Number.POSITIVE_INFINITY;
  private decoder: Transform | undefined;
  private mask: StreamKeyMask | undefined;

  constructor(
    private readonly ctx: RequestContext,
    private readonly providerName: string,
    private readonly providerKey: string | null,
    private readonly keyBytes: Buffer | undefined,
  ) {
    this.done = new Promise((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
  }

  /** Aborts the call because the client went away, so `done` rejects. */
  abort(): void {
    this.clientGone = true;
    this.controller?.abort(new ClientClosedError());
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.clientGone) controller.abort(new ClientClosedError());
  }

  onResponseStart(controller: Dispatcher.DispatchController, status: number, headers: IncomingHttpHeaders): void {
    // Informational (1xx) responses come before the final one.
    if (status < 200) return;
    this.ctx.upstreamHeadersAt = performance.now();
    this.ctx.upstreamStatus = status;
    this.status = status;
    // undici keeps the raw header buffers on the controller, which lives as long as the call. They
    // pin the socket read that carried them, so an open stream would hold that memory to its end.
    controller.rawHeaders = null;

    if (status === 429) {
      // The pipeline replaces a provider 429 with its own error, so the body is not needed.
      this.mode = 'discard';
      this.settle(undefined, { status, headers, body: EMPTY });
    } else if (status < 300 && String(headers['content-type'] ?? '').includes('text/event-stream')) {
      this.startStream(controller, status, headers);
    } else {
      // Kept for the pipeline, which relays a collected body with its headers.
      this.headers = headers;
      this.mode = 'collect';
      if (status >= 300) this.limit = MAX_ERROR_BODY;
    }
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.mode === 'collect') {
      this.collect(controller, chunk);
    } else if (this.mode === 'stream') {
      if (this.decoder === undefined) this.relay(chunk);
      else if (!this.decoder.write(chunk)) controller.pause();
    }
  }

  onResponseEnd(): void {
    if (this.mode === 'collect') this.settle(undefined, this.collected());
    else if (this.mode === 'stream') {
      if (this.decoder === undefined) this.endStream();
      else this.decoder.end();
    }
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    if (this.settled) return;
    this.decoder?.destroy();
    if (this.mode === 'stream') this.flushTap();
    this.settle(error);
  }

  /** Sends the client the stream's status and headers, and sets up decoding and key masking. */
  private startStream(controller: Dispatcher.DispatchController, status: number, headers: IncomingHttpHeaders): void {
    const encoding = contentEncoding(headers);
    if (encoding !== '') {
      const decoder = createDecoder(encoding);
      if (decoder === undefined) {
        this.fail(controller, new GatewayError('upstream_unreachable', `the ${this.providerName} provider sent a response with an unsupported content encoding`));
        return;
      }
      this.decoder = decoder;
      decoder.on('data', (chunk: Buffer) => this.relay(chunk));
      decoder.on('end', () => this.endStream());
      decoder.on('error', (error) => this.fail(controller, error));
      decoder.on('drain', () => controller.resume());
    }
    if (this.keyBytes !== undefined) this.mask = new StreamKeyMask(this.keyBytes);
    this.mode = 'stream';

    const out = this.ctx.responseHeaders(headers, this.providerKey);
    out['cache-control'] = 'no-cache';
    out['x-accel-buffering'] = 'no';
    this.ctx.status = status;
    this.ctx.res.writeHead(status, reasonPhrase(status), out);
    this.ctx.res.flushHeaders();
  }

  private collect(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.size + chunk.length <= this.limit) {
      this.chunks.push(chunk);
      this.size += chunk.length;
      return;
    }
    this.chunks.push(chunk.subarray(0, this.limit - this.size));
    this.size = this.limit;
    this.settle(undefined, this.collected());
    // Closing the connection costs less than reading an error body the gateway would cut off anyway.
    controller.abort(new Error(`the upstream error body is larger than ${this.limit} bytes`));
  }

  /** Forwards one decoded stream chunk to the client through the key mask and the usage tap. */
  private relay(chunk: Buffer): void {
    if (this.settled) return;
    try {
      const masked = this.mask === undefined ? chunk : this.mask.push(chunk);
      this.write(this.ctx.tap!.streamChunk(masked));
    } catch (error) {
      this.fail(this.controller, error);
    }
  }

  private write(bytes: Buffer | undefined): void {
    if (bytes === undefined || bytes.length === 0) return;
    if (!this.ctx.res.write(bytes) && !this.ctx.res.destroyed) {
      // Hold the upstream until the client catches up. A client that leaves instead aborts the call.
      this.controller?.pause();
      this.ctx.res.once('drain', () => this.resumeUpstream());
    }
  }

  private resumeUpstream(): void {
    // While the decoder's buffer is full, the decoder's own 'drain' resumes the upstream.
    if (this.decoder === undefined || !this.decoder.writableNeedDrain) this.controller?.resume();
  }

  private endStream(): void {
    if (this.settled) return;
    try {
      // A stream that stops in the middle of the key gets that part masked too. Complete event
      // streams end with a blank line, so only a cut-off stream can end this way.
      const keyStart = this.mask?.end();
      if (keyStart !== undefined) this.write(this.ctx.tap!.streamChunk(keyStart.fill(0x2a)));
      this.flushTap();
      this.ctx.res.end();
      this.settle(undefined, undefined);
    } catch (error) {
      this.fail(this.controller, error);
    }
  }

  /** Ends the usage tap and writes the bytes it still holds, unless the client is gone. */
  private flushTap(): void {
    const rest = this.ctx.tap!.streamEnd();
    if (rest !== undefined && !this.ctx.clientAborted) this.ctx.res.write(rest);
  }

  private collected(): CollectedResponse {
    const body = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.size);
    this.chunks = [];
    return { status: this.status, headers: this.headers, body };
  }

  /** Ends the call with a failure found by the gateway, and aborts what undici still has open. */
  private fail(controller: Dispatcher.DispatchController | undefined, error: unknown): void {
    if (this.settled) return;
    this.decoder?.destroy();
    this.settle(error);
    controller?.abort(error instanceof Error ? error : new Error(String(error)));
  }

  private settle(error: unknown, value?: CollectedResponse): void {
    if (this.settled) return;
    this.settled = true;
    if (error === undefined) this.resolveDone(value);
    else this.rejectDone(error);
  }
}
