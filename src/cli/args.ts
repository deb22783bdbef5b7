import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { loadConfig } from '../config/config.ts';
import { describePostgresUrl, openPostgresStore } from '../storage/postgres.ts';
import { databasePath, openSqliteStore } from '../storage/sqlite.ts';
import type { Store } from '../storage/store.ts';

/** Anything with a `write(text)` method, such as process.stdout or a test buffer. */
export interface Writer {
  write(text: string): unknown;
}

/** The process resources that commands use, injected so that tests can capture output. */
export interface CliIo {
  stdout: Writer;
  stderr: Writer;
  env: NodeJS.ProcessEnv;
}

export type OptionsConfig = NonNullable<ParseArgsConfig['options']>;
export type OptionValues = Record<string, string | boolean | (string | boolean)[] | undefined>;

/** A command line the CLI cannot run as typed. Reported with exit code 2. */
export class UsageError extends Error {
  /** The command whose help explains the correct usage, such as `actors create`, or '' for the top level. */
  readonly command: string;

  constructor(message: string, command: string) {
    super(message);
    this.name = 'UsageError';
    this.command = command;
  }
}

/** A command that was typed correctly but failed, such as an unknown actor id. Reported with exit code 1. */
export class CommandError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CommandError';
  }
}

/** Options that every command accepts. */
export const GLOBAL_OPTIONS: OptionsConfig = {
  'data-dir': { type: 'string' },
  config: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};

/** An option's help entry: the flag with its value name, and a description that may span lines. */
export type OptionHelp = [flag: string, description: string];

const GLOBAL_OPTIONS_HELP: OptionHelp[] = [
  ['--data-dir DIR', 'Directory that contains llm-proxy.db (default: LLM_PROXY_DATA_DIR,\nthen dataDir from the config file, then ./data)'],
  ['--config FILE', 'YAML config file to read settings from (default: LLM_PROXY_CONFIG)'],
  ['-h, --help', 'Show this help'],
];

/** Renders the options and then the global options as two aligned columns. */
export function formatOptionsHelp(options: OptionHelp[]): string {
  const all = [...options, ...GLOBAL_OPTIONS_HELP];
  const width = Math.max(...all.map(([flag]) => flag.length));
  const lines: string[] = [];
  for (const [flag, description] of all) {
    const [first, ...continued] = description.split('\n');
    lines.push(`  ${flag.padEnd(width)}  ${first}`);
    for (const line of continued) lines.push(`${' '.repeat(width + 4)}${line}`);
  }
  return lines.join('\n');
}

export interface ParsedCommand {
  values: OptionValues;
  positionals: string[];
}

/** One runnable command, such as `actors create`. */
export interface CliCommand {
  /** The words that select the command, such as `actors create`. */
  name: string;
  /** One line for the command list in the group and top-level help. */
  summary: string;
  /** The full `--help` text. */
  help: string;
  options: OptionsConfig;
  /** Runs the command and returns the exit code. */
  run(parsed: ParsedCommand, io: CliIo): Promise<number>;
}

function isParseArgsError(error: unknown): error is Error & { code: string } {
  const code = (error as { code?: unknown } | null)?.code;
  return error instanceof TypeError && typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_');
}

/** Parses a command's arguments in strict mode. Throws UsageError for unknown or malformed options. */
export function parseCommandArgs(command: string, args: string[], options: OptionsConfig): ParsedCommand {
  try {
    const { values, positionals } = parseArgs({
      args,
      options: { ...GLOBAL_OPTIONS, ...options },
      allowPositionals: true,
      strict: true,
    });
    return { values: values as OptionValues, positionals };
  } catch (error) {
    if (!isParseArgsError(error)) throw error;
    throw new UsageError(describeParseArgsError(error.message), command);
  }
}

/**
 * Rewrites a node:util parseArgs error as one short clause. Node's messages span several
 * sentences, with advice about `--` that rarely applies here.
 */
function describeParseArgsError(message: string): string {
  const option = /'(-{1,2}[\w-]+)/.exec(message)?.[1];
  if (option !== undefined && /argument missing/.test(message)) {
    return `option ${option} requires a value`;
  }
  if (option !== undefined && /argument is ambiguous/.test(message)) {
    return `option ${option} requires a value; write ${option}=VALUE if the value starts with "-"`;
  }
  const firstSentence = message.split(/\.\s/)[0].replace(/\.$/, '');
  return firstSentence.charAt(0).toLowerCase() + firstSentence.slice(1);
}

export function stringOption(values: OptionValues, name: string): string | undefined {
  const value = values[name];
  return typeof value === 'string' ? value : undefined;
}

export function stringListOption(values: OptionValues, name: string): string[] {
  const value = values[name];
  return Array.isArray(value) ? value.filter((item): item is string => typeof item === 'string') : [];
}

export function flagOption(values: OptionValues, name: string): boolean {
  return values[name] === true;
}

/** Checks the number of positional arguments and returns them. */
export function expectPositionals(command: string, positionals: string[], names: string[]): string[] {
  if (positionals.length < names.length) {
    throw new UsageError(`missing ${names[positionals.length]}`, command);
  }
  if (positionals.length > names.length) {
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[names.length])}`, command);
  }
  return positionals;
}

/**
 * Returns the data directory: `--data-dir` when given, otherwise the dataDir setting that
 * loadConfig builds from the environment and the config file. Throws ConfigError for an
 * invalid config.
 */
export function resolveDataDir(values: OptionValues, env: NodeJS.ProcessEnv): string {
  const fromFlag = stringOption(values, 'data-dir');
  if (fromFlag !== undefined) return fromFlag;
  return loadConfig(env, stringOption(values, 'config')).dataDir;
}

/**
 * Opens the gateway's store: Postgres when LLM_PROXY_DATABASE_URL (or `databaseUrl`) is set,
 * otherwise the SQLite database in the data directory. Unless `create` is set, a missing SQLite
 * database is an error, so that a mistyped directory does not show an empty store.
 */
export async function openStore(values: OptionValues, io: CliIo, options: { create: boolean }): Promise<Store> {
  const config = loadConfig(io.env, stringOption(values, 'config'));
  if (config.databaseUrl !== null && stringOption(values, 'data-dir') === undefined) {
    try {
      return await openPostgresStore(config.databaseUrl, { schema: config.databaseSchema ?? undefined });
    } catch (error) {
      throw new CommandError(`cannot open the Postgres database ${describePostgresUrl(config.databaseUrl)}: ${(error as Error).message}`);
    }
  }
  const dataDir = resolveDataDir(values, io.env);
  const path = databasePath(dataDir);
  if (!options.create && !existsSync(path)) {
    throw new CommandError(
      `no database at ${resolve(path)}. Set --data-dir or LLM_PROXY_DATA_DIR to the gateway's data directory, or create an actor first`,
    );
  }
  try {
    return openSqliteStore(dataDir);
  } catch (error) {
    throw new CommandError(`cannot open database ${resolve(path)}: ${(error as Error).message}`);
  }
}
