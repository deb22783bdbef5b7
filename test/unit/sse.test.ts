import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SseParser, type SseEvent } from '../../src/streaming/sse.ts';

const encoder = new TextEncoder();

/** Feeds each chunk in order, ends the stream, and returns the parser with its events. */
function parse(chunks: Array<string | Uint8Array>, keepRaw = false): { events: SseEvent[]; parser: SseParser } {
  const events: SseEvent[] = [];
  const parser = new SseParser((event) => events.push(event), keepRaw);
  for (const chunk of chunks) parser.push(typeof chunk === 'string' ? encoder.encode(chunk) : chunk);
  parser.end();
  return { events, parser };
}

/** Event names and data only, for comparisons that ignore `raw`. */
function fields(events: SseEvent[]): Array<{ event: string; data: string }> {
  return events.map(({ event, data }) => ({ event, data }));
}

const SAMPLE = [
  ': stream opened\n',
  '\n',
  'event: message_start\n',
  'data: {"type":"message_start","text":"h\u00e9llo \u20ac \ud83d\ude00"}\n',
  '\n',
  'event: content_block_delta\r\n',
  'data: line one\r\n',
  'data: line two\r\n',
  ': keep-alive\r\n',
  '\r\n',
  'data: cr only\r',
  'id: 7\r',
  '\r',
  'data:no space\n',
  'data:  two spaces\n',
  'data\n',
  '\n',
  'event: message_stop\n',
  'data: {"type":"message_stop"}\n',
  '\n',
].join('');

describe('SseParser fields', () => {
  it('reads event name and data', () => {
    const { events } = parse(['event: ping\ndata: {"a":1}\n\n']);
    assert.deepEqual(fields(events), [{ event: 'ping', data: '{"a":1}' }]);
  });

  it('defaults event name to message', () => {
    const { events } = parse(['data: x\n\n']);
    assert.equal(events[0].event, 'message');
  });

  it('joins data lines with LF', () => {
    const { events } = parse(['data: a\ndata: b\ndata: c\n\n']);
    assert.equal(events[0].data, 'a\nb\nc');
  });

  it('strips one leading space only', () => {
    const { events } = parse(['data:x\ndata:  y\ndata\n\n']);
    assert.equal(events[0].data, 'x\n y\n');
  });

  it('ignores comment lines', () => {
    const { events } = parse([': hello\ndata: a\n: between\ndata: b\n\n']);
    assert.deepEqual(fields(events), [{ event: 'message', data: 'a\nb' }]);
  });

  it('gives comment-only block empty data', () => {
    // The parser dispatches the block so that keepRaw callers can pass the comment on. Readers skip empty data.
    const { events } = parse([': keep-alive\n\n']);
    assert.deepEqual(fields(events), [{ event: 'message', data: '' }]);
  });

  it('ignores unknown fields', () => {
    const { events } = parse(['id: 3\nretry: 1000\nfoo: bar\ndata: a\n\n']);
    assert.deepEqual(fields(events), [{ event: 'message', data: 'a' }]);
  });

  it('resets event name between events', () => {
    const { events } = parse(['event: one\ndata: 1\n\ndata: 2\n\n']);
    assert.deepEqual(fields(events), [{ event: 'one', data: '1' }, { event: 'message', data: '2' }]);
  });

  it('skips extra blank lines', () => {
    const { events } = parse(['\n\n\ndata: a\n\n\n\n']);
    assert.deepEqual(fields(events), [{ event: 'message', data: 'a' }]);
  });
});

describe('SseParser line endings', () => {
  const expected = [{ event: 'e', data: 'a\nb' }, { event: 'message', data: 'c' }];

  it('accepts LF', () => {
    assert.deepEqual(fields(parse(['event: e\ndata: a\ndata: b\n\ndata: c\n\n']).events), expected);
  });

  it('accepts CRLF', () => {
    assert.deepEqual(fields(parse(['event: e\r\ndata: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n']).events), expected);
  });

  it('accepts CR only', () => {
    assert.deepEqual(fields(parse(['event: e\rdata: a\rdata: b\r\rdata: c\r\r']).events), expected);
  });

  it('joins CRLF split across pushes', () => {
    const { events } = parse(['data: a\r', '\ndata: b\r\n\r\n']);
    assert.deepEqual(fields(events), [{ event: 'message', data: 'a\nb' }]);
  });

  it('joins CRLF split by empty push', () => {
    const { events } = parse(['data: a\r', '', '\ndata: b\r\n\r\n']);
    assert.deepEqual(fields(events), [{ event: 'message', data: 'a\nb' }]);
  });

  it('treats CR then CR as blank line', () => {
    const { events } = parse(['data: a\r', '\rdata: b\r\r']);
    assert.deepEqual(fields(events), [{ event: 'message', data: 'a' }, { event: 'message', data: 'b' }]);
  });
});

