import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { GatewayError, type ErrorCode } from '../../src/errors/errors.ts';
import { anthropicErrorType, errorBody } from '../../src/errors/shapes.ts';

const REQUEST_ID = 'req_0123456789abcdef';

/** Status, a code with that status, and the error type each SDK expects. */
const TABLE: Array<{ status: number; code: ErrorCode; anthropic: string; openai: string }> = [
  { status: 400, code: 'invalid_request', anthropic: 'invalid_request_error', openai: 'invalid_request_error' },
  { status: 401, code: 'invalid_token', anthropic: 'authentication_error', openai: 'authentication_error' },
  { status: 403, code: 'feature_not_allowed', anthropic: 'permission_error', openai: 'permission_error' },
  { status: 404, code: 'not_found', anthropic: 'not_found_error', openai: 'invalid_request_error' },
  { status: 413, code: 'body_too_large', anthropic: 'request_too_large', openai: 'invalid_request_error' },
  { status: 429, code: 'rate_limited', anthropic: 'rate_limit_error', openai: 'rate_limit_error' },
  { status: 500, code: 'internal_error', anthropic: 'api_error', openai: 'server_error' },
  { status: 503, code: 'provider_disabled', anthropic: 'overloaded_error', openai: 'server_error' },
];

describe('errorBody anthropic', () => {
  for (const row of TABLE) {
    it(`maps ${row.status} to ${row.anthropic}`, () => {
      const error = new GatewayError(row.code, 'something failed');
      assert.equal(error.status, row.status);
      const body = JSON.parse(errorBody('anthropic', error, REQUEST_ID));
      assert.equal(body.error.type, row.anthropic);
    });
  }

  it('has Anthropic shape', () => {
    const error = new GatewayError('rate_limited', 'rate limit exceeded; retry after 5 seconds');
    assert.deepEqual(JSON.parse(errorBody('anthropic', error, REQUEST_ID)), {
      type: 'error',
      error: { type: 'rate_limit_error', message: 'rate limit exceeded; retry after 5 seconds', code: 'rate_limited', details: { error_code: 'rate_limited' } },
      request_id: REQUEST_ID,
    });
  });
});

describe('errorBody openai', () => {
  for (const row of TABLE) {
    it(`maps ${row.status} to ${row.openai}`, () => {
      const error = new GatewayError(row.code, 'something failed');
      const body = JSON.parse(errorBody('openai', error, REQUEST_ID));
      assert.equal(body.error.type, row.openai);
    });
  }

  it('has OpenAI shape', () => {
    const error = new GatewayError('model_not_allowed', 'model "o3" is not allowed', { param: 'model' });
    assert.deepEqual(JSON.parse(errorBody('openai', error, REQUEST_ID)), {
      error: { message: 'model "o3" is not allowed', type: 'invalid_request_error', param: 'model', code: 'model_not_allowed' },
      request_id: REQUEST_ID,
    });
  });

  it('sets param null by default', () => {
    const body = JSON.parse(errorBody('openai', new GatewayError('invalid_json', 'bad'), REQUEST_ID));
    assert.equal(body.error.param, null);
  });
});

describe('anthropicErrorType', () => {
  const fallbacks: Array<[number, string]> = [
    [418, 'invalid_request_error'],
    [529, 'overloaded_error'],
    [599, 'api_error'],
  ];
  for (const [status, type] of fallbacks) {
    it(`maps ${status} to ${type}`, () => {
      assert.equal(anthropicErrorType(status), type);
    });
  }
});
