import { SseParser, type SseEvent } from '../streaming/sse.ts';
import { UsageMeter } from '../usage/meter.ts';
import type { ResponseTap } from './types.ts';

/** A tap that forwards every stream chunk unchanged and meters the events parsed from a copy. */
export abstract class PassThroughSseTap implements ResponseTap {
  readonly meter = new UsageMeter();
  private readonly parser = new SseParser((event) => this.onEvent(event));

  streamChunk(chunk: Buffer): Buffer {
    this.parser.push(chunk);
    return chunk;
  }

  streamEnd(): undefined {
    this.parser.end();
    return undefined;
  }

  protected abstract onEvent(event: SseEvent): void;

  abstract jsonBody(body: Buffer): void;
}
