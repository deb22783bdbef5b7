import type { UsageEvent } from '../../src/usage/event.ts';

let eventCounter = 0;

/** Builds a complete usage event with unique ids; `overrides` replaces any field. */
export function makeEvent(overrides: Partial<UsageEvent> = {}): UsageEvent {
  eventCounter += 1;
  return {
    id: `evt_${eventCounter}`,
    timestamp: '2030-01-01T00:00:00.000Z',
    requestId: `req_${eventCounter}`,
    actorId: 'act_0000000000000001',
    actorName: 'first',
    feature: 'chat_completions',
    provider: 'openai',
    route: '/v1/chat/completions',
    requestedModel: 'gpt-4o',
    upstreamModel: 'gpt-4o-2024-08-06',
    stream: true,
    upstreamStatus: 200,
    status: 200,
    outcome: 'completed',
    errorCode: null,
    inputTokens: 12,
    outputTokens: 34,
    cacheCreationInputTokens: null,
    cacheReadInputTokens: 5,
    reasoningTokens: null,
    tokensEstimated: false,
    durationMs: 812.5,
    upstreamTtfbMs: 120,
    upstreamDurationMs: 790,
    overheadMs: 22.5,
    promptChars: 48,
    completionChars: 130,
    clientIp: '127.0.0.1',
    userAgent: 'test-agent/1.0',
    sgActorUid: null,
    sgActorAnonymousUid: 'anon-1',
    ...overrides,
  };
}

/** Fields a bare event of the CLI tests leaves empty. */
export const SPARSE_EVENT: Partial<UsageEvent> = {
  upstreamModel: null,
  stream: false,
  cacheReadInputTokens: null,
  upstreamTtfbMs: null,
  upstreamDurationMs: null,
  overheadMs: null,
  promptChars: null,
  completionChars: null,
  clientIp: null,
  userAgent: null,
  sgActorAnonymousUid: null,
};
