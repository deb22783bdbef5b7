import { FEATURES, isFeature, type FeatureLimits } from '../actors/types.ts';
import { ConfigError, parseFeatureLimits } from '../config/config.ts';
import { parseDuration } from '../config/duration.ts';
import { validateActorName } from '../storage/sqlite.ts';
import {
  CommandError,
  expectPositionals,
  flagOption,
  formatOptionsHelp,
  openStore,
  stringListOption,
  stringOption,
  UsageError,
  type CliCommand,
} from './args.ts';
import { actorToJson } from '../actors/json.ts';
import { formatJson, renderActor, renderTable, summarizeLimits } from './format.ts';

const LIMIT_SYNTAX = /^([^=]*)=([^/]*)\/([^:]*)(?::(.*))?$/;
const LIMIT_EXAMPLE = 'FEATURE=LIMIT/INTERVAL[:MODEL,...], for example chat_completions=100/1h';

/**
 * Parses `--limit` values of the form `feature=LIMIT/INTERVAL[:model1,model2]` into feature
 * limits. Models default to `*`. Throws UsageError naming the invalid value.
 */
export function parseLimitOptions(values: string[], command: string): FeatureLimits {
  const raw: Record<string, { limit: number; interval: string; allowedModels?: string[] }> = {};
  for (const value of values) {
    const invalid = (problem: string) => new UsageError(`invalid --limit ${JSON.stringify(value)}: ${problem}`, command);
    const match = LIMIT_SYNTAX.exec(value.trim());
    if (match === null) throw invalid(`expected ${LIMIT_EXAMPLE}`);

    const [, feature, limit, interval, models] = match;
    if (!isFeature(feature)) {
      throw invalid(`unknown feature ${JSON.stringify(feature)}; expected one of ${FEATURES.join(', ')}`);
    }
    if (feature in raw) throw invalid(`${feature} is already limited by an earlier --limit; give each feature once`);
    if (!/^\d+$/.test(limit) || !Number.isSafeInteger(Number(limit))) {
      throw invalid(`limit ${JSON.stringify(limit)} is not a whole number`);
    }
    const intervalMs = parseDuration(interval);
    if (intervalMs === undefined || intervalMs < 1000) {
      throw invalid(`interval ${JSON.stringify(interval)} is not a duration of at least 1s, such as 30s, 10m, 1h or 24h`);
    }
    const modelList = models?.split(',').map((model) => model.trim()).filter((model) => model !== '');
    if (modelList !== undefined && modelList.length === 0) {
      throw invalid('the model list after ":" is empty; list models, or leave out ":" to allow every model');
    }
    raw[feature] = { limit: Number(limit), interval, allowedModels: modelList };
  }

  // The checks above give precise messages, and parseFeatureLimits applies the same rules as the
  // config file and admin API (such as lower-casing model names).
  try {
    return parseFeatureLimits(raw, '--limit');
  } catch (error) {
    if (error instanceof ConfigError) throw new UsageError(error.message, command);
    throw error;
  }
}