describe('SseParser chunk boundaries', () => {
  const bytes = encoder.encode(SAMPLE);
  const whole = parse([bytes]).events;
  const wholeRaw = parse([bytes], true).events;

  it('parses sample stream', () => {
    assert.deepEqual(fields(whole), [
      { event: 'message', data: '' },
      { event: 'message_start', data: '{"type":"message_start","text":"h\u00e9llo \u20ac \ud83d\ude00"}' },
      { event: 'content_block_delta', data: 'line one\nline two' },
      { event: 'message', data: 'cr only' },
      { event: 'message', data: 'no space\n two spaces\n' },
      { event: 'message_stop', data: '{"type":"message_stop"}' },
    ]);
  });

  it('gives same events at every split', () => {
    for (let offset = 0; offset <= bytes.length; offset++) {
      const { events } = parse([bytes.subarray(0, offset), bytes.subarray(offset)]);
      assert.deepEqual(events, whole, `split at byte ${offset}`);
    }
  });

  it('gives same raw events at every split', () => {
    for (let offset = 0; offset <= bytes.length; offset++) {
      const { events } = parse([bytes.subarray(0, offset), bytes.subarray(offset)], true);
      assert.deepEqual(events, wholeRaw, `split at byte ${offset}`);
    }
  });

  it('gives same events byte by byte', () => {
    const chunks = Array.from(bytes, (byte) => Uint8Array.of(byte));
    assert.deepEqual(parse(chunks).events, whole);
  });
});

describe('SseParser UTF-8', () => {
  const cases: Array<[string, string]> = [
    ['3-byte character', '\u20ac'],
    ['4-byte character', '\ud83d\ude00'],
  ];
  for (const [name, character] of cases) {
    it(`joins ${name} split across pushes`, () => {
      const bytes = encoder.encode(`data: a${character}b\n\n`);
      const start = bytes.indexOf(encoder.encode(character)[0]);
      const length = encoder.encode(character).length;
      for (let cut = start + 1; cut < start + length; cut++) {
        const { events } = parse([bytes.subarray(0, cut), bytes.subarray(cut)]);
        assert.equal(events[0].data, `a${character}b`, `split at byte ${cut}`);
        assert.ok(!events[0].data.includes('\ufffd'), `split at byte ${cut}`);
      }
    });
  }
});

describe('SseParser keepRaw', () => {
  it('reproduces input when raws are joined', () => {
    const { events } = parse([SAMPLE], true);
    assert.equal(events.map((event) => event.raw).join(''), SAMPLE);
  });

  it('reproduces input byte by byte', () => {
    const chunks = Array.from(encoder.encode(SAMPLE), (byte) => Uint8Array.of(byte));
    const { events } = parse(chunks, true);
    assert.equal(events.map((event) => event.raw).join(''), SAMPLE);
  });

  it('keeps comments and line endings in raw', () => {
    const input = ': note\r\nevent: e\r\ndata: x\r\n\r\n';
    const { events } = parse([input], true);
    assert.equal(events.length, 1);
    assert.equal(events[0].raw, input);
  });

  it('leaves raw empty by default', () => {
    const { events } = parse(['data: x\n\n']);
    assert.equal(events[0].raw, '');
  });
});

describe('SseParser end', () => {
  it('drops unterminated final event', () => {
    const { events } = parse(['data: a\n\ndata: b']);
    assert.deepEqual(fields(events), [{ event: 'message', data: 'a' }]);
  });

  it('drops final event without blank line', () => {
    const { events } = parse(['data: a\n\ndata: b\n']);
    assert.deepEqual(fields(events), [{ event: 'message', data: 'a' }]);
  });

  it('returns pending text in keepRaw mode', () => {
    const { parser } = parse(['data: a\n\nevent: e\ndata: b'], true);
    assert.equal(parser.pendingRaw(), 'event: e\ndata: b');
  });

  it('has no pending text after event', () => {
    const { parser } = parse(['data: a\n\n'], true);
    assert.equal(parser.pendingRaw(), '');
  });

  it('returns partial line without keepRaw', () => {
    const { parser } = parse(['data: a\n\ndata: b\ndata: c']);
    assert.equal(parser.pendingRaw(), 'data: c');
  });
});
