/** One server-sent event, as delimited by a blank line. */
export interface SseEvent {
  /** The `event:` field, or `message` when absent. */
  event: string;
  /** The `data:` lines joined with `\n`. */
  data: string;
  /** The event's text exactly as received, line endings and comments included. */
  raw: string;
}

/**
 * Incremental SSE parser. Input arrives in arbitrary byte chunks: an event, a line, a CR/LF
 * pair or a UTF-8 character may be split between two chunks, and the parser gives the same
 * events as for the whole stream at once. Only the current, unfinished event is kept.
 */
export class SseParser {
  /** Made on the first chunk: a tap is built for every response, but most are not streams. */
  private decoder: InstanceType<typeof TextDecoder> | undefined;
  private partialLine = '';
  /** The previous chunk ended in CR, so a leading LF in the next chunk belongs to it. */
  private pendingCr = false;
  private eventName = '';
  private dataLines: string[] = [];
  private rawEvent = '';
  private hasFields = false;

  constructor(private readonly onEvent: (event: SseEvent) => void, private readonly keepRaw = false) {}

  push(chunk: Uint8Array): void {
    this.decoder ??= new TextDecoder('utf-8');
    this.feedText(this.decoder.decode(chunk, { stream: true }));
  }

  /** Flushes the decoder. An unterminated last event is dropped, as the SSE standard requires. */
  end(): void {
    const rest = this.decoder?.decode() ?? '';
    if (rest !== '') this.feedText(rest);
    if (this.pendingCr) this.completeCrLine('');
  }

  /** The unfinished event's text, for callers that must pass it on when the stream ends. */
  pendingRaw(): string {
    return this.rawEvent + this.partialLine + (this.pendingCr ? '\r' : '');
  }

  /**
   * Finishes a line whose CR ended the previous chunk. Only the next chunk tells whether the CR
   * ends the line alone or starts a CRLF, and the raw text must keep both bytes in the same event.
   * Returns how many characters of `text` belong to the line ending.
   */
  private completeCrLine(text: string): number {
    this.pendingCr = false;
    const line = this.partialLine;
    this.partialLine = '';
    const crlf = text.charCodeAt(0) === 10;
    if (this.keepRaw) this.rawEvent += line + (crlf ? '\r\n' : '\r');
    this.handleLine(line);
    return crlf ? 1 : 0;
  }

  private feedText(text: string): void {
    if (text === '') return;
    let start = this.pendingCr ? this.completeCrLine(text) : 0;
    const length = text.length;
    let index = start;
    while (index < length) {
      const code = text.charCodeAt(index);
      if (code !== 10 && code !== 13) {
        index++;
        continue;
      }
      let line = text.slice(start, index);
      if (this.partialLine !== '') {
        line = this.partialLine + line;
        this.partialLine = '';
      }
      let end = index + 1;
      if (code === 13) {
        if (end === length) {
          this.partialLine = line;
          this.pendingCr = true;
          return;
        }
        if (text.charCodeAt(end) === 10) end++;
      }
      if (this.keepRaw) this.rawEvent += line + text.slice(index, end);
      this.handleLine(line);
      start = end;
      index = end;
    }
    if (start < length) this.partialLine += text.slice(start);
  }

  private handleLine(line: string): void {
    if (line === '') {
      if (this.hasFields || this.rawEvent !== '') this.dispatch();
      return;
    }
    this.hasFields = true;
    if (line.charCodeAt(0) === 58) return; // ":" starts a comment
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === 'data') this.dataLines.push(value);
    else if (field === 'event') this.eventName = value;
  }

  private dispatch(): void {
    const event: SseEvent = {
      event: this.eventName === '' ? 'message' : this.eventName,
      data: this.dataLines.join('\n'),
      raw: this.rawEvent,
    };
    this.eventName = '';
    this.dataLines = [];
    this.rawEvent = '';
    this.hasFields = false;
    this.onEvent(event);
  }
}
