import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { GatewayError } from '../../src/errors/errors.ts';
import { parseJsonObject } from '../../src/server/body.ts';

function catchError(run: () => unknown): unknown {
  try {
    run();
  } catch (error) {
    return error;
  }
  return undefined;
}

describe('parseJsonObject', () => {
  it('returns valid object', () => {
    assert.deepEqual(parseJsonObject(Buffer.from('{"model":"gpt-4o","n":1}')), { model: 'gpt-4o', n: 1 });
  });

  it('accepts surrounding white space', () => {
    assert.deepEqual(parseJsonObject(Buffer.from(' \n{}\n')), {});
  });

  const invalid: Array<[string, string, RegExp]> = [
    ['empty body', '', /empty/],
    ['truncated object', '{"model":', /not valid JSON/],
    ['array', '[]', /an array/],
    ['null', 'null', /null/],
    ['string', '"x"', /string/],
    ['number', '42', /number/],
    ['trailing text', '{"a":1} x', /not valid JSON/],
  ];
  for (const [name, body, pattern] of invalid) {
    it(`rejects ${name}`, () => {
      const error = catchError(() => parseJsonObject(Buffer.from(body)));
      assert.ok(error instanceof GatewayError, `expected GatewayError, got ${String(error)}`);
      assert.equal(error.code, 'invalid_json');
      assert.equal(error.status, 400);
      assert.match(error.message, pattern);
    });
  }

  const secretBodies: Array<[string, string]> = [
    ['short body', 'llmp_abc x'],
    ['token body', 'llmp_secret123 not json'],
    ['token in object', '{"model":"gpt-4o","messages": llmp_secret123_rest_of_the_value}'],
    ['token in bad string', '{"key":"llmp_secret123\u0001"}'],
  ];
  for (const [name, body] of secretBodies) {
    it(`does not quote ${name}`, () => {
      const error = catchError(() => parseJsonObject(Buffer.from(body)));
      assert.ok(error instanceof GatewayError, `expected GatewayError, got ${String(error)}`);
      assert.ok(!error.message.includes('llmp_'), error.message);
    });
  }
});
