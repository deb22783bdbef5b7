import { ConfigError } from '../config/config.ts';
import { ACTOR_COMMANDS } from './actors.ts';
import { formatOptionsHelp, parseCommandArgs, UsageError, type CliCommand, type CliIo } from './args.ts';
import { MIGRATE_COMMANDS } from './migrate.ts';
import { SERVE_COMMANDS } from './serve.ts';
import { TOKEN_COMMANDS } from './tokens.ts';
import { USAGE_COMMANDS } from './usage.ts';

export type { CliIo, Writer } from './args.ts';

const COMMANDS: CliCommand[] = [...SERVE_COMMANDS, ...ACTOR_COMMANDS, ...TOKEN_COMMANDS, ...USAGE_COMMANDS, ...MIGRATE_COMMANDS];

/** Command words that only select a group of subcommands, with the group's description. */
const GROUPS: Record<string, string> = {
  actors: 'Manage actors: the callers that tokens are issued to, each with per-feature limits.',
  tokens: "Issue, list and revoke actors' API tokens.",
};

/** Global options that take a value and may come before the command words. */
const LEADING_VALUE_OPTIONS = ['--data-dir', '--config'];

function listCommands(commands: CliCommand[]): string {
  const width = Math.max(...commands.map((command) => command.name.length));
  return commands.map((command) => `  ${command.name.padEnd(width)}  ${command.summary}`).join('\n');
}

function topLevelHelp(): string {
  return `Usage: llm-proxy [--data-dir DIR] [--config FILE] COMMAND [options]

Metered, rate-limited gateway for the Anthropic and OpenAI APIs.

Commands:
${listCommands(COMMANDS)}

Global options:
${formatOptionsHelp([])}

Run "llm-proxy COMMAND --help" for the options of a command.
`;
}

function groupHelp(group: string): string {
  const commands = COMMANDS.filter((command) => command.name.startsWith(`${group} `));
  return `Usage: llm-proxy ${group} SUBCOMMAND [options]

${GROUPS[group]}

Subcommands:
${listCommands(commands)}

Run "llm-proxy ${group} SUBCOMMAND --help" for the options of a subcommand.
`;
}

function findCommand(name: string, helpCommand: string): CliCommand {
  const command = COMMANDS.find((candidate) => candidate.name === name);
  if (command === undefined) throw new UsageError(`unknown command ${JSON.stringify(name)}`, helpCommand);
  return command;
}

/** Returns whether the arguments ask for help. Arguments after `--` are positionals and do not count. */
function asksForHelp(args: string[]): boolean {
  const end = args.indexOf('--');
  const options = end === -1 ? args : args.slice(0, end);
  return options.includes('--help') || options.includes('-h');
}

async function dispatch(argv: string[], io: CliIo): Promise<number> {
  // Global options may come before the command words. They are handed on to the command's
  // own strict parser, which accepts them anywhere.
  const leading: string[] = [];
  let help = false;
  let index = 0;
  while (index < argv.length && argv[index].startsWith('-')) {
    const arg = argv[index];
    if (arg === '--help' || arg === '-h') {
      help = true;
      index += 1;
    } else if (LEADING_VALUE_OPTIONS.includes(arg)) {
      if (index + 1 >= argv.length) throw new UsageError(`option ${arg} requires a value`, '');
      leading.push(arg, argv[index + 1]);
      index += 2;
    } else if (LEADING_VALUE_OPTIONS.some((option) => arg.startsWith(`${option}=`))) {
      leading.push(arg);
      index += 1;
    } else {
      throw new UsageError(`unknown option ${JSON.stringify(arg)} before the command`, '');
    }
  }

  const word = argv[index];
  if (word === undefined) {
    (help ? io.stdout : io.stderr).write(topLevelHelp());
    return help ? 0 : 2;
  }

  let command: CliCommand;
  let rest: string[];
  if (word in GROUPS) {
    const subcommand = argv[index + 1];
    if (subcommand === undefined || subcommand.startsWith('-')) {
      const groupHelpRequested = help || subcommand === '--help' || subcommand === '-h';
      (groupHelpRequested ? io.stdout : io.stderr).write(groupHelp(word));
      return groupHelpRequested ? 0 : 2;
    }
    command = findCommand(`${word} ${subcommand}`, word);
    rest = argv.slice(index + 2);
  } else {
    command = findCommand(word, '');
    rest = argv.slice(index + 1);
  }

  if (help || asksForHelp(rest)) {
    io.stdout.write(command.help);
    return 0;
  }
  return command.run(parseCommandArgs(command.name, [...leading, ...rest], command.options), io);
}

/**
 * Prints the error as one line on stderr and returns its exit code: 2 for usage and config
 * errors, 1 for everything else, including CommandError.
 */
function reportError(error: unknown, io: CliIo): number {
  const message = (error instanceof Error ? error.message : String(error)).replace(/\s*\n\s*/g, ' ');
  if (error instanceof UsageError) {
    const helpCommand = error.command === '' ? 'llm-proxy --help' : `llm-proxy ${error.command} --help`;
    io.stderr.write(`llm-proxy: ${message} (see "${helpCommand}")\n`);
    return 2;
  }
  io.stderr.write(`llm-proxy: ${message}\n`);
  return error instanceof ConfigError ? 2 : 1;
}

/**
 * Runs the command line `argv` (without the node and script paths) and returns the exit code:
 * 0 on success, 1 when the command failed, 2 for invalid usage or configuration. Output goes
 * to the injected writers, which default to the process streams.
 */
export async function runCli(argv: string[], io: Partial<CliIo> = {}): Promise<number> {
  const resolvedIo: CliIo = {
    stdout: io.stdout ?? process.stdout,
    stderr: io.stderr ?? process.stderr,
    env: io.env ?? process.env,
  };
  try {
    return await dispatch(argv, resolvedIo);
  } catch (error) {
    return reportError(error, resolvedIo);
  }
}
