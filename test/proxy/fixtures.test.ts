/**
 * Replays every recorded provider exchange that the gateway serves. The upstream test server
 * sends the recorded response to the recorded request. The client must get the recorded body
 * unchanged, and the usage event must carry the recorded token counts.
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';
import { decodedBody, fixtureUsage, loadFixtures, type FixtureExchange } from '../helpers/fixtures.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { UpstreamServer } from '../helpers/upstream-server.ts';
import { bearer, createAgent, eventFor, post, settle } from './client.ts';

/** Gateway paths that match a provider path one to one. */
const SERVED_PATHS = new Set(['/v1/messages', '/v1/complete', '/v1/chat/completions', '/v1/completions', '/v1/embeddings']);

/**
 * Exchanges whose request the gateway rejects itself, with the `param` it names. The provider
 * would reject them too, so the status matches the recording, but the body is the gateway's own.
 */
const REJECTED_BY_GATEWAY = new Map([['chat-no-messages.yaml#0', 'messages']]);

const exchanges = loadFixtures().filter((ex) => ex.method === 'POST' && SERVED_PATHS.has(ex.path));

const agent = createAgent();
let upstream: UpstreamServer;
let gateway: TestGateway;

before(async () => {
  upstream = await UpstreamServer.start();
  gateway = await startTestGateway(upstream);
});

after(async () => {
  await agent.close();
  await gateway?.close();
  await upstream?.close();
});

beforeEach(() => {
  upstream.reset();
});

/** Returns true when the gateway adds `stream_options.include_usage` upstream, as it does for OpenAI streams without it. */
function addsIncludeUsage(ex: FixtureExchange): boolean {
  return ex.provider === 'openai' && ex.stream && ex.requestJson?.stream_options?.include_usage !== true;
}

function expectedStatus(ex: FixtureExchange): number {
  return ex.status === 429 ? 503 : ex.status;
}

test('fixtures cover both providers', () => {
  assert.ok(exchanges.some((ex) => ex.provider === 'anthropic'), 'no Anthropic exchange is served');
  assert.ok(exchanges.some((ex) => ex.provider === 'openai'), 'no OpenAI exchange is served');
  assert.ok(exchanges.some((ex) => ex.contentEncoding === 'gzip'), 'no gzip exchange is served');
});

for (const ex of exchanges) {
  test(ex.name, async () => {
    const actor = await gateway.createActor();
    const rejectedParam = REJECTED_BY_GATEWAY.get(ex.name);
    if (rejectedParam === undefined) upstream.replay(ex);

    const response = await post(agent, gateway.url + ex.path, ex.requestBody, { headers: bearer(actor.token) });
    const event = await eventFor(gateway, actor.id, 1, response);

    assert.equal(response.status, expectedStatus(ex), `status, body: ${response.body.toString('utf8').slice(0, 300)}`);
    assert.equal(response.headers['content-encoding'], undefined, 'content-encoding reached the client');
    if (response.headers['content-length'] !== undefined) {
      assert.equal(Number(response.headers['content-length']), response.body.length, 'content-length');
    }

    if (rejectedParam !== undefined) {
      const json = JSON.parse(response.body.toString('utf8'));
      assert.equal(json.error?.param, rejectedParam);
      assert.equal(json.error?.type, 'invalid_request_error');
      assert.equal(upstream.requests.length, 0, 'the rejected request reached the upstream');
      assert.equal(event.outcome, 'rejected');
    } else if (ex.status === 429) {
      // A provider 429 limits the gateway's shared account, so the client gets the gateway's 503.
      assert.match(String(response.headers['retry-after']), /^\d+$/, 'retry-after');
      assert.equal(upstream.requests.length, 1, 'upstream requests');
    } else {
      assert.ok(response.body.equals(decodedBody(ex)), 'client body differs from the recorded body');
      assert.equal(upstream.requests.length, 1, 'upstream requests');
      assert.equal(upstream.requests[0].url, ex.path);
      if (addsIncludeUsage(ex)) {
        const expectedJson = { ...ex.requestJson, stream_options: { ...ex.requestJson.stream_options, include_usage: true } };
        assert.deepEqual(upstream.requests[0].json, expectedJson);
      } else {
        assert.equal(upstream.requests[0].body.toString('utf8'), ex.requestBody, 'the request body changed on its way upstream');
      }
    }

    assert.equal(event.status, response.status);
    const usage = fixtureUsage(ex);
    if (usage !== undefined && ex.status < 300) {
      assert.equal(event.inputTokens, usage.inputTokens, 'inputTokens');
      assert.equal(event.outputTokens, usage.outputTokens, 'outputTokens');
      assert.equal(event.cacheCreationInputTokens ?? 0, usage.cacheCreationInputTokens, 'cacheCreationInputTokens');
      assert.equal(event.cacheReadInputTokens ?? 0, usage.cacheReadInputTokens, 'cacheReadInputTokens');
      assert.equal(event.reasoningTokens ?? 0, usage.reasoningTokens, 'reasoningTokens');
      assert.equal(event.tokensEstimated, false, 'tokensEstimated');
      assert.equal(event.outcome, 'completed');
    } else if (ex.status < 300 && addsIncludeUsage(ex)) {
      // Recorded without include_usage, so the replay carries no usage for the gateway to read.
      assert.equal(event.tokensEstimated, true, 'tokensEstimated');
      assert.equal(event.outcome, 'completed');
    } else if (ex.status >= 300 && rejectedParam === undefined) {
      assert.equal(event.outcome, 'upstream_error');
    }

    await settle(20);
    assert.equal((await gateway.usageEvents(actor.id)).length, 1, 'usage events for one request');
  });
}
