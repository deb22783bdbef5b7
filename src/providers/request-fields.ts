import { GatewayError } from '../errors/errors.ts';

/** Model names end up in logs, usage tables and terminals, so they are kept short and printable. */
const MAX_MODEL_LENGTH = 256;
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f]/;

/** Reads the required `model` field; every route needs it for access checks and metering. */
export function requireModel(json: Record<string, unknown>): string {
  const model = json.model;
  if (typeof model !== 'string' || model.trim() === '') {
    throw new GatewayError('invalid_request', 'model: a non-empty string is required', { param: 'model' });
  }
  if (model.length > MAX_MODEL_LENGTH || CONTROL_CHARACTERS.test(model)) {
    throw new GatewayError('invalid_request', `model: expected a model name of at most ${MAX_MODEL_LENGTH} printable characters`, { param: 'model' });
  }
  return model;
}

export function readStreamFlag(json: Record<string, unknown>): boolean {
  const stream = json.stream;
  if (stream !== undefined && stream !== null && typeof stream !== 'boolean') {
    throw new GatewayError('invalid_request', 'stream: expected true or false', { param: 'stream' });
  }
  return stream === true;
}

/** Collects the text of a string, an array of content blocks, or a list of messages. */
export function collectText(value: unknown, out: string[]): void {
  if (typeof value === 'string') {
    out.push(value);
  } else if (Array.isArray(value)) {
    for (const item of value) collectText(item, out);
  } else if (value !== null && typeof value === 'object') {
    const record = value as Record<string, unknown>;
    if (typeof record.text === 'string') out.push(record.text);
    if (record.content !== undefined) collectText(record.content, out);
  }
}

export function textLength(parts: string[]): number {
  let total = 0;
  for (const part of parts) total += part.length;
  return total;
}

/** Parses JSON that may be malformed without throwing; returns undefined instead. */
export function tryParseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Reads the first of the given fields that contains a positive whole number. */
export function readMaxTokens(json: Record<string, unknown>, ...fields: string[]): number | null {
  for (const field of fields) {
    const value = json[field];
    if (typeof value === 'number' && Number.isInteger(value) && value > 0) return value;
  }
  return null;
}
