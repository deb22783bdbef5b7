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
  private readonly decoder = new TextDecoder('utf-8');
  private partialLine = '';
  /** The previous chunk ended in CR, so a leading LF in the next chunk belongs to it. */
  private pendingCr = false;
  private eventName = '';
  private dataLines: string[] = [];
  private rawEvent = '';
  private hasFields = false;

  constructor(private readonly onEvent: (event: SseEvent) => void, private readonly keepRaw = false) {}

  push(chunk: Uint8Array): void {
    this.feedText(this.decoder.decode(chunk, { stream: true }));
  }

  /** Flushes the decoder. An unterminated last event is dropped, as the SSE standard says. */
  end(): void {
    const rest = this.decoder.decode();
    if (rest !== '') this.feedText(rest);
  }

  /** The unfinished event's text, for callers that must pass it on when the stream ends. */
  pendingRaw(): string {
    return this.rawEvent + this.partialLine;
  }

  private feedText(text: string): void {
    let start = 0;
    if (this.pendingCr) {
      this.pendingCr = false;
      if (text.charCodeAt(0) === 10) {
        if (this.keepRaw) this.rawEvent += '\n';
        start = 1;
      }
    }
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
        if (end < length) {
          if (text.charCodeAt(end) === 10) end++;
        } else {
          this.pendingCr = true;
        }
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
