import { loadConfig } from '../config/config.ts';
import { expectPositionals, formatOptionsHelp, stringOption, type CliCommand } from './args.ts';

const serveCommand: CliCommand = {
  name: 'serve',
  summary: 'Run the gateway',
  help: `Usage: llm-proxy serve [--config FILE] [--data-dir DIR]

Starts the gateway and runs until it shuts down on SIGTERM or SIGINT. Settings come from
defaults, then the config file, then LLM_PROXY_* environment variables, and --data-dir
overrides dataDir.

Options:
${formatOptionsHelp([])}
`,
  options: {},
  async run({ values, positionals }, io) {
    expectPositionals(this.name, positionals, []);
    // A ConfigError propagates to runCli, which prints it as one line and exits with 2.
    const config = loadConfig(io.env, stringOption(values, 'config'));
    const dataDir = stringOption(values, 'data-dir');
    if (dataDir !== undefined) config.dataDir = dataDir;

    // Imported here so that the admin commands do not load the server and its dependencies.
    const { startGateway } = await import('../server/start.ts');
    const gateway = await startGateway(config);
    await gateway.closed;
    return 0;
  },
};

export const SERVE_COMMANDS: CliCommand[] = [serveCommand];
