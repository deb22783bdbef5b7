import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { bareModel, isModelAllowed } from '../../src/limits/models.ts';

interface Case {
  name: string;
  model: string;
  provider: string;
  providerAllowed: string[];
  actorAllowed: string[];
  expected: boolean;
}

const cases: Case[] = [
  { name: 'star on both lists', model: 'claude-sonnet-4-5', provider: 'anthropic', providerAllowed: ['*'], actorAllowed: ['*'], expected: true },
  { name: 'exact name on both lists', model: 'gpt-4o', provider: 'openai', providerAllowed: ['gpt-4o'], actorAllowed: ['gpt-4o'], expected: true },
  { name: 'upper-case model', model: 'Claude-Sonnet-4-5', provider: 'anthropic', providerAllowed: ['claude-sonnet-4-5'], actorAllowed: ['*'], expected: true },
  { name: 'upper-case entry', model: 'claude-sonnet-4-5', provider: 'anthropic', providerAllowed: ['*'], actorAllowed: ['CLAUDE-SONNET-4-5'], expected: true },
  { name: 'prefixed model', model: 'anthropic/claude-sonnet-4-5', provider: 'anthropic', providerAllowed: ['claude-sonnet-4-5'], actorAllowed: ['claude-sonnet-4-5'], expected: true },
  { name: 'upper-case prefixed model', model: 'Anthropic/Claude-Sonnet-4-5', provider: 'anthropic', providerAllowed: ['claude-sonnet-4-5'], actorAllowed: ['*'], expected: true },
  { name: 'prefixed provider entry', model: 'claude-sonnet-4-5', provider: 'anthropic', providerAllowed: ['anthropic/claude-sonnet-4-5'], actorAllowed: ['*'], expected: true },
  { name: 'prefixed actor entry', model: 'claude-sonnet-4-5', provider: 'anthropic', providerAllowed: ['*'], actorAllowed: ['Anthropic/claude-sonnet-4-5'], expected: true },
  { name: 'prefix on both sides', model: 'anthropic/claude-sonnet-4-5', provider: 'anthropic', providerAllowed: ['anthropic/claude-sonnet-4-5'], actorAllowed: ['anthropic/claude-sonnet-4-5'], expected: true },
  { name: 'other provider prefix in actor list', model: 'claude-sonnet-4-5', provider: 'anthropic', providerAllowed: ['*'], actorAllowed: ['openai/claude-sonnet-4-5'], expected: false },
  { name: 'other provider prefix in provider list', model: 'gpt-4o', provider: 'openai', providerAllowed: ['anthropic/gpt-4o'], actorAllowed: ['*'], expected: false },
  { name: 'other provider prefix on model', model: 'openai/gpt-4o', provider: 'anthropic', providerAllowed: ['gpt-4o'], actorAllowed: ['*'], expected: false },
  { name: 'provider star prefix', model: 'claude-haiku-4-5', provider: 'anthropic', providerAllowed: ['*'], actorAllowed: ['anthropic/*'], expected: true },
  { name: 'upper-case provider star prefix', model: 'claude-haiku-4-5', provider: 'anthropic', providerAllowed: ['ANTHROPIC/*'], actorAllowed: ['*'], expected: true },
  { name: 'other provider star prefix', model: 'claude-haiku-4-5', provider: 'anthropic', providerAllowed: ['*'], actorAllowed: ['openai/*'], expected: false },
  { name: 'empty actor list', model: 'gpt-4o', provider: 'openai', providerAllowed: ['*'], actorAllowed: [], expected: false },
  { name: 'empty provider list', model: 'gpt-4o', provider: 'openai', providerAllowed: [], actorAllowed: ['*'], expected: false },
  { name: 'provider list allows model', model: 'gpt-4o-mini', provider: 'openai', providerAllowed: ['gpt-4o-mini', 'gpt-4o'], actorAllowed: ['*'], expected: true },
  { name: 'provider list excludes model', model: 'o3', provider: 'openai', providerAllowed: ['gpt-4o-mini', 'gpt-4o'], actorAllowed: ['*'], expected: false },
  { name: 'actor list excludes model', model: 'gpt-4o', provider: 'openai', providerAllowed: ['*'], actorAllowed: ['gpt-4o-mini'], expected: false },
  { name: 'lists without common model', model: 'gpt-4o', provider: 'openai', providerAllowed: ['gpt-4o'], actorAllowed: ['gpt-4o-mini'], expected: false },
  { name: 'name prefix only', model: 'gpt-4o-mini', provider: 'openai', providerAllowed: ['*'], actorAllowed: ['gpt-4o'], expected: false },
];

describe('isModelAllowed', () => {
  for (const testCase of cases) {
    it(testCase.name, () => {
      const allowed = isModelAllowed(testCase.model, testCase.provider, testCase.providerAllowed, testCase.actorAllowed);
      assert.equal(allowed, testCase.expected);
    });
  }
});

describe('bareModel', () => {
  it('strips own prefix and lower-cases', () => {
    assert.equal(bareModel('Anthropic/Claude-X', 'anthropic'), 'claude-x');
  });

  it('keeps other provider prefix', () => {
    assert.equal(bareModel('openai/gpt-4o', 'anthropic'), 'openai/gpt-4o');
  });
});
