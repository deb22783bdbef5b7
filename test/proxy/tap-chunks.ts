import type { ResponseTap, RouteAdapter } from '../../src/providers/types.ts';

/** One response that went through a tap: the request body the gateway sent upstream, and the chunk count. */
export interface TapRecord {
  requestBody: Buffer;
  chunks: number;
}

/**
 * Counts the upstream chunks that each response tap of the given routes receives. Socket and
 * stream buffers can merge the pieces of a split stream before the gateway reads them. A test
 * that splits a stream uses this counter to check that the gateway saw the pieces apart.
 *
 * It wraps `createTap` on the shared route objects, so call `restore()` when the test file ends.
 */
export class TapChunkCounter {
  /** Taps whose stream ended, in the order the streams ended. */
  readonly records: TapRecord[] = [];
  private readonly originals = new Map<RouteAdapter, RouteAdapter['createTap']>();

  constructor(routes: RouteAdapter[]) {
    for (const route of routes) {
      const createTap = route.createTap;
      this.originals.set(route, createTap);
      route.createTap = (request) => this.wrap(createTap(request), request.body);
    }
  }

  clear(): void {
    this.records.length = 0;
  }

  restore(): void {
    for (const [route, createTap] of this.originals) route.createTap = createTap;
    this.originals.clear();
  }

  private wrap(tap: ResponseTap, requestBody: Buffer): ResponseTap {
    let chunks = 0;
    const streamChunk = tap.streamChunk.bind(tap);
    const streamEnd = tap.streamEnd.bind(tap);
    tap.streamChunk = (chunk) => {
      chunks++;
      return streamChunk(chunk);
    };
    tap.streamEnd = () => {
      this.records.push({ requestBody, chunks });
      return streamEnd();
    };
    return tap;
  }
}