const createCommand: CliCommand = {
  name: 'actors create',
  summary: 'Create an actor with per-feature limits',
  help: `Usage: llm-proxy actors create --name NAME [--limit FEATURE=LIMIT/INTERVAL[:MODEL,...]]... [--disabled] [--json]

Creates an actor: a caller that tokens are issued to. An actor may use only the features
that a --limit grants, at most LIMIT units per INTERVAL.

Options:
${formatOptionsHelp([
  ['--name NAME', 'Display name, 1 to 200 characters (required)'],
  [
    '--limit SPEC',
    'Grants a feature, for example chat_completions=100/1h or\n' +
      'embeddings=100000/24h:text-embedding-3-small. FEATURE is one of\n' +
      `${FEATURES.join(', ')}. INTERVAL is a duration\n` +
      'such as 30s, 10m, 1h or 24h. MODEL names may carry a provider/ prefix,\n' +
      'and the default * allows every model that the provider allows.\n' +
      'Repeat --limit for each feature.',
  ],
  ['--disabled', 'Create the actor disabled, so that its tokens are rejected until\n"llm-proxy actors enable ACTOR_ID"'],
  ['--json', 'Print the actor as JSON'],
])}
`,
  options: {
    name: { type: 'string' },
    limit: { type: 'string', multiple: true },
    disabled: { type: 'boolean' },
    json: { type: 'boolean' },
  },
  async run({ values, positionals }, io) {
    expectPositionals(this.name, positionals, []);
    const rawName = stringOption(values, 'name');
    if (rawName === undefined) throw new UsageError('missing --name', this.name);
    let name: string;
    try {
      name = validateActorName(rawName);
    } catch (error) {
      if (error instanceof RangeError) throw new UsageError(error.message, this.name);
      throw error;
    }
    const limits = parseLimitOptions(stringListOption(values, 'limit'), this.name);

    const store = await openStore(values, io, { create: true });
    try {
      const actor = await store.createActor({ name, enabled: !flagOption(values, 'disabled'), limits });
      if (flagOption(values, 'json')) {
        io.stdout.write(formatJson(actorToJson(actor)));
        return 0;
      }
      io.stdout.write(`Created actor ${actor.id}\n\n${renderActor(actor)}\n`);
      if (Object.keys(actor.limits).length === 0) {
        io.stdout.write('This actor has no --limit, so it cannot use any feature.\n');
      }
      io.stdout.write(`Create a token for it with: llm-proxy tokens create ${actor.id}\n`);
      return 0;
    } finally {
      await store.close();
    }
  },
};

const listCommand: CliCommand = {
  name: 'actors list',
  summary: 'List actors with their limits',
  help: `Usage: llm-proxy actors list [--json]

Lists every actor, oldest first. Limits are shown in the syntax of --limit.

Options:
${formatOptionsHelp([['--json', 'Print the actors as a JSON array']])}
`,
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }, io) {
    expectPositionals(this.name, positionals, []);
    const store = await openStore(values, io, { create: false });
    try {
      const actors = await store.listActors();
      if (flagOption(values, 'json')) {
        io.stdout.write(formatJson(actors.map(actorToJson)));
        return 0;
      }
      if (actors.length === 0) {
        io.stdout.write('No actors. Create one with: llm-proxy actors create --name NAME --limit FEATURE=LIMIT/INTERVAL\n');
        return 0;
      }
      const rows = actors.map((actor) => [actor.id, actor.name, actor.enabled ? 'yes' : 'no', summarizeLimits(actor.limits)]);
      io.stdout.write(renderTable(['ID', 'NAME', 'ENABLED', 'LIMITS'], rows));
      return 0;
    } finally {
      await store.close();
    }
  },
};

function setEnabledCommand(enabled: boolean): CliCommand {
  const verb = enabled ? 'enable' : 'disable';
  return {
    name: `actors ${verb}`,
    summary: enabled ? 'Enable an actor so that its tokens are accepted again' : 'Disable an actor so that its tokens are rejected',
    help: `Usage: llm-proxy actors ${verb} ACTOR_ID [--json]

${
  enabled
    ? 'Enables the actor, so that its valid tokens are accepted again.'
    : 'Disables the actor, so that the gateway rejects its tokens with 403 actor_disabled.\nIts tokens and usage history are kept.'
}

Options:
${formatOptionsHelp([['--json', 'Print the updated actor as JSON']])}
`,
    options: { json: { type: 'boolean' } },
    async run({ values, positionals }, io) {
      const [actorId] = expectPositionals(this.name, positionals, ['ACTOR_ID']);
      const store = await openStore(values, io, { create: false });
      try {
        const actor = await store.updateActor(actorId, { enabled });
        if (actor === undefined) {
          throw new CommandError(`actor ${actorId} not found; run "llm-proxy actors list" to see actor ids`);
        }
        if (flagOption(values, 'json')) io.stdout.write(formatJson(actorToJson(actor)));
        else io.stdout.write(`${enabled ? 'Enabled' : 'Disabled'} actor ${actor.id} (${actor.name})\n`);
        return 0;
      } finally {
        await store.close();
      }
    },
  };
}

export const ACTOR_COMMANDS: CliCommand[] = [createCommand, listCommand, setEnabledCommand(false), setEnabledCommand(true)];
